"""Placeholder record: the fix is not implemented yet (the name and gate are real)."""

from compat_patches.core import Patch

PATCH = Patch(
    name="vllm-fused-expert-kwargs",
    summary="not implemented yet",
    upstream="",
    affected={"vllm": "<0"},
    targets=(),
)
