"""Processed-layout bookkeeping for MoE expert weights, shared by the layout records.

One idea, several backends: a backend's post-load step (``process_weights_after_loading``) turns
the checkpoint-format expert tensors into a KERNEL layout, in the same Parameters or in new ones:

* vLLM-Ascend: ``w13 [E, 2I, H] -> [E, H, 2I]``, ``w2 [E, H, I] -> [E, I, H]`` (transposed);
* vLLM FlashInfer CUTLASS: ``w13 [w1; w3] -> [w3; w1]`` (halves swapped, same shape);
* vLLM FlashInfer TRTLLM: a block layout the loader cannot address at all.

A later raw ``model.load_weights`` (RL weight sync) hands the loader checkpoint-format shards. The
records that fix this share one protocol, implemented here:

1. after the post-load step, each processed Parameter is MARKED with the layout its data is in
   (:func:`mark`; an attribute on the Parameter, so a Parameter that vLLM replaces later, e.g. the
   fresh ones of a layerwise reload, is unmarked and treated as checkpoint format);
2. the weight loader, seeing a marked Parameter, writes each incoming shard straight INTO that
   layout (backend-specific translation: a transposed view for Ascend, the other ``w13`` half for
   CUTLASS) or raises a clear error where the layout cannot be written shard by shard;
3. the post-load step is NOT re-run on a layer whose Parameters are all marked
   (:func:`layer_state` ``== "processed"``): its weights are already in kernel layout.

Nothing here imports torch or patches anything.
"""

from __future__ import annotations

PROCESSED = "processed"
PREPROCESSED = "preprocessed"
MIXED = "mixed"

__all__ = ["PROCESSED", "PREPROCESSED", "MIXED", "mark", "layout_of", "layer_state",
           "layer_layouts", "original_loader", "bind_loader_call"]


def mark(param, attr, layout):
    """Record on `param` (a Parameter) that its data is in `layout` (``None`` removes the mark)."""
    if layout is None:
        if attr in getattr(param, "__dict__", {}):
            delattr(param, attr)
        return
    setattr(param, attr, layout)


def layout_of(param, attr):
    """The layout `param` was marked with under `attr`, or None."""
    return getattr(param, attr, None)


def layer_layouts(layer, names, attr):
    """``{name: layout}`` for each of `names` that `layer` has (``None`` = unmarked)."""
    result = {}
    for name in names:
        param = getattr(layer, name, None)
        if param is not None:
            result[name] = layout_of(param, attr)
    return result


def layer_state(layer, names, attr, processed=(PROCESSED,)):
    """``"processed"`` if every present Parameter of `names` is marked with a layout in
    `processed`, ``None`` if none is marked, ``"preprocessed"`` if all are marked but none in
    `processed`, else ``"mixed"``."""
    layouts = set(layer_layouts(layer, names, attr).values())
    if not layouts or layouts == {None}:
        return None
    if None in layouts:
        return MIXED
    in_processed = {layout in processed for layout in layouts}
    if in_processed == {True}:
        return PROCESSED
    if in_processed == {False}:
        return PREPROCESSED
    return MIXED


def original_loader(loader, flag):
    """Unwrap the loader wrappers carrying attribute `flag` (``functools.wraps`` ``__wrapped__``)."""
    while getattr(loader, flag, False):
        loader = loader.__wrapped__
    return loader


def bind_loader_call(signature, args, kwargs):
    """``inspect.BoundArguments`` of a weight-loader call, or None if it does not bind."""
    try:
        return signature.bind(*args, **kwargs)
    except TypeError:
        return None
