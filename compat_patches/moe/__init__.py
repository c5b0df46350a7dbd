"""Pure tensor helpers for MoE expert weights (no patching; importing this imports no torch)."""

from .ascend_layout import (  # noqa: F401  (vLLM-Ascend processed/preprocessed MoE layout)
    SHARD_IDS,
    expert_shard_view,
    normalize_shard_id,
    preprocessed_view,
    w2_to_preprocessed,
    w2_to_processed,
    w13_to_preprocessed,
    w13_to_processed,
    write_expert_shard,
)
from .packed_experts import (  # noqa: F401  (Transformers-5 packed experts -> per-expert vLLM keys)
    PACKED_NATIVE_MODEL_TYPES,
    expand_packed_experts,
    iter_vllm_compatible_moe_params,
    packed_expert_kind,
)
