"""verl's FSDP engine streams Transformers-5 packed MoE experts to vLLM: expand them per expert.

With transformers 5, a Qwen-style MoE layer holds ``mlp.experts.gate_up_proj`` ``[E, 2I, H]`` and
``mlp.experts.down_proj`` ``[E, H, I]``. verl's ``FSDPEngine.get_per_tensor_param`` (the generator
that rollout weight sync feeds to vLLM's ``load_weights``) streams these packed tensors under their
packed names from 0.6.0 through 0.8.0, while vLLM's Qwen-MoE reload path expects the per-expert
checkpoint keys ``mlp.experts.{e}.gate_proj.weight`` / ``up_proj.weight`` / ``down_proj.weight``.
verl 0.9.0 fixed it: verl-project/verl PR 6896 expanded the stream in the vLLM rollout adapter and
PR 7161 moved that into the FSDP engine (``unfuse_moe_params`` in ``verl/workers/engine/fsdp/utils.py``,
applied in ``get_per_tensor_param``). PR 6923 backported 6896 to the release/v0.8.0 branch after 0.8.0
was published: a later 0.8.x build that carries it is reported "drifted" by the source check below
instead of being wrapped. vLLM's own RLHF example (rlhf_ipc_fsdp_ep) un-fuses the
same way before load_weights.

The wrapper leaves verl's function untouched and wraps the generator it returns with
:func:`compat_patches.moe.expand_packed_experts`: lazy, one parameter at a time, every expert tensor
a view of the gathered full tensor (no copy). Not expanded: GPT-OSS (vLLM loads its packed tensors
as they are, as verl 0.9 does) and the LoRA adapter-only sync of 0.6.x (a dict of LoRA tensors).

Measured from the wheels: 0.5.0 has no FSDP engine; 0.6.0, 0.6.1 and 0.7.0 define
``get_per_tensor_param(self, layered_summon=False, base_sync_done=False)`` (0.6.x return the
stream, 0.7.0 a ``(stream, peft_config)`` pair); 0.7.1 and 0.8.0 add ``**kwargs`` and return
``(stream, peft_config_dict)``; 0.9.0 and 0.9.1 call ``unfuse_moe_params``.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Replaces

_STREAM_HINT = "unfuse_moe_params"


def _model_type(engine):
    hf_config = getattr(getattr(engine, "model_config", None), "hf_config", None)
    return getattr(hf_config, "model_type", None)


def _expand(stream, model_type):
    from collections.abc import Mapping

    from compat_patches.moe.packed_experts import expand_packed_experts

    if stream is None or isinstance(stream, Mapping):  # LoRA adapter-only dicts: left as they are
        return stream
    return expand_packed_experts(stream, model_type=model_type)


def _get_per_tensor_param_wrapper(wrapped, instance, args, kwargs):
    result = wrapped(*args, **kwargs)
    model_type = _model_type(instance)
    if isinstance(result, tuple) and len(result) == 2:  # verl >= 0.7.0: (stream, peft_config)
        return _expand(result[0], model_type), result[1]
    return _expand(result, model_type)  # verl 0.6.x: the stream alone


def _already_unfuses(original):
    """Why this build already expands the experts itself (the 0.9.0 fix backported, verl#6923)."""
    import inspect

    try:
        source = inspect.getsource(original)
    except (OSError, TypeError):
        return None
    if _STREAM_HINT in source:
        return f"get_per_tensor_param calls {_STREAM_HINT}"
    return None


_TARGET = "verl.workers.engine.fsdp.transformer_impl:FSDPEngine.get_per_tensor_param"

_REPLACES = Replaces(
    symbols=("verl.workers.engine.fsdp.transformer_impl:FSDPEngine.get_per_tensor_param",),
    note="No hand patch of this bug was found by the field inventory of framework mirrors "
         "(2026-11-28): it lists \"FSDP packed experts → per-expert vLLM names (verl 6896)\" among the "
         "known items that do not appear as monkey-patches at those mirrors' HEAD, and notes that "
         "verl now does this through `resolve_weight_name`, and ms-swift through npu_patch "
         "expansion.",
)

PATCH = Patch(
    name="fsdp-packed-experts",
    summary=(
        "verl FSDP weight sync streams Transformers-5 packed MoE experts (mlp.experts.gate_up_proj"
        " [E,2I,H], down_proj [E,H,I]); expand them to vLLM's per-expert checkpoint keys, zero-copy"
    ),
    upstream="https://github.com/verl-project/verl/pull/6896",
    affected={"verl": ">=0.6.0,<0.9.0", "transformers": ">=5.0.0rc0"},
    fixed_in="verl 0.9.0",
    targets=(
        Target(
            _TARGET,
            wrapper=_get_per_tensor_param_wrapper,
            params=("self", "layered_summon", "base_sync_done"),
            fixed=_already_unfuses,
            versions="<0.7.1",
        ),
        Target(
            _TARGET,
            wrapper=_get_per_tensor_param_wrapper,
            params=("self", "layered_summon", "base_sync_done", "kwargs"),
            fixed=_already_unfuses,
            versions=">=0.7.1",
        ),
    ),
    upstream_tests=(
        "tests/upstream/verl/test_vllm_moe_param_converter_on_cpu.py::"
        "test_qwen_moe_packed_weights_are_expanded_per_expert",
        "tests/upstream/verl/test_vllm_moe_param_converter_on_cpu.py::"
        "test_gpt_oss_packed_weights_are_not_expanded",
    ),
    differences=(
        "Compared with verl 0.9's unfuse_moe_params: every expert tensor is a view of the packed "
        "tensor (upstream: a .contiguous() copy; the values are equal bitwise); a packed name with a "
        "trailing '.weight' is expanded too; a tensor under a packed name that is not rank 3, has an "
        "odd 2I dimension or is still a DTensor raises ValueError/TypeError naming it (upstream passes "
        "a non-3-D one through); for gpt_oss the whole stream passes through (upstream: its 3-D expert "
        "tensors, the only GPT-OSS tensors with packed names). The wrapper expands whatever stream "
        "get_per_tensor_param returns, so verl 0.7.1/0.8.0's merged-LoRA sync (lora.merge) is expanded "
        "too, which verl 0.9 (_merged_lora_per_tensor_param) sends packed. In the LoRA adapter-only "
        "sync upstream converts nothing; the wrapper still runs the expansion, which touches only "
        "tensors named ...mlp.experts.gate_up_proj/down_proj (0.6.x's adapter dict is left untouched)."
    ),
    notes=(
        "Helper without patching: compat_patches.moe.expand_packed_experts(named_tensors). "
        "Same bug, not patched here: trl 1.16.0 VLLMGeneration._iter_named_params streams packed "
        "names; ms-swift 4.6.0 keeps fused tensors on purpose (its own vLLM MoE loader patch)."
    ),
    replaces=_REPLACES,
)
