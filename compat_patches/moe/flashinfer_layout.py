"""vLLM FlashInfer CUTLASS MoE layout: pure tensor helpers (no patching; torch imported lazily).

vLLM creates the unquantized fused-MoE ``w13_weight`` as ``[E, 2*I_tp, H]`` with the gate rows
(``w1``, gate_proj) first and the up rows (``w3``, up_proj) second. With the FlashInfer CUTLASS MoE
backend the post-load step (``convert_to_unquantized_kernel_format`` -> ``swap_w13_to_w31``) swaps
the halves: the kernel layout is ``[w3; w1]`` (same shape, so a raw reload "fits" and is silently
wrong). ``w2_weight`` is unchanged.

Writing a checkpoint shard into the kernel layout is therefore writing it into the OTHER half:
vLLM's loader called with shard id ``w3`` for a gate shard and ``w1`` for an up shard places it,
TP-sharded and padded exactly as a fresh load would, where the swap would have moved it
(:func:`kernel_shard_id`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["W31", "kernel_shard_id", "swap_w13_halves", "w31_shard_view"]

#: The layout name the vllm-flashinfer-moe-layout record marks processed ``w13_weight`` with.
W31 = "flashinfer-w31"

_KERNEL_SHARD = {"w1": "w3", "w3": "w1", "w2": "w2"}


def kernel_shard_id(shard_id: str) -> str:
    """The shard id whose checkpoint-layout slot is where `shard_id` lives in the ``[w3; w1]``
    kernel layout: ``w1 -> w3``, ``w3 -> w1``, ``w2 -> w2``."""
    try:
        return _KERNEL_SHARD[shard_id]
    except (KeyError, TypeError):
        raise ValueError(f"shard_id must be one of 'w1', 'w2', 'w3', got {shard_id!r}") from None


def _halves(w13, name):
    import torch

    if not isinstance(w13, torch.Tensor) or w13.dim() < 2:
        raise TypeError(f"{name} must be a torch.Tensor [..., 2*I_tp, H], got {w13!r:.80}")
    rows = w13.shape[-2]
    if rows % 2:
        raise ValueError(f"{name}: dim -2 (2*I_tp) must be even, got shape {list(w13.shape)}")
    return rows // 2


def swap_w13_halves(w13: "torch.Tensor") -> "torch.Tensor":
    """``[w1; w3] <-> [w3; w1]`` along dim -2 (a new contiguous tensor; its own inverse): what
    vLLM's ``swap_w13_to_w31`` computes."""
    import torch

    half = _halves(w13, "w13")
    return torch.cat([w13.narrow(-2, half, half), w13.narrow(-2, 0, half)], dim=-2)


def w31_shard_view(w31: "torch.Tensor", shard_id: str) -> "torch.Tensor":
    """Zero-copy view of the rows of a ``[w3; w1]`` kernel-layout w13 (``[E, 2*I_tp, H]`` or one
    expert ``[2*I_tp, H]``) holding checkpoint shard ``w1`` (gate) or ``w3`` (up)."""
    if shard_id not in ("w1", "w3"):
        raise ValueError(f"shard_id must be 'w1' or 'w3' (w2 is not reordered), got {shard_id!r}")
    half = _halves(w31, "w31")
    return w31.narrow(-2, half if shard_id == "w1" else 0, half)
