"""Placeholder record: the fix is not implemented yet (the name and gate are real)."""

from compat_patches.core import Patch

PATCH = Patch(
    name="transformers-rope-ignore-keys",
    summary="not implemented yet",
    upstream="",
    affected={"transformers": "<0"},
    targets=(),
)
