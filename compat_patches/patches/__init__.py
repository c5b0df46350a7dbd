"""The registered patches, in report order: ``patches/<library>/<what_it_fixes>.py``, each
defining one ``PATCH`` record. Importing a record imports nothing of the library it fixes."""

from .peft import hybrid_cache_import, moe_regex_targets, shared_expert_targets
from .transformers import (
    byte_level_tokenizer,
    gdn_packed_samples,
    gpt_oss_num_experts,
    mamba2_packed_samples,
    missing_weights_init,
    qwen3_5_moe_fused_save,
    zero3_dropped_keys,
    rope_ignore_keys,
    stale_loss_kwargs,
    trainer_token_count,
    vl_processor_ragged_batch,
)
from .verl import fsdp_packed_experts
from .vllm import (
    flashinfer_moe_layout,
    fused_expert_kwargs,
    hybrid_fp8_kv_wake,
    hyv4_fused_expert_kwargs,
    layerwise_reload_numel,
    moe_reprocess_storage,
    stateless_pg_ipv6,
)
from .vllm_ascend import moe_layout

ALL_PATCHES = (
    rope_ignore_keys.PATCH,
    moe_regex_targets.PATCH,
    moe_layout.PATCH,
    fsdp_packed_experts.PATCH,
    fused_expert_kwargs.PATCH,
    byte_level_tokenizer.PATCH,
    missing_weights_init.PATCH,
    vl_processor_ragged_batch.PATCH,
    gpt_oss_num_experts.PATCH,
    gdn_packed_samples.PATCH,
    mamba2_packed_samples.PATCH,
    stale_loss_kwargs.PATCH,
    trainer_token_count.PATCH,
    hybrid_cache_import.PATCH,
    shared_expert_targets.PATCH,
    layerwise_reload_numel.PATCH,
    hybrid_fp8_kv_wake.PATCH,
    moe_reprocess_storage.PATCH,
    flashinfer_moe_layout.PATCH,
    hyv4_fused_expert_kwargs.PATCH,
    stateless_pg_ipv6.PATCH,
    qwen3_5_moe_fused_save.PATCH,
    zero3_dropped_keys.PATCH,
)
