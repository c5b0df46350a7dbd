"""Packed samples: where each sample of a padding-free row starts, for the records that keep them apart.

Trainers pack several samples into one row (verl, ms-swift, TRL, LlamaFactory, axolotl) and mark the
boundaries the way attention already understands: ``position_ids`` restarting at 0 for each sample
(on 5.9+ also ``cu_seq_lens_q``). Recurrent mixers (GatedDeltaNet, Mamba2) need the same boundaries
and never get them. The records derive them here from what the model and its decoder layers
receive, and hand them to the mixer through a context variable (below transformers 5.9 the layer's
keyword arguments do not reach the mixer).

* The model forward's wrapper calls ``call_model(...)``: the scope in which its layers share one
  resolution of the boundaries (never carried into the next forward, whose ids may sit in the same
  refilled buffer), and where a packed batch's padding-only-at-the-end attention mask is dropped so
  that the attention layers keep the samples apart too.
* A decoder-layer wrapper calls ``call_layer(...)`` around the original layer: the boundaries it
  received, resolved at most once, are carried for the mixers it calls, into gradient-checkpoint
  recomputation too, and checkpointing stays on.
* The mixer wrapper calls ``current()``: ``None`` (unpacked, no boundaries, or generation with a
  cache: the caller decides) means "run the original code, untouched"; else a :class:`Packing`.

Only imported from inside wrappers, when a model already runs (torch is loaded then).
"""

import contextlib
import contextvars

import torch

_carried = contextvars.ContextVar("compat_patches_packed_samples", default=None)


class Packing:
    """Sample spans of a ``(batch, seq_len)`` layout: ``starts[row]`` is a tuple of start indices
    beginning with 0, each sample running to the next start (the last to ``seq_len``)."""

    __slots__ = ("starts", "seq_len")

    def __init__(self, starts, seq_len):
        self.starts = tuple(tuple(row) for row in starts)
        self.seq_len = seq_len

    def __repr__(self):
        return f"Packing(starts={self.starts}, seq_len={self.seq_len})"

    def __eq__(self, other):
        return isinstance(other, Packing) and (self.starts, self.seq_len) == (other.starts, other.seq_len)

    @property
    def batch_size(self):
        return len(self.starts)

    def spans(self, row):
        """``(start, end)`` of each sample of `row`."""
        starts = self.starts[row]
        return tuple(zip(starts, starts[1:] + (self.seq_len,)))

    def cu_seqlens(self, device=None):
        """Cumulative sample lengths over the batch flattened to one row (flash-linear-attention's
        varlen layout): ``[0, ..., batch_size * seq_len]``, int32."""
        flat = [row * self.seq_len + start for row, starts in enumerate(self.starts) for start in starts]
        return torch.tensor(flat + [self.batch_size * self.seq_len], dtype=torch.int32, device=device)

    def seq_idx(self, device=None):
        """Sample index of every token, ``(batch, seq_len)`` int32 (mamba_ssm / causal_conv1d)."""
        out = torch.empty(self.batch_size, self.seq_len, dtype=torch.int32)
        for row in range(self.batch_size):
            for index, (start, end) in enumerate(self.spans(row)):
                out[row, start:end] = index
        return out.to(device) if device is not None else out

    def split_run(self, run, hidden_states, per_token=None):
        """``run(hidden_states_slice, **per_token_slices)`` on each sample alone (a ``(1, length,
        ...)`` slice), outputs concatenated back into the ``(batch, seq_len, ...)`` layout.
        `per_token`: keyword tensors laid out ``(batch, seq_len, ...)``, sliced the same way (None
        values pass through). Gradients flow through the slices and the concatenation."""
        per_token = per_token or {}
        rows = []
        for row in range(self.batch_size):
            pieces = []
            for start, end in self.spans(row):
                sliced = {name: None if value is None else value[row:row + 1, start:end]
                          for name, value in per_token.items()}
                pieces.append(run(hidden_states[row:row + 1, start:end], **sliced))
            rows.append(torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])
        return torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]


def _check_layout(name, tensor, batch_size, seq_len):
    if tuple(tensor.shape) != (batch_size, seq_len):
        raise ValueError(f"packed samples: {name} has shape {tuple(tensor.shape)}, expected "
                         f"(batch, seq_len) = ({batch_size}, {seq_len}) like hidden_states")


def from_position_ids(position_ids, attention_mask=None):
    """The packing of rows whose ``position_ids`` restart at 0 for each sample, or None if no row
    has a second sample.

    ``(3, batch, seq_len)`` / ``(4, batch, seq_len)`` mRoPE ids: the first row (temporal, or text
    positions) is used. A token starts a sample where its position is 0 and it and the token before
    it are real (``attention_mask`` 1): left padding (positions 1, 1, ..., 0, 1, ...) and a padded
    tail are therefore not sample starts, and an unpacked padded batch stays unpacked.
    """
    if position_ids.dim() == 3:
        position_ids = position_ids[0]
    if position_ids.dim() != 2:
        raise ValueError(f"packed samples: position_ids must be (batch, seq_len) or (k, batch, seq_len), "
                         f"got shape {tuple(position_ids.shape)}")
    batch_size, seq_len = position_ids.shape
    restarts = position_ids[:, 1:] == 0
    if attention_mask is not None and attention_mask.dim() == 2:
        _check_layout("attention_mask", attention_mask, batch_size, seq_len)
        real = attention_mask.bool()
        restarts = restarts & real[:, 1:] & real[:, :-1]
    rows, columns = restarts.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return None
    starts = [[0] for _ in range(batch_size)]
    for row, column in zip(rows.tolist(), columns.tolist()):
        starts[row].append(column + 1)
    return Packing(starts, seq_len)


def from_cu_seqlens(cu_seqlens, seq_len):
    """The packing of one row given cumulative lengths (``cu_seq_lens_q``), or None for one sample.
    A tail past ``cu_seqlens[-1]`` (padding) is a span of its own."""
    bounds = [int(x) for x in cu_seqlens.tolist()]
    if bounds[0] != 0 or any(b <= a for a, b in zip(bounds, bounds[1:])) or bounds[-1] > seq_len:
        raise ValueError(f"packed samples: cu_seq_lens must rise strictly from 0 to at most the row "
                         f"length {seq_len}, got {bounds}")
    starts = bounds[:-1] + ([bounds[-1]] if bounds[-1] < seq_len else [])
    return Packing([starts], seq_len) if len(starts) > 1 else None


class _Source:
    """What a decoder layer (or the model forward) received; resolved to a Packing when first asked,
    at most once."""

    __slots__ = ("position_ids", "attention_mask", "cu_seq_lens", "_resolved", "reached")

    def __init__(self, position_ids, attention_mask, cu_seq_lens):
        self.position_ids, self.attention_mask, self.cu_seq_lens = position_ids, attention_mask, cu_seq_lens
        self._resolved = None
        self.reached = False  # a mixer wrapper of ours ran with these boundaries

    def packing(self, seq_len):
        if self._resolved is None:
            if self.cu_seq_lens is not None:
                packing = from_cu_seqlens(self.cu_seq_lens, seq_len)
            elif self.position_ids is not None:
                packing = from_position_ids(self.position_ids, self.attention_mask)
            else:
                packing = None
            self._resolved = (packing,)
        return self._resolved[0]


class _Forward:
    """One model forward: the sources its layers share (one resolution per forward, never beyond:
    a collator may refill the same position_ids buffer for the next batch) and, if its rows are
    packed, its position_ids (for the models whose layers or masks do not get them)."""

    __slots__ = ("sources", "positions")

    def __init__(self):
        self.sources, self.positions = {}, None


_forward = contextvars.ContextVar("compat_patches_packed_forward", default=None)


def _layout(tensor):
    """What identifies a tensor's values inside one forward: the same memory read the same way (a
    model hands its layers views of the ids it got, e.g. ``ids[None].expand(4, ...)[0]``)."""
    if tensor is None:
        return None
    return (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device)


def source_for(position_ids=None, attention_mask=None, cu_seq_lens=None):
    """The boundaries a layer received, shared with the other layers of the model forward running
    now (if any) that received the same ids; None when nothing marks them."""
    if position_ids is None and cu_seq_lens is None:
        return None
    forward = _forward.get()
    if forward is None:
        return _Source(position_ids, attention_mask, cu_seq_lens)
    key = (_layout(position_ids), _layout(cu_seq_lens))
    source = forward.sources.get(key)
    if source is None:
        source = forward.sources[key] = _Source(position_ids, attention_mask, cu_seq_lens)
    return source


@contextlib.contextmanager
def _carry(source):
    token = _carried.set(source)
    try:
        yield
    finally:
        _carried.reset(token)


def carrying(position_ids=None, attention_mask=None, cu_seq_lens=None):
    """Make this layer's boundary inputs visible to the mixers it calls (this thread / task only)."""
    return _carry(source_for(position_ids, attention_mask, cu_seq_lens))


def reached():
    """Called by a mixer wrapper as it starts: the enclosing layer's mixer runs through the patch."""
    source = _carried.get()
    if source is not None:
        source.reached = True


def current(hidden_states):
    """The Packing of `hidden_states` (``(batch, seq_len, ...)``) carried by the enclosing layer, or
    None: not packed, no boundaries given, or the boundaries describe another layout."""
    source = _carried.get()
    if source is None:
        return None
    source.reached = True
    batch_size, seq_len = hidden_states.shape[:2]
    packing = source.packing(seq_len)
    if packing is None:
        return None
    if (packing.batch_size, packing.seq_len) != (batch_size, seq_len):
        raise ValueError(f"packed samples: the layer's boundaries describe (batch, seq_len) = "
                         f"({packing.batch_size}, {packing.seq_len}), its hidden_states are "
                         f"({batch_size}, {seq_len})")
    return packing


def forward_positions():
    """The position_ids of the model forward running now if its rows are packed, else None."""
    forward = _forward.get()
    return None if forward is None else forward.positions


# --- calls by name ------------------------------------------------------------------------------

_signatures = {}


def call_signature(wrapped):
    """The signature `wrapped` is called with (a bound method's without its first parameter)."""
    function = getattr(wrapped, "__func__", wrapped)
    key = (function, hasattr(wrapped, "__self__"))
    try:
        return _signatures[key]
    except KeyError:
        import inspect

        signature = inspect.signature(function)
        if key[1]:
            signature = signature.replace(parameters=tuple(signature.parameters.values())[1:])
        _signatures[key] = signature
        return signature


def arguments(wrapped, args, kwargs):
    """The call's arguments by name (a ``**kwargs`` parameter's entries flattened in)."""
    signature = call_signature(wrapped)
    named = dict(signature.bind(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind == parameter.VAR_KEYWORD and name in named:
            named.update(named.pop(name))
    return named


def _replaced(wrapped, args, kwargs, name, value):
    """(args, kwargs) of the same call with argument `name` set to `value`."""
    if name not in kwargs:
        names = [n for n, p in call_signature(wrapped).parameters.items()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        index = names.index(name) if name in names else len(args)
        if index < len(args):
            return args[:index] + (value,) + args[index + 1:], kwargs
    return args, dict(kwargs, **{name: value})


# --- the model forward: one resolution, and the attention mask ---------------------------------

_warned = set()


def warn_once(record, model, message):
    """A RuntimeWarning once per record, model class and message."""
    key = (record, type(model), message)
    if key not in _warned:
        _warned.add(key)
        import warnings

        warnings.warn(f"{record}: {type(model).__name__}: {message}", RuntimeWarning, stacklevel=4)


_CACHE_NAMES = ("cache", "past_key_values", "cache_params")
WITH_CACHE = ("packed samples (position_ids restarting at 0) with a cache (use_cache is on): "
              "transformers keeps them apart in attention only without a cache, and a packed row has "
              "no single state to continue; pass use_cache=False for training forwards")
UNSORTED_MASK = ("packed samples (position_ids restarting at 0) with an attention_mask that pads before "
                 "real tokens: transformers then builds the attention mask from it alone, so the "
                 "attention layers see across the samples (the recurrent layers are kept apart); pass "
                 "attention_mask=None (position_ids mark the samples) or pad only at the end")


def _text_rows(position_ids):
    """`position_ids` as ``(batch, seq_len)``: 2-D ids, or the text row of 4-row mRoPE ids; None
    for anything else (3-row mRoPE ids hold no text row)."""
    if position_ids is None or not hasattr(position_ids, "dim"):
        return None
    if position_ids.dim() == 2:
        return position_ids
    if position_ids.dim() == 3 and position_ids.shape[0] == 4:
        return position_ids[0]
    return None


def _with_cache(model, named):
    if any(named.get(name) is not None for name in _CACHE_NAMES):
        return True
    use_cache = named.get("use_cache")
    if use_cache is None:
        use_cache = getattr(getattr(model, "config", None), "use_cache", False)
    return bool(use_cache)


def _ends_padded(mask):
    """Each row real tokens first, padding (if any) only after them."""
    real = mask.bool()
    return bool((real[:, 1:] <= real[:, :-1]).all())


def call_model(record, wrapped, instance, args, kwargs, run=None):
    """Run a model forward (``wrapped(*args, **kwargs)``, or ``run(args, kwargs)``) as the scope its
    layers share their boundaries in. If its rows are packed (and no cache is used): its
    position_ids are `forward_positions()`, and a 2-D attention_mask that only pads at the end (or
    pads nothing) is replaced by None, so that transformers builds the block-diagonal causal mask
    from position_ids as it does without a mask; a mask padding elsewhere is kept, with a warning.
    Anything else runs unchanged."""
    named = arguments(wrapped, args, kwargs)
    forward = _Forward()
    token = _forward.set(forward)
    try:
        rows = _text_rows(named.get("position_ids"))
        cu_seq_lens = named.get("cu_seq_lens_q")
        if rows is not None and rows.shape[-1] > 1 and (cu_seq_lens is None or rows.shape[0] == 1):
            mask = named.get("attention_mask")
            mask = mask if hasattr(mask, "dim") and mask.dim() == 2 and mask.shape == rows.shape else None
            packing = source_for(rows, mask, cu_seq_lens).packing(rows.shape[-1])
            if packing is not None:
                if _with_cache(instance, named):
                    warn_once(record, instance, WITH_CACHE)
                else:
                    forward.positions = rows
                    if mask is not None and _ends_padded(mask):
                        args, kwargs = _replaced(wrapped, args, kwargs, "attention_mask", None)
                    elif mask is not None:
                        warn_once(record, instance, UNSORTED_MASK)
        return run(args, kwargs) if run is not None else wrapped(*args, **kwargs)
    finally:
        _forward.reset(token)


def _checkpointing_forward(wrapped):
    """Whether `wrapped` (a decoder layer's class ``forward``) is transformers >= 5.23's
    ``GradientCheckpointingLayer`` closure ``forward_with_checkpointing``, which checkpoints only
    when it is still ``type(self).forward``, i.e. never under a wrapper of that ``forward``."""
    function = getattr(wrapped, "__func__", wrapped)
    code = getattr(function, "__code__", None)
    return code is not None and code.co_name == "forward_with_checkpointing"


BYPASSED = ("packed samples reached this layer, but its mixer's forward was replaced on the instance "
            "(kernels' kernelize with use_kernels, or another hub kernel), so the patch never ran there: "
            "the samples were NOT kept apart in it; load the model with use_kernels=False")


def _check_reached(record, instance, mixer, source, hidden_states):
    """Warn (once per class) where a packed batch's mixer did not run through the patch."""
    if mixer is None or source is None or source.reached or not hasattr(hidden_states, "shape"):
        return
    if source.packing(hidden_states.shape[1]) is not None:
        warn_once(record, instance, BYPASSED)


def call_layer(wrapped, instance, args, kwargs, position_ids=None, attention_mask=None, cu_seq_lens=None,
               record=None, mixer=None):
    """Run a wrapped decoder layer (``wrapped(*args, **kwargs)``) inside ``carrying(...)``, keeping
    gradient checkpointing working. One row of ``position_ids`` stands for every row of the batch;
    ``cu_seq_lens`` are used for a one-row batch only.

    Up to transformers 5.22 ``GradientCheckpointingLayer.__call__`` checkpoints
    ``nn.Module.__call__``, so a wrapper of the class's ``forward`` runs again on recomputation. From
    5.23 the class's ``forward`` itself checkpoints, and only while it is ``type(self).forward``: a
    wrapper on it would silently turn checkpointing off, packed or not. So here, for every call the
    layer would have checkpointed, this does what it would have done (``use_cache`` off, the cache
    dropped unless the layer can checkpoint with one) and checkpoints a call that carries the
    boundaries, so recomputation in backward sees them too. Anything else runs ``wrapped`` as is.
    `mixer`: the layer's recurrent mixer (None: it has none); if a packed batch's mixer never ran
    through the patch (its forward replaced on the instance), `record` warns once.
    """
    hidden_states = args[0] if args else kwargs.get("hidden_states")
    batch_size = getattr(hidden_states, "shape", (None,))[0]
    if cu_seq_lens is not None and batch_size != 1:
        cu_seq_lens = None  # cu_seq_lens describe one row; a batch keeps its position_ids
    if position_ids is not None and position_ids.dim() in (2, 3) and position_ids.shape[-2] == 1 \
            and batch_size is not None and batch_size > 1:
        # one row of ids for the whole batch (what a model builds when none are given)
        position_ids = position_ids.expand(*position_ids.shape[:-2], batch_size, position_ids.shape[-1])
    source = source_for(position_ids, attention_mask, cu_seq_lens)  # recomputation reuses it
    if (_checkpointing_forward(wrapped) and getattr(instance, "gradient_checkpointing", False)
            and instance.training and torch.is_grad_enabled()):
        import functools

        kwargs = dict(kwargs)
        if kwargs.get("use_cache"):
            kwargs["use_cache"] = False
        if not getattr(instance, "_can_checkpoint_with_cache", False):
            for name in ("cache", "past_key_values", "layer_past"):  # the names 5.23 / 5.24 clear
                if kwargs.get(name) is not None:
                    kwargs[name] = None

        def run(*run_args, **run_kwargs):
            with _carry(source):
                return wrapped(*run_args, **run_kwargs)  # not outermost: the layer's own forward

        result = instance._gradient_checkpointing_func(functools.partial(run, **kwargs), *args)
    else:
        with _carry(source):
            result = wrapped(*args, **kwargs)
    _check_reached(record, instance, mixer, source, hidden_states)
    return result
