"""Packed samples: where each sample of a padding-free row starts, for the records that keep them apart.

Trainers pack several samples into one row (verl, ms-swift, TRL, LlamaFactory, axolotl) and mark the
boundaries the way attention already understands: ``position_ids`` restarting at 0 for each sample
(on 5.9+ also ``cu_seq_lens_q``). Recurrent mixers (GatedDeltaNet, Mamba2) need the same boundaries
and never get them. The records derive them here, once per forward, from what the decoder layer
receives, and hand them to the mixer through a context variable (below transformers 5.9 the layer's
keyword arguments do not reach the mixer).

* A decoder-layer wrapper calls ``carrying(position_ids=..., attention_mask=..., cu_seq_lens=...)``
  around the original layer. Nothing is computed there: gradient-checkpoint recomputation runs the
  layer again with the same arguments, so the boundaries are there in backward too.
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
    """What a decoder layer received; resolved to a Packing only when a mixer asks."""

    __slots__ = ("position_ids", "attention_mask", "cu_seq_lens", "_resolved")

    def __init__(self, position_ids, attention_mask, cu_seq_lens):
        self.position_ids, self.attention_mask, self.cu_seq_lens = position_ids, attention_mask, cu_seq_lens
        self._resolved = None

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


_last = (None, None)  # (source key, _Source): one forward's layers share the resolved boundaries


def _source(position_ids, attention_mask, cu_seq_lens):
    global _last
    key = (id(position_ids), id(attention_mask), id(cu_seq_lens))
    last_key, last = _last
    if last is not None and key == last_key and last.position_ids is position_ids \
            and last.attention_mask is attention_mask and last.cu_seq_lens is cu_seq_lens:
        return last
    source = _Source(position_ids, attention_mask, cu_seq_lens)
    _last = (key, source)
    return source


@contextlib.contextmanager
def carrying(position_ids=None, attention_mask=None, cu_seq_lens=None):
    """Make this layer's boundary inputs visible to the mixers it calls (this thread / task only)."""
    if position_ids is None and cu_seq_lens is None:
        token = _carried.set(None)
    else:
        token = _carried.set(_source(position_ids, attention_mask, cu_seq_lens))
    try:
        yield
    finally:
        _carried.reset(token)


def current(hidden_states):
    """The Packing of `hidden_states` (``(batch, seq_len, ...)``) carried by the enclosing layer, or
    None: not packed, no boundaries given, or the boundaries describe another layout."""
    source = _carried.get()
    if source is None:
        return None
    batch_size, seq_len = hidden_states.shape[:2]
    packing = source.packing(seq_len)
    if packing is None:
        return None
    if (packing.batch_size, packing.seq_len) != (batch_size, seq_len):
        raise ValueError(f"packed samples: the layer's boundaries describe (batch, seq_len) = "
                         f"({packing.batch_size}, {packing.seq_len}), its hidden_states are "
                         f"({batch_size}, {seq_len})")
    return packing


def _checkpointing_forward(wrapped):
    """Whether `wrapped` (a decoder layer's class ``forward``) is transformers >= 5.23's
    ``GradientCheckpointingLayer`` closure ``forward_with_checkpointing``, which checkpoints only
    when it is still ``type(self).forward``, i.e. never under a wrapper of that ``forward``."""
    function = getattr(wrapped, "__func__", wrapped)
    code = getattr(function, "__code__", None)
    return code is not None and code.co_name == "forward_with_checkpointing"


def call_layer(wrapped, instance, args, kwargs, position_ids=None, attention_mask=None, cu_seq_lens=None):
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
    """
    hidden_states = args[0] if args else kwargs.get("hidden_states")
    batch_size = getattr(hidden_states, "shape", (None,))[0]
    if cu_seq_lens is not None and batch_size != 1:
        cu_seq_lens = None  # cu_seq_lens describe one row; a batch keeps its position_ids
    if position_ids is not None and position_ids.dim() in (2, 3) and position_ids.shape[-2] == 1 \
            and batch_size is not None and batch_size > 1:
        # one row of ids for the whole batch (what a model builds when none are given)
        position_ids = position_ids.expand(*position_ids.shape[:-2], batch_size, position_ids.shape[-1])
    carry = dict(position_ids=position_ids, attention_mask=attention_mask, cu_seq_lens=cu_seq_lens)
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
            with carrying(**carry):
                return wrapped(*run_args, **run_kwargs)  # not outermost: the layer's own forward

        return instance._gradient_checkpointing_func(functools.partial(run, **kwargs), *args)
    with carrying(**carry):
        return wrapped(*args, **kwargs)
