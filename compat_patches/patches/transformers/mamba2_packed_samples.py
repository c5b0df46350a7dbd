"""transformers-mamba2-packed-samples: keep packed samples apart in the Mamba2 hybrids.

Trainers pack several samples into one row and mark them with ``position_ids`` restarting at 0
(verl, TRL padding-free, ms-swift, LlamaFactory, axolotl). Attention keeps them apart; the Mamba2
mixers of NemotronH, Bamba, GraniteMoeHybrid and Falcon-H1 never see the boundaries: their causal
conv1d and their SSM state run from one sample into the next, so every sample after the first
gets different logits and gradients than when run alone (measured on every transformers 5.x
release). GraniteMoeHybrid's model also builds its attention mask without ``position_ids``, so its
attention layers leak across samples too (Bamba's and Falcon-H1's up to 5.1.0).

The fix uses the shared boundary mechanism (:mod:`compat_patches.packed_samples`):

* each model's ``forward`` is the scope of ``packed_samples.call_model``: one resolution of the
  boundaries for its layers, and a packed batch's 2-D attention mask that pads only at the end is
  dropped, so the attention mask is built from ``position_ids`` (block-diagonal causal);
* the decoder layer's wrapper carries what it receives (``position_ids``, its 2-D mask, a
  forwarded ``cu_seq_lens_q``) to its mixer through ``packed_samples.call_layer``, into
  gradient-checkpoint recomputation too, and keeps the release's checkpointing on for every call
  (from 5.23 ``GradientCheckpointingLayer`` checkpoints inside the class's own ``forward`` only while
  nothing wraps it). GraniteMoeHybrid's decoder layer gets no ``position_ids``: its model's wrapper
  hands a packed batch's to the layers in a private keyword argument that the layer's wrapper
  removes again, and to its ``create_causal_mask`` (block-diagonal causal mask, as Bamba's model
  does since 5.2.0). Bamba's and Falcon-H1's ``_update_causal_mask`` (5.0.0rc0 - 5.1.x) get the
  same;
* the Mamba2 mixer's wrapper asks ``packed_samples.current(hidden_states)``: None (not packed,
  no boundaries, a decoding step) runs the original code untouched; otherwise each sample runs
  through the original mixer alone (``Packing.split_run``, no cache), or, where the CUDA kernels
  (``mamba_ssm`` and ``causal_conv1d``) run and the mixer hands ``seq_idx`` to them, once with
  ``seq_idx``.

Up to 5.14 the mixers dispatch to ``cuda_kernels_forward`` / ``torch_forward``; from 5.15 one
``forward`` calls module-level ``causal_conv1d_fn`` / ``mamba2_chunk_scan`` /
``mamba2_split_conv1d_scan_combined`` with the mixer's extra keyword arguments: one Target per
shape and signature (``_SHAPES``); the model forwards have no shape table: their wrapper reads
``attention_mask`` / ``position_ids`` by name, and their ``check`` asks for those parameters.

Nothing heavy is imported here: torch, inspect and the shared mechanism only inside the wrappers.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces

NAME = "transformers-mamba2-packed-samples"
_PRIVATE_POSITIONS = "_compat_patches_position_ids"  # GraniteMoeHybrid: model -> decoder layer
_PACKING_KWARGS = ("seq_idx", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
_CACHE_NAMES = ("cache", "cache_params", "past_key_values")
def _module(family):
    return f"transformers.models.{family}.modeling_{family}"


def _arguments(wrapped, args, kwargs):
    from compat_patches import packed_samples

    return packed_samples.arguments(wrapped, args, kwargs)


# ----- decoder layer: carry the boundaries ------------------------------------------------------

def _two_d(mask, like=None):
    """`mask` if it is a 2-D (batch, seq_len) mask laid out like `like` (position_ids), else None
    (a 4-D attention mask, or a decoding step's mask over past and new tokens)."""
    if mask is None or not hasattr(mask, "dim") or mask.dim() != 2:
        return None
    if like is not None and tuple(mask.shape) != tuple(like.shape[-2:]):
        return None
    return mask


def _carried(kwargs, mask_name, position_ids=None):
    position_ids = kwargs.get("position_ids") if position_ids is None else position_ids
    return dict(position_ids=position_ids,
                attention_mask=_two_d(kwargs.get(mask_name), position_ids),
                cu_seq_lens=kwargs.get("cu_seq_lens_q"))


def _mixer_of(layer):
    """The layer's Mamba2 mixer (one of the record's mixer classes), or None (an attention / MoE block)."""
    for name in ("mamba", "mixer"):
        child = getattr(layer, name, None)
        if type(child).__name__ in _MIXER_CLASSES:
            return child
    return None


def _carry_layer(wrapped, instance, args, kwargs, carry):
    from compat_patches import packed_samples

    return packed_samples.call_layer(wrapped, instance, args, kwargs, **carry, record=NAME,
                                     mixer=_mixer_of(instance))


def _layer(wrapped, instance, args, kwargs):
    """NemotronHBlock / BambaDecoderLayer: ``position_ids`` and the layer's (2-D) mask."""
    if "position_ids" not in kwargs and len(args) > 1:
        kwargs = _arguments(wrapped, args, kwargs)
        args = (kwargs.pop("hidden_states"),)
    return _carry_layer(wrapped, instance, args, kwargs, _carried(kwargs, "attention_mask"))


def _falcon_layer(wrapped, instance, args, kwargs):
    """FalconH1DecoderLayer: the mamba branch's mask is ``mamba_attention_mask``."""
    if "position_ids" not in kwargs and len(args) > 1:
        kwargs = _arguments(wrapped, args, kwargs)
        args = (kwargs.pop("hidden_states"),)
    return _carry_layer(wrapped, instance, args, kwargs, _carried(kwargs, "mamba_attention_mask"))


def _granite_layer(wrapped, instance, args, kwargs):
    """GraniteMoeHybridDecoderLayer gets no position_ids: the model's wrapper passes a packed batch's
    in a private keyword (kept by gradient-checkpoint recomputation), removed here before the original
    layer runs. Unpacked calls go through ``call_layer`` too: from 5.23 it keeps checkpointing on."""
    position_ids = kwargs.pop(_PRIVATE_POSITIONS, None)
    carry = _carried(kwargs, "attention_mask", position_ids) if position_ids is not None else {}
    return _carry_layer(wrapped, instance, args, kwargs, carry)


# ----- the model forward: one resolution; positions to the layers and masks that lack them ------

def _model(wrapped, instance, args, kwargs):
    """<Family>Model.forward: the scope of ``packed_samples.call_model`` (one resolution of the
    boundaries per forward; a packed batch's end-padded attention mask dropped, so the attention
    mask is built from position_ids)."""
    from compat_patches import packed_samples

    return packed_samples.call_model(NAME, wrapped, instance, args, kwargs)


def _granite_model(wrapped, instance, args, kwargs):
    """GraniteMoeHybridModel.forward: as `_model`, and a packed batch's position_ids also go to the
    decoder layers (a private keyword the layer's wrapper removes) and, through
    ``forward_positions()``, to its create_causal_mask."""
    from compat_patches import packed_samples

    def run(args, kwargs):
        positions = packed_samples.forward_positions()
        if positions is not None and _PRIVATE_POSITIONS not in kwargs:
            kwargs = dict(kwargs, **{_PRIVATE_POSITIONS: positions})
        return wrapped(*args, **kwargs)

    return packed_samples.call_model(NAME, wrapped, instance, args, kwargs, run=run)


def _forward_positions():
    from compat_patches import packed_samples

    return packed_samples.forward_positions()


def _granite_mask(wrapped, instance, args, kwargs):
    """create_causal_mask as GraniteMoeHybridModel calls it: with the packed batch's position_ids
    (it builds the block-diagonal causal mask from them where no 2-D mask is given, as for Bamba)."""
    position_ids = _forward_positions()
    if position_ids is None or kwargs.get("position_ids") is not None:
        return wrapped(*args, **kwargs)
    return wrapped(*args, **dict(kwargs, position_ids=position_ids))


def _old_mask(wrapped, instance, args, kwargs):
    """BambaModel / FalconH1Model._update_causal_mask, 5.0.0rc0 - 5.1.x, ignores position_ids.
    For a packed batch without a 2-D mask, build the mask as 5.2.0 does: create_causal_mask with
    the position_ids (block-diagonal causal)."""
    position_ids = _forward_positions()
    if position_ids is None:
        return wrapped(*args, **kwargs)
    arguments = _arguments(wrapped, args, kwargs)
    if arguments.get("attention_mask") is not None or arguments.get("past_key_values") is not None:
        return wrapped(*args, **kwargs)
    from transformers.masking_utils import create_causal_mask

    return create_causal_mask(instance.config, arguments["input_tensor"], None,
                              arguments["cache_position"], None, position_ids=position_ids)


# ----- the Mamba2 mixer: keep the samples apart -------------------------------------------------

def _split_at_padding(packing, mask):
    """Also start a span wherever a row switches between real tokens and padding (2-D mask), so
    padding never runs into a sample (a one-row slice is not masked by the mixer itself)."""
    from compat_patches import packed_samples

    if mask is None or tuple(mask.shape) != (packing.batch_size, packing.seq_len):
        return packing
    rows, columns = (mask[:, 1:].bool() != mask[:, :-1].bool()).nonzero(as_tuple=True)
    if rows.numel() == 0:
        return packing
    starts = [set(row) for row in packing.starts]
    for row, column in zip(rows.tolist(), columns.tolist()):
        starts[row].add(column + 1)
    return packed_samples.Packing([sorted(row) for row in starts], packing.seq_len)


def _importable(name):
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _kernels_take_seq_idx(wrapped, instance, hidden_states):
    """Whether this call reaches mamba_ssm / causal_conv1d CUDA kernels that take ``seq_idx``
    (confirmed on an H200 with transformers 5.17; the <= 5.14 route is not run on a GPU)."""
    if not hidden_states.is_cuda:
        return False
    cuda_forward = getattr(type(instance), "cuda_kernels_forward", None)
    if cuda_forward is not None:  # <= 5.14
        import inspect
        import sys

        if "seq_idx" not in inspect.signature(cuda_forward).parameters:
            return False  # NemotronH / Falcon-H1: cuda_kernels_forward passes seq_idx=None
        # Bamba / GraniteMoeHybrid: forward(..., seq_idx=None) hands it to cuda_kernels_forward
        module = sys.modules.get(type(instance).__module__)
        return bool(getattr(module, "is_fast_path_available", False))
    # >= 5.15: the mixer hands its keyword arguments to the module-level kernels
    return _importable("mamba_ssm") and _importable("causal_conv1d")


def _mixer(wrapped, instance, args, kwargs):
    from compat_patches import packed_samples

    hidden_states = args[0] if args else kwargs.get("hidden_states")
    if hidden_states is None or getattr(hidden_states, "dim", lambda: 0)() != 3:
        return wrapped(*args, **kwargs)
    packing = packed_samples.current(hidden_states)
    if packing is None:
        return wrapped(*args, **kwargs)  # not packed: the original code, untouched
    extra = ()
    if any(p.kind == p.VAR_POSITIONAL for p in packed_samples.call_signature(wrapped).parameters.values()):
        # 5.13 - 5.21.0: accelerate's force_accelerate_hooks hides the signature, (*args, **kwargs);
        # the decoder layers pass hidden_states positionally and the rest by keyword
        arguments = dict(kwargs, hidden_states=hidden_states)
        extra = args[1:]
    else:
        arguments = _arguments(wrapped, args, kwargs)
    mask = arguments.get("attention_mask")
    packing = _split_at_padding(packing, _two_d(mask))
    if _kernels_take_seq_idx(wrapped, instance, hidden_states):
        return wrapped(*args, **dict(kwargs, seq_idx=packing.seq_idx(hidden_states.device)))
    hidden_states = arguments.pop("hidden_states")
    for name in _CACHE_NAMES:
        if name in arguments:
            arguments[name] = None  # each sample alone, from an empty state; nothing cached
    for name in _PACKING_KWARGS:
        arguments.pop(name, None)
    per_token = {}
    if _two_d(mask) is not None and tuple(mask.shape) == tuple(hidden_states.shape[:2]):
        per_token["attention_mask"] = arguments.pop("attention_mask")

    def run(sample, **sliced):
        return wrapped(sample, *extra, **arguments, **sliced)

    return packing.split_run(run, hidden_states, per_token)


# ----- fingerprints --------------------------------------------------------------------------

_FAMILIES = ("nemotron_h", "bamba", "granitemoehybrid", "falcon_h1")


def _fix_signs(text):
    """Signs of an upstream fix in a >= 5.15 modeling file: sample boundaries handed on as
    ``seq_idx=`` / ``cu_seqlens=`` (none of the four files has one, 5.15.0 - 5.24.0)."""
    import re

    return re.findall(r"\b(seq_idx|cu_seqlens|cu_seq_lens_q)\s*=(?!=)", text)


def _family_fixed(family):
    import importlib.util

    try:
        spec = importlib.util.find_spec(_module(family))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    with open(spec.origin, encoding="utf-8") as handle:
        return bool(_fix_signs(handle.read()))


def _fixed_everywhere(original):
    """`fixed=` of the >= 5.15 mixers: every family's modeling file hands boundaries on."""
    states = {family: _family_fixed(family) for family in _FAMILIES}
    if all(state is not False for state in states.values()) and any(states.values()):
        return "every Mamba2 hybrid's modeling file passes seq_idx / cu_seqlens on"
    return None


def _fixed_partly(original):
    """`check=`: one family fixed upstream and another not is drift (this record would switch
    off for all four at once): report it rather than patch half."""
    states = {family: _family_fixed(family) for family in _FAMILIES}
    fixed = sorted(family for family, state in states.items() if state)
    if fixed and any(state is False for state in states.values()):
        return (f"upstream hands seq_idx / cu_seqlens on in {', '.join(fixed)} only: the record "
                "needs an update")
    return None


# ----- the record ----------------------------------------------------------------------------

# (family, "Class.attribute", wrapper, versions, params): the signature of every release, 5.0.0rc0 -
# 5.24.0 (read from each wheel and measured at run time: 5.13.0 - 5.15.1 hide the mixers'
# signature behind accelerate's force_accelerate_hooks; the comment names the releases).
# "_mixer_a": the mixer up to 5.14 (cuda_kernels_forward / torch_forward); "_mixer": from 5.15
# (module-level kernels, `fixed=`).
_SHAPES = (
    # 5.3.0
    ("nemotron_h", "NemotronHBlock.forward", "_layer", ">=5.3.0.dev0,<5.4.0.dev0",
     ("self", "hidden_states", "past_key_values", "cache_position", "attention_mask",
      "position_ids", "use_cache", "kwargs")),
    # 5.4.0 - 5.23.0
    ("nemotron_h", "NemotronHBlock.forward", "_layer", ">=5.4.0.dev0,<5.24.0.dev0",
     ("self", "hidden_states", "past_key_values", "attention_mask", "position_ids", "use_cache",
      "kwargs")),
    # 5.24.0
    ("nemotron_h", "NemotronHBlock.forward", "_layer", ">=5.24.0.dev0",
     ("self", "hidden_states", "cache", "attention_mask", "position_ids", "use_cache", "kwargs")),
    # 5.3.0
    ("nemotron_h", "NemotronHMamba2Mixer.forward", "_mixer_a", ">=5.3.0.dev0,<5.4.0.dev0",
     ("self", "hidden_states", "cache_params", "attention_mask")),
    # 5.4.0 - 5.12.1
    ("nemotron_h", "NemotronHMamba2Mixer.forward", "_mixer_a", ">=5.4.0.dev0,<5.13.0.dev0",
     ("self", "hidden_states", "cache_params", "attention_mask", "kwargs")),
    # 5.13.0 - 5.14.1
    ("nemotron_h", "NemotronHMamba2Mixer.forward", "_mixer_a", ">=5.13.0.dev0,<5.15.0.dev0",
     ("self", "args", "kwargs")),
    # 5.15.0 - 5.15.1
    ("nemotron_h", "NemotronHMamba2Mixer.forward", "_mixer", ">=5.15.0.dev0,<5.16.0.dev0",
     ("self", "args", "kwargs")),
    # 5.16.0 - 5.23.0
    ("nemotron_h", "NemotronHMamba2Mixer.forward", "_mixer", ">=5.16.0.dev0,<5.24.0.dev0",
     ("self", "hidden_states", "cache_params", "attention_mask", "kwargs")),
    # 5.24.0
    ("nemotron_h", "NemotronHMamba2Mixer.forward", "_mixer", ">=5.24.0.dev0",
     ("self", "hidden_states", "cache", "attention_mask", "kwargs")),
    # 5.0.0rc0 - 5.3.0
    ("bamba", "BambaDecoderLayer.forward", "_layer", ">=5.0.0rc0,<5.4.0.dev0",
     ("self", "hidden_states", "attention_mask", "position_ids", "past_key_values",
      "output_attentions", "use_cache", "cache_position", "position_embeddings", "kwargs")),
    # 5.4.0 - 5.23.0
    ("bamba", "BambaDecoderLayer.forward", "_layer", ">=5.4.0.dev0,<5.24.0.dev0",
     ("self", "hidden_states", "attention_mask", "position_ids", "past_key_values", "use_cache",
      "position_embeddings", "kwargs")),
    # 5.24.0
    ("bamba", "BambaDecoderLayer.forward", "_layer", ">=5.24.0.dev0",
     ("self", "hidden_states", "attention_mask", "position_ids", "cache", "use_cache",
      "position_embeddings", "kwargs")),
    # 5.0.0rc0 - 5.3.0
    ("bamba", "BambaMixer.forward", "_mixer_a", ">=5.0.0rc0,<5.4.0.dev0",
     ("self", "hidden_states", "cache_params", "cache_position", "attention_mask", "seq_idx",
      "kwargs")),
    # 5.4.0 - 5.12.1
    ("bamba", "BambaMixer.forward", "_mixer_a", ">=5.4.0.dev0,<5.13.0.dev0",
     ("self", "hidden_states", "cache_params", "attention_mask", "seq_idx", "kwargs")),
    # 5.13.0 - 5.14.1
    ("bamba", "BambaMixer.forward", "_mixer_a", ">=5.13.0.dev0,<5.15.0.dev0",
     ("self", "args", "kwargs")),
    # 5.15.0 - 5.15.1
    ("bamba", "BambaMixer.forward", "_mixer", ">=5.15.0.dev0,<5.16.0.dev0",
     ("self", "args", "kwargs")),
    # 5.16.0 - 5.23.0
    ("bamba", "BambaMixer.forward", "_mixer", ">=5.16.0.dev0,<5.24.0.dev0",
     ("self", "hidden_states", "cache_params", "attention_mask", "kwargs")),
    # 5.24.0
    ("bamba", "BambaMixer.forward", "_mixer", ">=5.24.0.dev0",
     ("self", "hidden_states", "cache", "attention_mask", "kwargs")),
    # 5.0.0rc0 - 5.1.0
    ("bamba", "BambaModel._update_causal_mask", "_old_mask", ">=5.0.0rc0,<5.2.0.dev0",
     ("self", "attention_mask", "input_tensor", "cache_position", "past_key_values",
      "output_attentions")),
    # 5.0.0rc0 - 5.3.0
    ("granitemoehybrid", "GraniteMoeHybridDecoderLayer.forward", "_granite_layer",
     ">=5.0.0rc0,<5.4.0.dev0",
     ("self", "hidden_states", "attention_mask", "past_key_values", "use_cache",
      "cache_position", "position_embeddings", "kwargs")),
    # 5.4.0 - 5.23.0
    ("granitemoehybrid", "GraniteMoeHybridDecoderLayer.forward", "_granite_layer",
     ">=5.4.0.dev0,<5.24.0.dev0",
     ("self", "hidden_states", "attention_mask", "past_key_values", "use_cache",
      "position_embeddings", "kwargs")),
    # 5.24.0
    ("granitemoehybrid", "GraniteMoeHybridDecoderLayer.forward", "_granite_layer",
     ">=5.24.0.dev0",
     ("self", "hidden_states", "attention_mask", "cache", "use_cache", "position_embeddings",
      "kwargs")),
    # 5.0.0rc0 - 5.3.0
    ("granitemoehybrid", "GraniteMoeHybridMambaLayer.forward", "_mixer_a", ">=5.0.0rc0,<5.4.0.dev0",
     ("self", "hidden_states", "cache_params", "cache_position", "attention_mask", "seq_idx",
      "kwargs")),
    # 5.4.0 - 5.12.1
    ("granitemoehybrid", "GraniteMoeHybridMambaLayer.forward", "_mixer_a", ">=5.4.0.dev0,<5.13.0.dev0",
     ("self", "hidden_states", "cache_params", "attention_mask", "seq_idx", "kwargs")),
    # 5.13.0 - 5.14.1
    ("granitemoehybrid", "GraniteMoeHybridMambaLayer.forward", "_mixer_a", ">=5.13.0.dev0,<5.15.0.dev0",
     ("self", "args", "kwargs")),
    # 5.15.0 - 5.15.1
    ("granitemoehybrid", "GraniteMoeHybridMambaLayer.forward", "_mixer", ">=5.15.0.dev0,<5.16.0.dev0",
     ("self", "args", "kwargs")),
    # 5.16.0 - 5.23.0
    ("granitemoehybrid", "GraniteMoeHybridMambaLayer.forward", "_mixer", ">=5.16.0.dev0,<5.24.0.dev0",
     ("self", "hidden_states", "cache_params", "attention_mask", "kwargs")),
    # 5.24.0
    ("granitemoehybrid", "GraniteMoeHybridMambaLayer.forward", "_mixer", ">=5.24.0.dev0",
     ("self", "hidden_states", "cache", "attention_mask", "kwargs")),
    # 5.0.0rc0 - 5.3.0
    ("falcon_h1", "FalconH1DecoderLayer.forward", "_falcon_layer", ">=5.0.0rc0,<5.4.0.dev0",
     ("self", "hidden_states", "attention_mask", "mamba_attention_mask", "position_ids",
      "past_key_values", "output_attentions", "use_cache", "cache_position",
      "position_embeddings", "kwargs")),
    # 5.4.0 - 5.23.0
    ("falcon_h1", "FalconH1DecoderLayer.forward", "_falcon_layer", ">=5.4.0.dev0,<5.24.0.dev0",
     ("self", "hidden_states", "attention_mask", "mamba_attention_mask", "position_ids",
      "past_key_values", "use_cache", "position_embeddings", "kwargs")),
    # 5.24.0
    ("falcon_h1", "FalconH1DecoderLayer.forward", "_falcon_layer", ">=5.24.0.dev0",
     ("self", "hidden_states", "attention_mask", "mamba_attention_mask", "position_ids",
      "cache", "use_cache", "position_embeddings", "kwargs")),
    # 5.0.0rc0 - 5.3.0
    ("falcon_h1", "FalconH1Mixer.forward", "_mixer_a", ">=5.0.0rc0,<5.4.0.dev0",
     ("self", "hidden_states", "cache_params", "cache_position", "attention_mask")),
    # 5.4.0 - 5.12.1
    ("falcon_h1", "FalconH1Mixer.forward", "_mixer_a", ">=5.4.0.dev0,<5.13.0.dev0",
     ("self", "hidden_states", "cache_params", "attention_mask", "kwargs")),
    # 5.13.0 - 5.14.1
    ("falcon_h1", "FalconH1Mixer.forward", "_mixer_a", ">=5.13.0.dev0,<5.15.0.dev0",
     ("self", "args", "kwargs")),
    # 5.15.0 - 5.15.1
    ("falcon_h1", "FalconH1Mixer.forward", "_mixer", ">=5.15.0.dev0,<5.16.0.dev0",
     ("self", "args", "kwargs")),
    # 5.16.0 - 5.23.0
    ("falcon_h1", "FalconH1Mixer.forward", "_mixer", ">=5.16.0.dev0,<5.24.0.dev0",
     ("self", "hidden_states", "cache_params", "attention_mask", "kwargs")),
    # 5.24.0
    ("falcon_h1", "FalconH1Mixer.forward", "_mixer", ">=5.24.0.dev0",
     ("self", "hidden_states", "cache", "attention_mask", "kwargs")),
    # 5.0.0rc0 - 5.1.0
    ("falcon_h1", "FalconH1Model._update_causal_mask", "_old_mask", ">=5.0.0rc0,<5.2.0.dev0",
     ("self", "attention_mask", "input_tensor", "cache_position", "past_key_values",
      "output_attentions")),
    # every release (its parameters change often: check= asks for position_ids only)
    ("granitemoehybrid", "create_causal_mask", "_granite_mask", ">=5.0.0rc0", None),
    # every release with the model: the wrappers read attention_mask / position_ids by name
    ("nemotron_h", "NemotronHModel.forward", "_model", ">=5.3.0.dev0", None),
    ("bamba", "BambaModel.forward", "_model", ">=5.0.0rc0", None),
    ("granitemoehybrid", "GraniteMoeHybridModel.forward", "_granite_model", ">=5.0.0rc0", None),
    ("falcon_h1", "FalconH1Model.forward", "_model", ">=5.0.0rc0", None),
)
def _mask_has_position_ids(original):
    """`check=` of GraniteMoeHybrid's create_causal_mask (its parameters change often): it must take
    position_ids."""
    import inspect

    if "position_ids" not in inspect.signature(original).parameters:
        return "create_causal_mask takes no position_ids"
    return None


def _model_takes_boundaries(original):
    from compat_patches.core.source import missing_parameters

    return missing_parameters(original, ("attention_mask", "position_ids"))


_MIXER_CLASSES = frozenset(attribute.split(".")[0] for _, attribute, wrapper, _, _ in _SHAPES
                           if wrapper in ("_mixer", "_mixer_a"))


def _targets():
    wrappers = {"_layer": _layer, "_falcon_layer": _falcon_layer, "_granite_layer": _granite_layer,
                "_granite_model": _granite_model, "_granite_mask": _granite_mask, "_mixer": _mixer,
                "_mixer_a": _mixer, "_model": _model, "_old_mask": _old_mask}
    targets = []
    for family, attribute, wrapper, versions, params in _SHAPES:
        extra = {}
        if attribute == "create_causal_mask":
            extra["check"] = _mask_has_position_ids
        elif wrapper in ("_model", "_granite_model"):
            extra["check"] = _model_takes_boundaries
        elif wrapper == "_mixer":  # >= 5.15 (shape B); "_mixer_a" is the same wrapper before
            extra["fixed"] = _fixed_everywhere
            extra["check"] = _fixed_partly
        targets.append(Target(f"{_module(family)}:{attribute}", wrapper=wrappers[wrapper], params=params,
                              versions=versions, **extra))
    return tuple(targets)


_REPLACES = Replaces(
    symbols=tuple(dict.fromkeys(
        # not the module-level create_causal_mask (GraniteMoeHybrid's copy of the generic mask
        # function: hand patches of that name are other mask features)
        [f"{_module(family)}:{attribute}" for family, attribute, _, _, _ in _SHAPES if "." in attribute]
        + [f"{_module(family)}:{mixer}.{method}"
           for family, mixer in (("nemotron_h", "NemotronHMamba2Mixer"), ("falcon_h1", "FalconH1Mixer"),
                                 ("bamba", "BambaMixer"),
                                 ("granitemoehybrid", "GraniteMoeHybridMambaLayer"))
           for method in ("cuda_kernels_forward", "torch_forward")])),
    copies=(
        Copy("PrimeIntellect-ai/prime-rl", "src/prime_rl/trainer/models/nemotron_h/modeling_nemotron_h.py",
             commit="559b44772e47", inventory=42,
             what="its own NemotronH modeling with the Mamba2 mixer's `seq_idx` threaded from packed "
                  "boundaries (CUDA kernels only)."),
        Copy("axolotl-ai-cloud/axolotl", "src/axolotl/monkeypatch/models/nemotron_h/modeling.py",
             "patch_nemotron_h_modeling_packing", commit="067b021c8b87", inventory=63,
             what="replaces `NemotronHMamba2Mixer.cuda_kernels_forward` and `.forward` and "
                  "`NemotronHBlock.forward` with copies that derive `seq_idx` from `position_ids` "
                  "(`mamba_utils.get_seq_idx`); raises without `causal_conv1d` and leaks on the torch "
                  "path."),
        Copy("axolotl-ai-cloud/axolotl", "src/axolotl/monkeypatch/models/falcon_h1/modeling.py",
             "patch_falcon_h1_modeling_packing", commit="067b021c8b87", inventory=64,
             what="replaces `FalconH1Mixer.cuda_kernels_forward` / `.forward` and "
                  "`FalconH1DecoderLayer.forward` the same way; raises on the torch path (\"requires "
                  "the CUDA fast path\")."),
        Copy("axolotl-ai-cloud/axolotl", "src/axolotl/monkeypatch/models/granitemoehybrid/modeling.py",
             "patch_granitemoehybrid_modeling_packing", commit="067b021c8b87", inventory=65,
             what="injects `seq_idx` into `GraniteMoeHybridModel.forward` "
                  "(`mamba_utils.patch_model_forward_seq_idx`) and forces the slow CUDA path; the "
                  "attention mask still ignores `position_ids`."),
    ),
    note="Adopting this record, a user deletes those modules and their calls (axolotl: "
         "`patch_nemotron_h_modeling_packing`, `patch_falcon_h1_modeling_packing`, "
         "`patch_granitemoehybrid_modeling_packing`; prime-rl: the seq_idx plumbing of its NemotronH "
         "copy) and keeps the rest (axolotl's context-parallel scan correction, "
         "`wrap_mamba_scan_for_cp`, is a separate matter). Unlike them the record works on CPU and on "
         "GPU without the kernels, derives the boundaries once per forward for all layers, keeps "
         "gradient checkpointing on, covers GraniteMoeHybrid's attention, replaces no forward "
         "wholesale (each wrapper calls the original), and is gated and drift-checked per release.",
)

PATCH = Patch(
    name=NAME,
    summary="keep packed samples (position_ids restarting at 0) apart in the Mamba2 layers of "
            "NemotronH, Bamba, GraniteMoeHybrid and Falcon-H1, and in their attention (GraniteMoeHybrid's "
            "always, every model's next to an end-padded 2-D mask)",
    upstream="",  # not reported or fixed upstream (the docs page names what was searched)
    affected={"transformers": ">=5.0.0rc0", "torch": ">=2.0"},
    verified_through={"transformers": "5.25.0"},
    fixed_in=None,
    targets=_targets(),
    notes="Packed rows need use_cache=False (transformers builds the block-diagonal attention mask only "
          "without a cache, for every model; said once per model class); a packed prefill leaves no "
          "Mamba state in a cache. Under torch.compile every wrapped call is a graph break "
          "(fullgraph=True raises). The "
          "CUDA-kernel route (seq_idx instead of per-sample runs) is confirmed on a GPU from 5.15 only "
          "(benchmarks/results/packed_mamba2_gpu.md); "
          "GraniteMoeHybrid attention under flash_attention_2 is not covered.",
    replaces=_REPLACES,
)
