"""compat_patches: scoped, version-gated, exactly reversible fixes of upstream bugs in
transformers, peft, vLLM, vLLM-Ascend and FSDP trainers.

    import compat_patches
    compat_patches.apply_all()                       # every patch whose bug exists here
    with compat_patches.patched("transformers-rope-ignore-keys"):
        ...                                          # just this one, reverted on exit

Importing this package imports no machine-learning library.
"""

import _thread

from .core import (
    CompatPatchesError,
    InvalidSettingError,
    PatchDriftError,
    PatchFailedError,
    PatchManager,
    PatchUnverifiedError,
    PatchReport,
    Report,
    UnknownPatchError,
)

__version__ = "0.1.0"

_manager = None
_manager_lock = _thread.allocate_lock()


def _default_manager():
    global _manager
    if _manager is None:
        with _manager_lock:  # threads racing to the first use must share one manager
            if _manager is None:
                from .patches import ALL_PATCHES

                _manager = PatchManager(ALL_PATCHES)
    return _manager


def apply_all(*, only=None, exclude=None, strict=None) -> Report:
    """Apply every patch whose bug exists in this environment; returns the report.

    `only` / `exclude` take a patch name or an iterable of names; `strict=True` (or
    COMPAT_PATCHES_STRICT=1) raises on drift or failure instead of reporting it. Idempotent.
    """
    return _default_manager().apply_all(only=only, exclude=exclude, strict=strict)


def revert_all() -> None:
    """Revert every applied patch, restoring the original objects (`is`-identical).

    Inside an open ``patched()`` block this reverts that block's patches too, now; leaving the
    block afterwards changes nothing.
    """
    _default_manager().revert_all()


def patched(*names, strict=None):
    """Context manager applying the named patches (all when none named), reverted on exit."""
    return _default_manager().patched(*names, strict=strict)


def report() -> Report:
    """What each patch does in this process, changing nothing."""
    return _default_manager().report()


def get_patch(name):
    """The record of the patch called `name`."""
    return _default_manager().get(name)


def patch_names():
    """The stable names of every registered patch."""
    return _default_manager().names


__all__ = [
    "apply_all", "revert_all", "patched", "report", "get_patch", "patch_names",
    "Report", "PatchReport", "CompatPatchesError", "UnknownPatchError", "InvalidSettingError",
    "PatchDriftError", "PatchFailedError", "PatchUnverifiedError", "__version__",
]
