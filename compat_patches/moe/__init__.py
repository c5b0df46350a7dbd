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
