"""transformers-gdn-packed-samples: keep packed samples apart in the GatedDeltaNet layers.

Padding-free packing puts several samples in one row, ``position_ids`` restarting at 0 for each
(verl, ms-swift, TRL, LlamaFactory, axolotl). In Qwen3.5, Qwen3.5-MoE, Qwen3-Next, OLMo-Hybrid and
Lara-Mini the GatedDeltaNet (linear-attention) layers never see those boundaries: the causal conv1d
and the recurrent state run straight across them, so every sample after the first is computed with
its neighbour's state, in the logits and in the gradients. No release keeps them apart (measured on
every 5.x release that has the models; upstream PRs 44867 and 46859 were closed unmerged).

The patch uses the shared mechanism of :mod:`compat_patches.packed_samples`:

* ``<Model>.forward`` (``packed_samples.call_model``): one resolution of the boundaries for the
  forward's layers, and a packed batch's attention mask that pads only at the end (or nothing) is
  dropped, so transformers builds its block-diagonal causal mask from position_ids and the
  attention layers keep the samples apart too (with such a mask they would not).
* the decoder layer holding a GatedDeltaNet (``packed_samples.call_layer``): its ``position_ids``
  (3-D mRoPE ids below 5.4: their first row), its 2-D ``attention_mask`` and, for a one-row batch,
  ``cu_seq_lens_q`` are carried to the mixer, into gradient-checkpoint recomputation too, and
  checkpointing stays on (5.23+ checkpoints a layer only while nothing wraps its forward).
* ``<Model>GatedDeltaNet.forward`` asks ``packed_samples.current(hidden_states)``. None (one sample,
  no position_ids, left padding) calls the original, untouched. A packing keeps the samples apart:
  on CUDA with flash-linear-attention importable and a mixer laid out as Qwen3-Next's or Qwen3.5's,
  one varlen pass over the batch flattened to one row, ``cu_seqlens`` given to fla's causal conv1d
  AND its ``chunk_gated_delta_rule``; otherwise the original forward on each sample alone
  (``Packing.split_run``), so every release's own math runs.
* A cache (generation) is left alone: the recurrent and conv state a cache keeps belong to one
  sequence per row, a packed row has none to continue. transformers builds a cache whenever
  ``use_cache`` is on (the config default), so training forwards pass ``use_cache=False`` (every
  trainer above does); a packed input with a cache warns once per model class.

Targets are named per model, not per signature: the wrappers take the call's arguments by name,
and each target's ``check`` asks for the parameters they read and, for the mixer, a source
fingerprint of what the varlen path mirrors; ``fixed`` reports ``not-needed`` when a release's mixer
takes the boundaries itself (derives them from ``position_ids`` or hands them to its conv), so the
range stays open.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces

NAME = "transformers-gdn-packed-samples"

# (model folder, class prefix, its text model, the decoder layer holding the mixer, the mixer's
# layout, first release): the layout names what the varlen path mirrors ("separate": nothing, each
# sample alone on every device).
# Found by tools/audit.py, which names every GatedDeltaNet class of a release that is not here.
MODELS = (
    ("qwen3_next", "Qwen3Next", "Model", "DecoderLayer", "fused", "5.0.0rc0"),
    ("qwen3_5", "Qwen3_5", "TextModel", "DecoderLayer", "split", "5.2.0.dev0"),
    ("qwen3_5_moe", "Qwen3_5Moe", "TextModel", "DecoderLayer", "split", "5.2.0.dev0"),
    ("olmo_hybrid", "OlmoHybrid", "Model", "LinearAttentionDecoderLayer", "separate", "5.3.0.dev0"),
    ("lara_mini", "LaraMini", "Model", "DecoderLayer", "split", "5.24.0.dev0"),
)

# Keyword arguments that describe a packed (varlen) batch: dropped before the original runs on one
# sample (5.20+'s torch fallback raises on any cu_seqlens, and one sample needs none).
_VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "cu_seqlens",
                "seq_idx")
_CACHE_NAMES = ("cache", "cache_params", "past_key_values")

# kernels: None (not looked up yet), False (fla missing) or make_kernels(...); any_device: use them
# off CUDA too (tests inject torch reference kernels to check the varlen path on CPU)
_state = {"kernels": None, "any_device": False}


# --- the model and the decoder layer: carry the boundaries -----------------------------------------

def _model(wrapped, instance, args, kwargs):
    from compat_patches import packed_samples

    return packed_samples.call_model(NAME, wrapped, instance, args, kwargs)


def _decoder_layer(wrapped, instance, args, kwargs):
    """Every layer of the class goes through ``call_layer`` (from 5.23 a wrapped layer forward
    checkpoints only through it); a full-attention layer carries nothing."""
    from compat_patches import packed_samples

    mixer = getattr(instance, "linear_attn", None)
    if mixer is None:
        return packed_samples.call_layer(wrapped, instance, args, kwargs)
    named = _bind(wrapped, args, kwargs)
    return packed_samples.call_layer(wrapped, instance, args, kwargs, position_ids=named.get("position_ids"),
                                     attention_mask=named.get("attention_mask"),
                                     cu_seq_lens=named.get("cu_seq_lens_q"), record=NAME, mixer=mixer)


# --- the mixer: keep the samples apart ---------------------------------------------------------------

_signatures = {}


def _bind(wrapped, args, kwargs):
    """The call's arguments by name, bound to the real forward's signature (5.13 - 5.15 hide it
    behind a decorator without functools.wraps); ``**kwargs`` entries flattened in."""
    function = getattr(wrapped, "__func__", wrapped)
    signature = _signatures.get(function)
    if signature is None:
        import inspect

        signature = inspect.signature(_real(function))
        signature = _signatures[function] = signature.replace(
            parameters=tuple(signature.parameters.values())[1:])  # self
    named = dict(signature.bind(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind == parameter.VAR_KEYWORD and name in named:
            named.update(named.pop(name))
    return named


def _cache_of(named):
    for name in _CACHE_NAMES:
        if named.get(name) is not None:
            return named[name]
    return None


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


def _mixer(wrapped, instance, args, kwargs):
    from compat_patches import packed_samples

    packed_samples.reached()
    named = _bind(wrapped, args, kwargs)
    hidden_states = named.get("hidden_states")
    if hidden_states is None or hidden_states.dim() != 3 or _cache_of(named) is not None:
        return wrapped(*args, **kwargs)  # generation: one sequence per row (call_model warns)

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
    mask = _mask_2d(named.get("attention_mask"), hidden_states)
    hidden_states = _zero_padding(hidden_states, mask)
    kernels = _kernels() if (hidden_states.is_cuda or _state["any_device"]) and _mirrored(instance) else None
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


def _mirrored(module):
    """Whether `varlen_forward` mirrors this mixer (Qwen3-Next's fused or Qwen3.5's split layout)."""
    return hasattr(module, "in_proj_qkvz") or hasattr(module, "in_proj_qkv")


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

_NEEDS = {  # per layout: what the varlen path mirrors, or (separate) that it is a GatedDeltaNet
    "fused": ("in_proj_qkvz(", "in_proj_ba(", "fix_query_key_value_ordering(", "A_log", "dt_bias",
                  "softplus", "sigmoid", "use_qk_l2norm_in_kernel=True", "self.norm(", "out_proj("),
    "split": ("in_proj_qkv(", "in_proj_z(", "in_proj_b(", "in_proj_a(", "A_log", "dt_bias",
              "softplus", "sigmoid", "use_qk_l2norm_in_kernel=True", "self.norm(", "out_proj("),
    "separate": ("chunk_gated_delta_rule(",),
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


def _mixer_check(layout):
    needs = _NEEDS[layout]

    def check(original):
        source = _source(original)
        missing = [token for token in needs if token not in source]
        if missing:
            return (f"the GatedDeltaNet forward no longer contains {missing}: the patch was written "
                    "for a forward this release does not have")
        return _reads(original, ("hidden_states", "attention_mask"))

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
    for call in re.finditer(r"conv1d(?:_fn|_forward)?\s*\(", code):  # 5.25: causal_conv1d_forward
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


def _reads(original, names):
    """Drift: the parameters a wrapper reads by name are gone from the real signature."""
    from compat_patches.core.source import missing_parameters

    return missing_parameters(_real(original), names)


def _layer_check(original):
    return _reads(original, ("hidden_states", "attention_mask", "position_ids"))


# --- targets -----------------------------------------------------------------------------------------

def _model_check(original):
    return _reads(original, ("attention_mask", "position_ids"))


def _targets():
    targets = []
    for folder, prefix, model, layer, layout, first in MODELS:
        path = f"transformers.models.{folder}.modeling_{folder}:{prefix}"
        versions = f">={first}"
        targets += [
            Target(path + model + ".forward", wrapper=_model, check=_model_check, versions=versions),
            Target(path + layer + ".forward", wrapper=_decoder_layer, check=_layer_check, versions=versions),
            Target(path + "GatedDeltaNet.forward", wrapper=_mixer, check=_mixer_check(layout),
                   fixed=_mixer_fixed, versions=versions),
        ]
    return tuple(targets)


_TARGETS = _targets()

_REPLACES = Replaces(
    # the mixer and decoder-layer forwards: hand patches of the model forward are other features
    # (verl's Ulysses input slicing), so they are not looked for
    symbols=tuple(target.path for target in _TARGETS
                  if target.path.endswith(("GatedDeltaNet.forward", "DecoderLayer.forward"))),
    copies=(
        Copy("verl-project/verl", "verl/models/transformers/qwen3_5.py", "qwen3_5_gated_delta_net_forward",
             commit="1dda039b9c63", inventory=4,
             what="with `qwen3_5_decoder_layer_forward`, installed by "
                  "`verl/models/transformers/monkey_patch.py` (`Qwen3_5(Moe)GatedDeltaNet.forward`, "
                  "`Qwen3_5(Moe)DecoderLayer.forward`; verl PR 6660)."),
        Copy("verl-project/verl", "verl/models/transformers/qwen3_5.py", "qwen3_5_decoder_layer_forward",
             commit="1dda039b9c63", inventory=4, what="the decoder-layer half of the same patch."),
        Copy("modelscope/ms-swift", "swift/model/models/qwen.py",
             "_patch_qwen3_5_linear_attention_sequence_parallel", commit="3602360a5623",
             what="(PRs 9571, 9696) replaces `Qwen3_5(Moe)GatedDeltaNet.forward` with a padding-free / "
                  "sequence-parallel forward. The record replaces its packed-sample path; the "
                  "sequence-parallel path is ms-swift's own feature and stays."),
        Copy("hiyouga/LlamaFactory", "src/llamafactory/model/patcher.py", "patch_qwen3_5_forward_gpu",
             commit="ff6d4d12eeb0", inventory=49, what="(PR 10436; copied from axolotl, GPU only)."),
        Copy("axolotl-ai-cloud/axolotl", "src/axolotl/monkeypatch/models/qwen3_5/modeling.py",
             "patch_qwen3_5_modeling_packing", commit="067b021c8b87", inventory=66,
             what="with `patch_qwen3_5_moe_modeling_packing` (PR 3937): replaces both forwards whole, "
                  "raises without fla, derives `cu_seqlens` from the flattened `position_ids` (a padded "
                  "batch is read as packed)."),
        Copy("axolotl-ai-cloud/axolotl", "src/axolotl/monkeypatch/models/qwen3_5/modeling.py",
             "patch_qwen3_5_moe_modeling_packing", commit="067b021c8b87", inventory=66,
             what="the Qwen3.5-MoE call of the same patch."),
        Copy("axolotl-ai-cloud/axolotl", "src/axolotl/monkeypatch/models/qwen3_next/modeling.py",
             "patch_qwen3_next_modeling_packing", commit="067b021c8b87", inventory=67,
             what="the same for Qwen3-Next (`patch_qwen3_next_decoder_layer`, "
                  "`patch_qwen3_next_gateddelta_layer`)."),
        Copy("PrimeIntellect-ai/prime-rl", "src/prime_rl/trainer/model.py",
             "_patch_qwen3_5_linear_attn_varlen", commit="559b44772e47", inventory=41),
        Copy("NVIDIA-NeMo/Automodel",
             what="PR 2147: `Qwen3_5DecoderLayerWithPacking` (class swap) and `CPAwareGatedDeltaNet` "
                  "(its own GDN module, Qwen3.5 only)."),
    ),
    note="Not replaced: slime PR 1686 fixes its own Megatron linear-attention modules (not "
         "transformers').\n\n"
         "Adopting this record, a user deletes those modules and the calls that install them (verl's "
         "`monkey_patch.py` branch for `qwen3_5` / `qwen3_5_moe`, axolotl's "
         "`patch_qwen3_5_modeling_packing` / `patch_qwen3_5_moe_modeling_packing` / Qwen3-Next "
         "equivalents, LlamaFactory's `patch_qwen3_5_forward_gpu` call) and keeps passing "
         "`position_ids` (and `use_cache=False`) as before. Unlike them, the record covers all five "
         "models on every release 5.0.0rc0 - 5.25.0 with one mechanism, works without fla (CPU, AMD, "
         "no-GPU tests), keeps the release's own forward for unpacked input and the cache path, reads "
         "left padding and padded tails from the mask, takes `cu_seq_lens_q` where given, reports "
         "drift instead of silently replacing a changed forward, and reverts exactly.",
)

PATCH = Patch(
    name=NAME,
    summary="keep padding-free packed samples (position_ids restarting at 0, cu_seq_lens_q) apart in "
            "the GatedDeltaNet layers of Qwen3.5, Qwen3.5-MoE, Qwen3-Next, OLMo-Hybrid and Lara-Mini, and "
            "in their attention next to an end-padded 2-D mask: varlen fla kernels on GPU, one sample at "
            "a time in torch",
    upstream="https://github.com/huggingface/transformers/issues/46093",
    # Measured on every release with the models: 5.0.0rc0 (Qwen3-Next) / 5.2.0 (Qwen3.5) / 5.3.0
    # (OLMo-Hybrid) / 5.24.0 (Lara-Mini) through 5.25.0, all affected. Open upper end: a release whose
    # mixer takes the boundaries itself reports not-needed through the `fixed` fingerprint. The
    # targets live in torch modeling code.
    affected={"transformers": ">=5.0.0rc0", "torch": ">=2.0"},
    verified_through={"transformers": "5.25.0"},
    targets=_TARGETS,
    differences="",
    notes="Acts only without a cache (pass use_cache=False in training; a packed input with a cache "
          "warns once per model class). Under torch.compile every wrapped call is a graph break "
          "(fullgraph=True raises). Qwen3.5 5.3+ with 3-row mRoPE position_ids: the model builds its "
          "attention mask without text positions and from 5.4 hands its layers none (only 4-row ids "
          "carry them): pass 4-row ids, or cu_seq_lens_q (5.9+ forwards it to the layers).",
    replaces=_REPLACES,
)
