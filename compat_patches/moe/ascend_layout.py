"""vLLM-Ascend MoE expert layout: pure tensor helpers (CPU or any device, no patching).

vLLM creates the unquantized fused-MoE parameters in the *preprocessed* (checkpoint-like) layout

    w13_weight  [E, 2 * I_tp, H]     gate rows 0:I_tp, up rows I_tp:2*I_tp
    w2_weight   [E, H, I_tp]

and vLLM-Ascend's ``AscendUnquantizedFusedMoEMethod.process_weights_after_loading`` turns them into
the *processed* (kernel) layout with ``.transpose(1, 2).contiguous()``:

    w13_weight  [E, H, 2 * I_tp]
    w2_weight   [E, I_tp, H]

(followed, on an NPU only, by an optional FRACTAL_NZ format cast that these helpers do not model).

``I_tp`` is the intermediate size of one tensor-parallel rank. vLLM's FusedMoE weight loader
(``vllm/model_executor/layers/fused_moe/layer.py`` ``FusedMoE.weight_loader`` / ``_load_w13`` /
``_load_w2``; ``routed_experts.py`` ``RoutedExperts`` from vLLM 0.26) shards one expert's checkpoint
tensors like this:

    gate_proj (w1) [I, H]: rows  [r * I/tp, (r+1) * I/tp)  ->  w13[e, 0:I_tp, :]
    up_proj   (w3) [I, H]: rows  [r * I/tp, (r+1) * I/tp)  ->  w13[e, I_tp:2*I_tp, :]
    down_proj (w2) [H, I]: cols  [r * I/tp, (r+1) * I/tp)  ->  w2[e, :, :]

:func:`write_expert_shard` performs exactly that write into the *processed* layout through strided
views (``narrow`` + ``.t()``): no transposed copy of the whole parameter is made, only the incoming
shard is read once.
"""

from __future__ import annotations

import operator
import sys
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover - typing only, torch is imported lazily
    import torch

__all__ = [
    "SHARD_IDS",
    "normalize_shard_id",
    "w13_to_processed",
    "w13_to_preprocessed",
    "w2_to_processed",
    "w2_to_preprocessed",
    "preprocessed_view",
    "expert_shard_view",
    "write_expert_shard",
]

#: vLLM's shard ids: w1 = gate_proj, w3 = up_proj (both in w13_weight), w2 = down_proj.
SHARD_IDS = ("w1", "w2", "w3")

_ALIASES = {
    "w1": "w1", "gate": "w1", "gate_proj": "w1",
    "w3": "w3", "up": "w3", "up_proj": "w3",
    "w2": "w2", "down": "w2", "down_proj": "w2",
}


def normalize_shard_id(shard_id: str) -> str:
    """``"w1"|"gate"|"gate_proj"`` -> ``"w1"``, ``"w3"|"up"|"up_proj"`` -> ``"w3"``,
    ``"w2"|"down"|"down_proj"`` -> ``"w2"``; anything else raises ``ValueError``."""
    try:
        return _ALIASES[shard_id]
    except (KeyError, TypeError):
        raise ValueError(
            f"shard_id must be one of {sorted(_ALIASES)} (vLLM: w1=gate, w3=up, w2=down), "
            f"got {shard_id!r}"
        ) from None


def _check(arg, tensor, layout, hidden_size=None, intermediate_size=None):
    """The shape of `tensor` (the argument named `arg`) if it is a torch.Tensor in `layout`, such
    as ``"[E, H, 2*I_tp]"``: H = hidden_size and I_tp = intermediate_size where given, 2*I_tp even,
    other dims free. Else a TypeError/ValueError naming `arg` (or the size), what it got and what
    was expected."""
    sizes = {}
    for key, dim, value in (("hidden_size", "H", hidden_size),
                            ("intermediate_size", "I_tp", intermediate_size)):
        if value is None:
            continue
        # ints and NumPy/torch integers; a str or float would multiply or compare wrongly
        # (2 * "4" == "44", 4.0 == 4), a bool would pass as 0 or 1
        try:
            if isinstance(value, bool):
                raise TypeError
            sizes[dim] = operator.index(value)
        except TypeError:
            raise TypeError(f"{key} must be a positive int, got {value!r}") from None
        if sizes[dim] < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    if "I_tp" in sizes:
        sizes["2*I_tp"] = 2 * sizes["I_tp"]
    torch = sys.modules.get("torch")  # not imported: `tensor` cannot be a torch.Tensor
    if torch is None or not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor {layout}, got {type(tensor).__name__}")
    shape, dims = list(tensor.shape), layout.strip("[]").split(", ")
    if len(shape) != len(dims):
        raise ValueError(f"{arg} must be {len(dims)}-D {layout}, got shape {shape}")
    expected = [sizes.get(dim) for dim in dims]
    for axis, (dim, got, want) in enumerate(zip(dims, shape, expected)):
        if want is not None and got != want:
            raise ValueError(f"{arg}: expected {layout} = {expected} (None = any), got shape "
                             f"{shape} (dim {axis}: {got} != {want})")
        if dim == "2*I_tp" and got % 2:
            raise ValueError(f"{arg}: expected {layout}, got shape {shape}: dim {axis} (2*I_tp, "
                             "gate rows then up rows) must be even")
    return tuple(shape)


def _swap(tensor):
    return tensor.transpose(1, 2).contiguous()


def w13_to_processed(w13: "torch.Tensor", *, hidden_size: Optional[int] = None,
                     intermediate_size: Optional[int] = None) -> "torch.Tensor":
    """``[E, 2*I_tp, H] -> [E, H, 2*I_tp]`` (new contiguous tensor, what vLLM-Ascend's post-load
    step computes). ``intermediate_size`` is the per-rank ``I_tp`` (only checked when given;
    ``2*I_tp`` must be even in any case). Bad input raises TypeError/ValueError naming the argument."""
    _check("w13", w13, "[E, 2*I_tp, H]", hidden_size, intermediate_size)
    return _swap(w13)


def w13_to_preprocessed(w13: "torch.Tensor", *, hidden_size: Optional[int] = None,
                        intermediate_size: Optional[int] = None) -> "torch.Tensor":
    """``[E, H, 2*I_tp] -> [E, 2*I_tp, H]`` (new contiguous tensor): undo the post-load step."""
    _check("w13", w13, "[E, H, 2*I_tp]", hidden_size, intermediate_size)
    return _swap(w13)


def w2_to_processed(w2: "torch.Tensor", *, hidden_size: Optional[int] = None,
                    intermediate_size: Optional[int] = None) -> "torch.Tensor":
    """``[E, H, I_tp] -> [E, I_tp, H]`` (new contiguous tensor)."""
    _check("w2", w2, "[E, H, I_tp]", hidden_size, intermediate_size)
    return _swap(w2)


def w2_to_preprocessed(w2: "torch.Tensor", *, hidden_size: Optional[int] = None,
                       intermediate_size: Optional[int] = None) -> "torch.Tensor":
    """``[E, I_tp, H] -> [E, H, I_tp]`` (new contiguous tensor): undo the post-load step."""
    _check("w2", w2, "[E, I_tp, H]", hidden_size, intermediate_size)
    return _swap(w2)


def preprocessed_view(processed: "torch.Tensor") -> "torch.Tensor":
    """Zero-copy view of a processed w13/w2 tensor in the preprocessed orientation
    (``transpose(1, 2)``, shares storage). Writing into the view writes the processed tensor."""
    _check("processed", processed, "[E, ., .]")
    return processed.transpose(1, 2)


def expert_shard_view(processed: "torch.Tensor", shard_id: str, expert_id: Optional[int] = None, *,
                      is_act_and_mul: bool = True, hidden_size: Optional[int] = None,
                      intermediate_size: Optional[int] = None) -> "torch.Tensor":
    """The part of a PROCESSED w13/w2 tensor that holds one shard, seen in checkpoint orientation.

    ``w1``/``w3``: ``[I_tp, H]`` (``[E, I_tp, H]`` when ``expert_id`` is None);
    ``w2``: ``[H, I_tp]`` (``[E, H, I_tp]``). Views: zero copy, writes go to ``processed``.
    A shape alone cannot tell a processed w13 ``[E, H, 2*I_tp]`` from a w2 ``[E, I_tp, H]``: give
    ``hidden_size`` / ``intermediate_size`` (per rank) to have ``processed`` checked against the
    layout of ``shard_id``, so that the tensor of the other projection raises ValueError.
    """
    shard_id = normalize_shard_id(shard_id)
    if not isinstance(is_act_and_mul, bool):  # a str "False" would be true
        raise TypeError(f"is_act_and_mul must be a bool, got {is_act_and_mul!r}")
    if shard_id == "w3" and not is_act_and_mul:
        raise ValueError(f"w13 without act_and_mul holds only w1 (gate), got {shard_id!r}")
    layout = ("[E, I_tp, H]" if shard_id == "w2" else
              "[E, H, 2*I_tp]" if is_act_and_mul else "[E, H, I_tp]")
    shape = _check("processed", processed, layout, hidden_size, intermediate_size)
    if expert_id is not None:
        if type(expert_id) is not int:  # not bool either
            raise TypeError(f"expert_id must be an int or None, got {expert_id!r}")
        if not 0 <= expert_id < shape[0]:
            raise ValueError(f"expert_id {expert_id} out of range: expected 0 <= expert_id < "
                             f"{shape[0]} (the local experts of processed {list(shape)})")
        target = processed[expert_id]            # [H, 2I_tp] or [I_tp, H]
        swap = (0, 1)
    else:
        target = processed
        swap = (1, 2)
    if shard_id == "w2":
        return target.transpose(*swap)           # [.., H, I_tp]
    length = shape[2] // 2 if is_act_and_mul else shape[2]
    start = length if shard_id == "w3" else 0
    return target.narrow(swap[1], start, length).transpose(*swap)   # [.., I_tp, H]


def write_expert_shard(processed: "torch.Tensor", loaded_weight: "torch.Tensor", shard_id: str,
                       expert_id: Optional[int] = None, *, tp_rank: int = 0, tp_size: int = 1,
                       pre_sharded: bool = False, is_act_and_mul: bool = True) -> "torch.Tensor":
    """Write one expert's checkpoint tensor straight into the PROCESSED layout, TP-sharded the way
    vLLM's FusedMoE weight loader shards it (see the module docstring).

    processed:     w13 ``[E, H, 2*I_tp]`` for ``w1``/``w3`` (gate/up), w2 ``[E, I_tp, H]`` for ``w2``.
    loaded_weight: one expert, full checkpoint tensor: gate/up ``[I, H]``, down ``[H, I]``; or all
                   experts at once (``expert_id=None``): ``[E, I, H]`` / ``[E, H, I]``.
                   With ``pre_sharded=True`` it is already this rank's slice (``I_tp`` wide).
    Returns the written view of ``processed``. Only the incoming shard is read (through a
    transposed view); nothing of the size of ``processed`` is allocated.
    """
    shard_id = normalize_shard_id(shard_id)
    # type(), not isinstance(): a bool would pass as 0 or 1
    if type(tp_size) is not int:
        raise TypeError(f"tp_size must be a positive int, got {tp_size!r}")
    if tp_size < 1:
        raise ValueError(f"tp_size must be a positive int, got {tp_size!r}")
    if type(tp_rank) is not int:
        raise TypeError(f"tp_rank must be an int in [0, {tp_size}), got {tp_rank!r}")
    if not 0 <= tp_rank < tp_size:
        raise ValueError(f"tp_rank must be an int in [0, {tp_size}), got {tp_rank!r}")
    if not isinstance(pre_sharded, bool):
        raise TypeError(f"pre_sharded must be a bool, got {pre_sharded!r}")
    destination = expert_shard_view(processed, shard_id, expert_id, is_act_and_mul=is_act_and_mul)
    shape = tuple(processed.shape)
    layout = "[H, I]" if shard_id == "w2" else "[I, H]"
    if expert_id is None:
        layout = "[E, " + layout[1:]
    got_shape = _check(f"loaded_weight (expert_id={expert_id!r})", loaded_weight, layout)
    want_ndim = len(got_shape)
    # the intermediate (sharded) dim of the checkpoint tensor: rows for w1/w3, columns for w2
    shard_dim = (want_ndim - 2) + (1 if shard_id == "w2" else 0)
    other_dim = (want_ndim - 2) + (0 if shard_id == "w2" else 1)
    i_tp = destination.shape[shard_dim]
    hidden = destination.shape[other_dim]
    if got_shape[other_dim] != hidden:
        raise ValueError(
            f"{shard_id}: loaded_weight shape {list(got_shape)} does not match hidden size {hidden} "
            f"of the processed tensor {list(shape)}"
        )
    if expert_id is None and got_shape[0] != shape[0]:
        raise ValueError(f"loaded_weight has {got_shape[0]} experts, processed tensor {shape[0]}")
    full = got_shape[shard_dim]
    if pre_sharded:
        if full != i_tp:
            raise ValueError(
                f"{shard_id}: pre-sharded loaded_weight has intermediate size {full}, the processed "
                f"tensor holds {i_tp} per rank"
            )
        source = loaded_weight
    else:
        if full % tp_size or full // tp_size != i_tp:
            raise ValueError(
                f"{shard_id}: checkpoint intermediate size {full} split over tp_size={tp_size} does "
                f"not give the {i_tp} per rank that the processed tensor {list(shape)} holds "
                "(padded parameters are not supported by this helper)"
            )
        source = loaded_weight.narrow(shard_dim, i_tp * tp_rank, i_tp)
    destination.copy_(source)
    return destination
