"""Placeholder record: the fix is not implemented yet (the name and gate are real)."""

from compat_patches.core import Patch

PATCH = Patch(
    name="fsdp-packed-experts",
    summary="not implemented yet",
    upstream="",
    affected={"verl": "<0"},
    targets=(),
)
