"""Installing and removing one target's wrapper with wrapt, with drift checks first."""

import inspect

from .report import DRIFTED, FAILED, NOT_NEEDED


class TargetProblem(Exception):
    """Why one target is not wrapped; `status` is drifted, failed or not-needed (fix backported)."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _parameter_names(original):
    function = original.__func__ if isinstance(original, (classmethod, staticmethod)) else original
    return tuple(inspect.signature(function).parameters)


def check_drift(module, target):
    """Resolve `target` in the imported `module`; raise TargetProblem(drifted) if it changed."""
    import wrapt  # lazy: wrapt 2.x imports asyncio; only processes that patch pay for it

    try:
        _, _, original = wrapt.resolve_path(module, target.attribute)
    except (wrapt.PathResolutionError, AttributeError) as exc:
        raise TargetProblem(DRIFTED, f"target {target.path} is missing ({exc})") from None
    if target.params is not None:
        try:
            found = _parameter_names(original)
        except (TypeError, ValueError) as exc:
            raise TargetProblem(DRIFTED, f"target {target.path} has no signature ({exc})") from None
        if found != target.params:
            raise TargetProblem(
                DRIFTED,
                f"target {target.path} signature changed: expected parameters "
                f"{target.params}, found {found}",
            )
    for fingerprint, status, what in ((target.fixed, NOT_NEEDED, "already carries the upstream fix"),
                                      (target.check, DRIFTED, "changed")):
        if fingerprint is None:
            continue
        try:
            finding = fingerprint(original)
        except Exception as exc:  # a fingerprint that cannot run is drift, not a crash
            finding, status, what = f"{type(exc).__name__}: {exc}", DRIFTED, "fingerprint raised"
        if finding:
            raise TargetProblem(status, f"target {target.path} {what}: {finding}")


def install(module, target):
    """Wrap the target; returns the wrapt handle."""
    import wrapt

    check_drift(module, target)
    try:
        return wrapt.wrap_function_wrapper(module, target.attribute, target.wrapper)
    except Exception as exc:
        raise TargetProblem(
            FAILED, f"wrapping {target.path} raised {type(exc).__name__}: {exc}"
        ) from exc


def uninstall(module, target, handle):
    """Remove our wrapper, restoring the very object it wrapped; tolerates a vanished wrapper."""
    import wrapt

    wrapt.unwrap_object(module, target.attribute, handle, missing_ok=True)
