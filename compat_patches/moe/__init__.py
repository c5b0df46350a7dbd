"""Pure tensor helpers for MoE expert weights (no patching; importing this imports no torch).

``processed_layout`` holds the protocol shared by the MoE layout records (Ascend transposed,
FlashInfer CUTLASS ``[w3; w1]``): mark kernel-layout Parameters, write shards into that layout,
never re-process a processed layer."""

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
from .flashinfer_layout import (  # noqa: F401  (vLLM FlashInfer CUTLASS [w3; w1] MoE layout)
    W31,
    kernel_shard_id,
    swap_w13_halves,
    w31_shard_view,
)
from .packed_experts import (  # noqa: F401  (Transformers-5 packed experts -> per-expert vLLM keys)
    PACKED_NATIVE_MODEL_TYPES,
    expand_packed_experts,
    iter_vllm_compatible_moe_params,
    packed_expert_kind,
)
