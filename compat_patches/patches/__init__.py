"""The registered patches, in report order. Each module defines one ``PATCH`` record."""

from . import (
    fsdp_packed_experts,
    peft_moe_regex_targets,
    transformers_rope_ignore_keys,
    vllm_ascend_moe_layout,
    vllm_fused_expert_kwargs,
)

ALL_PATCHES = (
    transformers_rope_ignore_keys.PATCH,
    peft_moe_regex_targets.PATCH,
    vllm_ascend_moe_layout.PATCH,
    fsdp_packed_experts.PATCH,
    vllm_fused_expert_kwargs.PATCH,
)
