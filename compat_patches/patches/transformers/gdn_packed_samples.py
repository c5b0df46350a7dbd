"""transformers-gdn-packed-samples: keep packed samples apart in the GatedDeltaNet layers.

Padding-free packing puts several samples in one row, ``position_ids`` restarting at 0 for each
(verl, ms-swift, TRL, LlamaFactory, axolotl). In Qwen3.5, Qwen3.5-MoE and Qwen3-Next the
GatedDeltaNet (linear-attention) layers never see those boundaries: the causal conv1d and the
recurrent state run straight across them, so every sample after the first is computed with its
neighbour's state, in the logits and in the gradients. No release keeps them apart (measured on
every 5.x release that has the models; upstream PRs 44867 and 46859 were closed unmerged).

The patch uses the shared mechanism of :mod:`compat_patches.packed_samples`:

* ``<Model>DecoderLayer.forward`` puts the layer's ``position_ids`` (3-D mRoPE ids below 5.4:
  their first row), its 2-D ``attention_mask`` and, for a one-row batch, ``cu_seq_lens_q`` into
  ``packed_samples.carrying(...)`` around the original layer (``packed_samples.call_layer``, which
  also keeps gradient checkpointing on 5.23+, where a wrapped layer forward would stop
  checkpointing). Nothing is computed there, and gradient-checkpoint recomputation carries the same
  boundaries, so backward sees them.
* ``<Model>GatedDeltaNet.forward`` asks ``packed_samples.current(hidden_states)``. None (one sample,
  no position_ids, left padding) calls the original, untouched. A packing keeps the samples apart:
  on CUDA with flash-linear-attention importable, one varlen pass over the batch flattened to one
  row, ``cu_seqlens`` given to fla's causal conv1d AND its ``chunk_gated_delta_rule``; otherwise
  (CPU, no fla) the original forward on each sample alone (``Packing.split_run``), so every
  release's own math runs.
* A cache (generation) is left alone: the recurrent and conv state a cache keeps belong to one
  sequence per row, a packed row has none to continue. transformers builds a cache whenever
  ``use_cache`` is on (the config default), so training forwards pass ``use_cache=False`` (every
  trainer above does); a packed input with a cache warns once.

Targets: one per model, class and signature shape (``cache_position`` up to 5.3, ``**kwargs`` on the
mixer from 5.9, ``cache`` instead of ``cache_params`` / ``past_key_values`` from 5.24). A source
fingerprint (``check``) reports drift when the mixer no longer computes what the varlen path
computes; another (``fixed``) reports ``not-needed`` when a release's mixer takes the boundaries
itself (derives them from ``position_ids`` or hands them to its conv), so the range stays open.
"""

from compat_patches.core import Patch, Target

NAME = "transformers-gdn-packed-samples"

# model module, class prefix, first release with the model
MODELS = (
    ("qwen3_next", "Qwen3Next", "5.0.0rc0"),
    ("qwen3_5", "Qwen3_5", "5.2.0.dev0"),
    ("qwen3_5_moe", "Qwen3_5Moe", "5.2.0.dev0"),
)

# Keyword arguments that describe a packed (varlen) batch: dropped before the original runs on one
# sample (5.20+'s torch fallback raises on any cu_seqlens, and one sample needs none).
_VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "cu_seqlens",
                "seq_idx")
_CACHE_NAMES = ("cache", "cache_params", "past_key_values")

# kernels: None (not looked up yet), False (fla missing) or make_kernels(...); any_device: use them
# off CUDA too (tests inject torch reference kernels to check the varlen path on CPU)
_state = {"kernels": None, "any_device": False, "warned": False}


# --- the decoder layer: carry the boundaries -------------------------------------------------------

def _decoder_layer(wrapped, instance, args, kwargs):
    """``forward(self, hidden_states, position_embeddings, attention_mask, position_ids, ...)``.

    Every layer, attention layers included, goes through ``call_layer``: from 5.23 a wrapped layer
    forward checkpoints only through it."""
    from compat_patches import packed_samples

    def named(name, index):
        return kwargs[name] if name in kwargs else (args[index] if len(args) > index else None)

    if getattr(instance, "linear_attn", None) is None:  # a full-attention layer: nothing to carry
        return packed_samples.call_layer(wrapped, instance, args, kwargs)
    return packed_samples.call_layer(wrapped, instance, args, kwargs, position_ids=named("position_ids", 3),
                                     attention_mask=named("attention_mask", 2),
                                     cu_seq_lens=kwargs.get("cu_seq_lens_q"))


# --- the mixer: keep the samples apart ---------------------------------------------------------------

def _named(params, args, kwargs):
    """The call as keywords (`params` without self / **kwargs)."""
    named = dict(zip(params, args))
    named.update(kwargs)
    return named


def _cache_of(named):
    for name in _CACHE_NAMES:
        if named.get(name) is not None:
            return named[name]
    return None


def _warn_cache_once():
    if not _state["warned"]:
        _state["warned"] = True
        import warnings

        warnings.warn(f"{NAME}: packed samples reached a GatedDeltaNet layer together with a cache "
                      "(use_cache is on): left unpatched, the samples are NOT kept apart. Pass "
                      "use_cache=False for training forwards.", RuntimeWarning, stacklevel=3)


def _mask_2d(attention_mask, hidden_states):
    if attention_mask is not None and attention_mask.dim() == 2 \
            and tuple(attention_mask.shape) == tuple(hidden_states.shape[:2]):
        return attention_mask
    return None


def _zero_padding(hidden_states, mask):
    """Padding tokens as zeros (what ``apply_mask_to_padding_states`` does for a batch): a left pad
    inside a sample's span then contributes nothing to its conv or state."""
    if mask is None or bool(mask.all()):
        return hidden_states
    return (hidden_states * mask[:, :, None].to(hidden_states.dtype)).to(hidden_states.dtype)


def _mixer_wrapper(params):
    params = tuple(p for p in params[1:] if p != "kwargs")

    def wrapper(wrapped, instance, args, kwargs):
        named = _named(params, args, kwargs)
        hidden_states = named.get("hidden_states")
        if hidden_states is None or hidden_states.dim() != 3:
            return wrapped(*args, **kwargs)
        from compat_patches import packed_samples

        packing = packed_samples.current(hidden_states)
        if packing is None:
            if named.get("cu_seq_lens_q") is not None:
                # one sample (or none carried): a cu_seq_lens covering the whole row says nothing,
                # and 5.20+'s torch fallback raises on it; anything else is left as it was
                cu = named["cu_seq_lens_q"]
                if cu.numel() == 2 and int(cu[0]) == 0 and int(cu[-1]) == hidden_states.shape[1] \
                        and hidden_states.shape[0] == 1:
                    kwargs = {k: v for k, v in kwargs.items() if k not in _VARLEN_KEYS}
            return wrapped(*args, **kwargs)
        if _cache_of(named) is not None:
            _warn_cache_once()
            return wrapped(*args, **kwargs)
        mask = _mask_2d(named.get("attention_mask"), hidden_states)
        hidden_states = _zero_padding(hidden_states, mask)
        kernels = _kernels() if hidden_states.is_cuda or _state["any_device"] else None
        if kernels is not None:
            return varlen_forward(instance, hidden_states, packing, kernels)
        rest = {k: v for k, v in named.items()
                if k not in _VARLEN_KEYS and k not in _CACHE_NAMES and k not in ("hidden_states", "attention_mask")}
        if mask is None:
            rest["attention_mask"] = named.get("attention_mask")

        def one_sample(hidden, attention_mask=None):
            if mask is not None:
                rest["attention_mask"] = attention_mask
            return wrapped(hidden, **rest)

        return packing.split_run(one_sample, hidden_states, {"attention_mask": mask})

    return wrapper


# --- the varlen path (flash-linear-attention) --------------------------------------------------------

def _kernels():
    """(chunk_gated_delta_rule, causal_conv1d, options) from flash-linear-attention, or None."""
    kernels = _state["kernels"]
    if kernels is None:
        kernels = _state["kernels"] = _load_kernels() or False
    return kernels or None


def _load_kernels():
    import importlib
    import inspect

    try:
        rule = importlib.import_module("fla.ops.gated_delta_rule").chunk_gated_delta_rule
    except Exception:
        return None
    conv = None
    for module in ("fla.modules.causal_conv1d", "fla.modules.convolution", "fla.modules.conv"):
        try:
            conv = getattr(importlib.import_module(module), "causal_conv1d", None)
        except Exception:
            continue
        if callable(conv):
            break
    if not callable(conv):
        return None
    return make_kernels(rule, conv, gva="GVA" in (rule.__doc__ or ""),
                        cpu_copy="cu_seqlens_cpu" in inspect.signature(rule).parameters
                        and "cu_seqlens_cpu" in inspect.signature(conv).parameters)


def make_kernels(rule, conv, gva=False, cpu_copy=False):
    """The kernel bundle `varlen_forward` uses: fla's ``chunk_gated_delta_rule(q, k, v, g=, beta=,
    initial_state=, output_final_state=, use_qk_l2norm_in_kernel=, cu_seqlens=)`` and
    ``causal_conv1d(x=, weight=, bias=, activation=, cu_seqlens=) -> (y, state)`` on ``[1, T, D]``.
    `gva`: the rule takes fewer q/k heads than v heads itself; `cpu_copy`: both take ``cu_seqlens_cpu``."""
    return (rule, conv, {"gva": gva, "cpu_copy": cpu_copy})


def varlen_forward(module, hidden_states, packing, kernels):
    """The GatedDeltaNet forward without a cache, every sample of `packing` apart, in one varlen pass
    (the batch flattened to one row). Mirrors the releases' own forward: same projections, conv,
    gates, delta rule (q/k l2-normed in the kernel), gated norm and output projection."""
    import torch
    import torch.nn.functional as F

    rule, conv, options = kernels
    batch_size, seq_len, _ = hidden_states.shape
    tokens = batch_size * seq_len
    x = hidden_states.reshape(1, tokens, hidden_states.shape[-1])
    cu_cpu = packing.cu_seqlens().to(torch.long)
    cu = cu_cpu.to(x.device)
    extra = {"cu_seqlens_cpu": cu_cpu} if options.get("cpu_copy") else {}

    if hasattr(module, "in_proj_qkvz"):  # Qwen3-Next
        query, key, value, z, b, a = module.fix_query_key_value_ordering(module.in_proj_qkvz(x),
                                                                         module.in_proj_ba(x))
        query, key, value = (t.reshape(1, tokens, -1) for t in (query, key, value))
        mixed_qkv = torch.cat((query, key, value), dim=-1)
    else:  # Qwen3.5, Qwen3.5-MoE
        mixed_qkv = module.in_proj_qkv(x)
        z = module.in_proj_z(x).reshape(1, tokens, -1, module.head_v_dim)
        b = module.in_proj_b(x)
        a = module.in_proj_a(x)

    mixed_qkv, _ = conv(x=mixed_qkv.contiguous(), weight=module.conv1d.weight.squeeze(1),
                        bias=module.conv1d.bias, activation=module.activation, cu_seqlens=cu, **extra)
    query, key, value = torch.split(mixed_qkv, [module.key_dim, module.key_dim, module.value_dim], dim=-1)
    query = query.reshape(1, tokens, -1, module.head_k_dim)
    key = key.reshape(1, tokens, -1, module.head_k_dim)
    value = value.reshape(1, tokens, -1, module.head_v_dim)

    beta = b.sigmoid()
    # If the model is loaded in fp16, without the .float() here, A might be -inf (as upstream)
    g = -module.A_log.float().exp() * F.softplus(a.float() + module.dt_bias)
    ratio = module.num_v_heads // module.num_k_heads
    if ratio > 1 and not options.get("gva"):
        query = query.repeat_interleave(ratio, dim=2)
        key = key.repeat_interleave(ratio, dim=2)

    core, _ = rule(query, key, value, g=g, beta=beta, initial_state=None, output_final_state=False,
                   use_qk_l2norm_in_kernel=True, cu_seqlens=cu, **extra)
    core = module.norm(core.reshape(-1, module.head_v_dim), z.reshape(-1, module.head_v_dim))
    return module.out_proj(core.reshape(batch_size, seq_len, -1))


# --- fingerprints ------------------------------------------------------------------------------------

_NEEDS = {
    "Qwen3Next": ("in_proj_qkvz(", "in_proj_ba(", "fix_query_key_value_ordering(", "A_log", "dt_bias",
                  "softplus", "sigmoid", "use_qk_l2norm_in_kernel=True", "self.norm(", "out_proj("),
    "split": ("in_proj_qkv(", "in_proj_z(", "in_proj_b(", "in_proj_a(", "A_log", "dt_bias",
              "softplus", "sigmoid", "use_qk_l2norm_in_kernel=True", "self.norm(", "out_proj("),
}


def _real(function):
    """The function a decorator wraps: ``__wrapped__``, or, for 5.13 - 5.15's
    ``force_accelerate_hooks`` (no functools.wraps), the ``forward`` held in its closure."""
    import inspect

    function = inspect.unwrap(function)
    for cell in getattr(function, "__closure__", None) or ():
        inner = cell.cell_contents
        if inspect.isfunction(inner) and inner.__name__ == "forward" and function.__name__ != "forward":
            return _real(inner)
    return function


def _source(function):
    import inspect

    return inspect.getsource(_real(function))


def _mixer_check(prefix):
    needs = _NEEDS["Qwen3Next" if prefix == "Qwen3Next" else "split"]

    def check(original):
        source = _source(original)
        missing = [token for token in needs if token not in source]
        if missing:
            return (f"the GatedDeltaNet forward no longer contains {missing}: the varlen path "
                    "mirrors a forward this release does not have")
        return None

    return check


_PASSED_ON = r"(?:None|kwargs\s*\.\s*(?:get|pop)\s*\([^()]*\)|kwargs\s*\[[^\]]*\])"


def carries_boundaries(source):
    """Why a GatedDeltaNet forward's source already keeps packed samples apart, or None: it reads
    position_ids, or hands its causal conv boundaries it derived itself (``seq_idx=`` / ``cu_seqlens=``
    other than None or a caller's keyword passed on: 5.9 - 5.19 pass ``kwargs.get("seq_idx")``, which
    no trainer sets and the torch conv ignores)."""
    import re

    code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
    if re.search(r"\bposition_ids\b", code):
        return "its forward reads position_ids"
    for call in re.finditer(r"conv1d(?:_fn)?\s*\(", code):
        depth, end = 0, call.end() - 1
        for end in range(call.end() - 1, len(code)):
            depth += {"(": 1, ")": -1}.get(code[end], 0)
            if depth == 0:
                break
        arguments = code[call.end():end]
        for name in ("seq_idx", "cu_seqlens"):
            for found in re.finditer(rf"\b{name}\s*=\s*", arguments):
                if not re.match(_PASSED_ON + r"\s*(?:,|$)", arguments[found.end():].strip()):
                    return f"its forward hands {name} to the conv"
    return None


def _mixer_fixed(original):
    return carries_boundaries(_source(original))


# --- targets -----------------------------------------------------------------------------------------

_LAYER_PARAMS = (
    ("<5.4.0.dev0", ("self", "hidden_states", "position_embeddings", "attention_mask", "position_ids",
                     "past_key_values", "cache_position", "kwargs")),
    (">=5.4.0.dev0,<5.24.0.dev0", ("self", "hidden_states", "position_embeddings", "attention_mask",
                                   "position_ids", "past_key_values", "kwargs")),
    (">=5.24.0.dev0", ("self", "hidden_states", "position_embeddings", "attention_mask", "position_ids",
                       "cache", "kwargs")),
)
_MIXER_5_9 = ("self", "hidden_states", "cache_params", "attention_mask", "kwargs")
# (versions, the parameters the drift check expects, the parameters the forward really takes)
_MIXER_PARAMS = (
    ("<5.4.0.dev0", ("self", "hidden_states", "cache_params", "cache_position", "attention_mask"), None),
    (">=5.4.0.dev0,<5.9.0.dev0", ("self", "hidden_states", "cache_params", "attention_mask"), None),
    (">=5.9.0.dev0,<5.13.0.dev0", _MIXER_5_9, None),
    # 5.13 - 5.15: force_accelerate_hooks wraps forward without functools.wraps
    (">=5.13.0.dev0,<5.16.0.dev0", ("self", "args", "kwargs"), _MIXER_5_9),
    (">=5.16.0.dev0,<5.24.0.dev0", _MIXER_5_9, None),
    (">=5.24.0.dev0", ("self", "hidden_states", "cache", "attention_mask", "kwargs"), None),
)


def _targets():
    targets = []
    for module, prefix, first in MODELS:
        path = f"transformers.models.{module}.modeling_{module}:{prefix}"
        for versions, params in _LAYER_PARAMS:
            targets.append(Target(path + "DecoderLayer.forward", wrapper=_decoder_layer, params=params,
                                  versions=f">={first},{versions}"))
        for versions, params, real in _MIXER_PARAMS:
            targets.append(Target(path + "GatedDeltaNet.forward", wrapper=_mixer_wrapper(real or params),
                                  params=params, check=_mixer_check(prefix), fixed=_mixer_fixed,
                                  versions=f">={first},{versions}"))
    return tuple(targets)


PATCH = Patch(
    name=NAME,
    summary="keep padding-free packed samples (position_ids restarting at 0, cu_seq_lens_q) apart in "
            "the GatedDeltaNet layers of Qwen3.5, Qwen3.5-MoE and Qwen3-Next: varlen fla kernels on "
            "GPU, one sample at a time in torch",
    upstream="https://github.com/huggingface/transformers/issues/46093",
    # Measured on every release with the models: 5.0.0rc0 (Qwen3-Next) / 5.2.0 (Qwen3.5) through 5.24.0,
    # all affected. Open upper end: a release whose mixer takes the boundaries itself reports
    # not-needed through the `fixed` fingerprint. The targets live in torch modeling code.
    affected={"transformers": ">=5.0.0rc0", "torch": ">=2.0"},
    targets=_targets(),
    differences="",
    notes="Acts only without a cache (pass use_cache=False in training; a packed input with a cache "
          "warns once). Qwen3.5 5.3+ with 3-row mRoPE position_ids: the model builds its attention "
          "mask without text positions and from 5.4 hands its layers none (only 4-row ids carry "
          "them): pass 4-row ids, or cu_seq_lens_q (5.9+ forwards it to the layers).",
)
