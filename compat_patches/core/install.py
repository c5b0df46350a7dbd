"""Installing and removing one target's wrapper with wrapt, with drift checks first."""

from .report import DRIFTED, FAILED, NOT_NEEDED


class TargetProblem(Exception):
    """Why one target is not wrapped; `status` is drifted, failed or not-needed (fix backported).

    `gone`: our wrapper is no longer on the target at all, so there is nothing left to retry."""

    def __init__(self, status, reason, gone=False):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.gone = gone


def _parameter_names(original):
    import inspect

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
    return original


def install(module, target):
    """Wrap the target; returns (wrapt handle, the original object)."""
    import wrapt

    from .wrappers import PatchWrapper

    original = check_drift(module, target)
    name = target.attribute.rpartition(".")[2]
    try:
        handle = wrapt.wrap_object(module, target.attribute, PatchWrapper, (target.wrapper, name))
    except Exception as exc:
        raise TargetProblem(
            FAILED, f"wrapping {target.path} raised {type(exc).__name__}: {exc}"
        ) from exc
    return handle, original


def uninstall(module, target, handle, original):
    """Remove our wrapper, restoring the very object it wrapped.

    Raises TargetProblem(failed) when that is impossible: a foreign non-wrapt wrapper sits on top
    of ours, or our wrapper was replaced by something else (which may still call it) so the
    original cannot be put back.
    """
    import wrapt

    try:
        removed = wrapt.unwrap_object(module, target.attribute, handle, missing_ok=True)
    except Exception as exc:
        raise TargetProblem(FAILED, f"{target.path}: {type(exc).__name__}: {exc}") from exc
    if removed is not None:
        return
    try:
        current = wrapt.resolve_path(module, target.attribute)[2]
    except (wrapt.PathResolutionError, AttributeError):
        current = None
    if current is original:
        return  # someone else already put the original back
    raise TargetProblem(
        FAILED, f"{target.path}: our wrapper was replaced by {current!r} (no wrapt wrapper of "
                "ours in its chain), so the original cannot be restored; the replacement may "
                "still call our wrapper",
        gone=True,
    )
