"""transformers-qwen3-5-moe-fused-save: Qwen3.5-MoE is saved with its experts fused, as it is stored.

Qwen3.5-MoE keeps each layer's experts fused (``mlp.experts.gate_up_proj [E, 2I, H]``,
``mlp.experts.down_proj [E, H, I]``), the layout of its hub checkpoints. ``conversion_mapping.py``
builds ``mapping["qwen3_5_moe_text"] = qwen3_5_text + qwen2_moe``: the Qwen2-MoE converters that merge
per-expert 2-D checkpoint weights into fused tensors. Loading a fused file never matches them, but
``revert_weight_conversion`` (``save_pretrained``, and trainers that build the HF-layout state dict
for a vLLM weight broadcast) reverses every converter of the mapping and so writes
``mlp.experts.{i}.gate_proj/up_proj/down_proj.weight`` instead: other names and shapes than the hub
file, on 5.2.0 - 5.5.1 and 5.6.2 - 5.25.0 (5.5.2 - 5.6.1 alias the mapping to qwen3_5_text).

The patch wraps ``transformers.modeling_utils.revert_weight_conversion`` (the name
``save_pretrained`` calls; a trainer that reverts for a broadcast calls it there): for a model that contains a
Qwen3.5-MoE text model, the call runs without the Qwen2-MoE expert converters; every other
conversion (prefixes, renamings) is reverted as the release does. Loading is untouched, so a
per-expert file written by an unpatched release still loads (and is saved back fused). The mapping
registry itself is not changed: prime-rl's hand patch re-registers ``qwen3_5_moe_text`` without the
converters, which also stops such per-expert files from loading.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces

MODEL_TYPE = "qwen3_5_moe_text"
EXPERT_MAPPING = "qwen2_moe"  # the converters composed into MODEL_TYPE's mapping
PARAMS = ("model", "state_dict")
_MISSING = object()


def _transforms():
    import transformers.conversion_mapping as mapping
    import transformers.core_model_loading as loading

    return mapping, loading


def _signature(transform):
    return type(transform).__name__, tuple(transform.source_patterns), tuple(transform.target_patterns)


def _expert_signatures(mapping):
    return {_signature(t) for t in mapping.get_checkpoint_conversion_mapping(EXPERT_MAPPING) or ()}


def _has_qwen3_5_moe_text(model):
    from transformers.modeling_utils import PreTrainedModel

    return any(isinstance(module, PreTrainedModel) and getattr(module.config, "model_type", None) == MODEL_TYPE
               for module in model.modules())


def _release_default(model, mapping, loading):
    """What the release reverts for a model not loaded by from_pretrained (PrefixChange, 5.6.0+,
    is dropped there: the model was built in code, its prefixes are unknown)."""
    conversions = mapping.get_model_conversion_mapping(model, add_legacy=False)
    prefix_change = getattr(loading, "PrefixChange", None)
    if prefix_change is not None:
        conversions = [c for c in conversions if not isinstance(c, prefix_change)]
    return conversions


def _revert(wrapped, instance, args, kwargs):
    model = kwargs["model"] if "model" in kwargs else args[0]
    if not _has_qwen3_5_moe_text(model):
        return wrapped(*args, **kwargs)
    mapping, loading = _transforms()
    own = model.__dict__.get("_weight_conversions", _MISSING)
    conversions = own if own not in (_MISSING, None) else _release_default(model, mapping, loading)
    experts = _expert_signatures(mapping)
    kept = [c for c in conversions if _signature(c) not in experts]
    # the release reads the list from the model: lend it the list without the expert converters for
    # this one call, then put back exactly what was there
    model.__dict__["_weight_conversions"] = kept
    try:
        return wrapped(*args, **kwargs)
    finally:
        if own is _MISSING:
            del model.__dict__["_weight_conversions"]
        else:
            model.__dict__["_weight_conversions"] = own


def _mapping_fixed(original):
    """A build whose qwen3_5_moe_text mapping no longer carries the per-expert converters."""
    mapping, _ = _transforms()
    composed = {_signature(t) for t in mapping.get_checkpoint_conversion_mapping(MODEL_TYPE) or ()}
    if not composed & _expert_signatures(mapping):
        return f"the {MODEL_TYPE!r} conversion mapping has no per-expert converters"
    return None


def _reads_model_conversions(original):
    """The wrapper lends the list through model._weight_conversions: the release must read it there."""
    code = getattr(original, "__code__", None)
    if code is None or "_weight_conversions" not in code.co_consts + code.co_names:
        return "revert_weight_conversion no longer reads model._weight_conversions"
    return None


_REPLACES = Replaces(
    symbols=(
        "transformers.conversion_mapping:register_checkpoint_conversion_mapping",
        "transformers.conversion_mapping:_checkpoint_conversion_mapping_cache",
        "transformers.core_model_loading:revert_weight_conversion",
    ),
    copies=(
        Copy("PrimeIntellect-ai/prime-rl", "src/prime_rl/trainer/model.py",
             "_patch_qwen3_5_moe_conversion_mapping", inventory=39,
             what="re-registers `qwen3_5_moe_text` as the `qwen3_5_text` mapping and `qwen3_5_moe` as "
                  "empty (overwrite=True) so the weight broadcast sends fused experts; unscoped, never "
                  "reverted, and a per-expert file saved by an unpatched release no longer loads."),
    ),
    use="compat_patches.apply_all()  # before save_pretrained or building the broadcast state dict",
)

PATCH = Patch(
    name="transformers-qwen3-5-moe-fused-save",
    summary="Qwen3.5-MoE saves (and reverts for weight sync) its experts fused, in the hub layout",
    upstream="https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/conversion_mapping.py",
    # Qwen3.5-MoE's first release is 5.2.0; 5.5.2 - 5.6.1 alias its mapping to qwen3_5_text (no
    # expert converters), every other release composes them (run in all 44 releases 5.2.0 - 5.25.0).
    # torch: without it transformers builds no model and modeling_utils does not import.
    affected={"transformers": ">=5.2.0.dev0,!=5.5.2,!=5.5.3,!=5.5.4,!=5.6.0,!=5.6.1", "torch": ">=2.4"},
    verified_through={"transformers": "5.25.0"},
    # modeling_utils' own name (save_pretrained calls it); wrapping core_model_loading's as well would
    # wrap twice where core_model_loading is patched before modeling_utils imports the name
    targets=(Target("transformers.modeling_utils:revert_weight_conversion", wrapper=_revert, params=PARAMS,
                    check=_reads_model_conversions, fixed=_mapping_fixed),),
    differences="Only the save direction changes: loading keeps the per-expert converters, so a file "
                "written by an unpatched release loads as before. On 5.2.0 - 5.5.4 a text-only "
                "Qwen3_5MoeForCausalLM is still written under the release's `model.language_model.` "
                "prefix (5.6.0 onward drops prefixes for a model built in code); only the experts differ.",
    notes="Not covered: qwen4_exp_text (5.24.0+) composes the same mapping; its hub layout was not "
          "checked. Code that imported revert_weight_conversion by name before the patch keeps the "
          "unpatched function, and so does a call through transformers.core_model_loading.",
    replaces=_REPLACES,
)
