"""Which process applied what: the one call every process entry point makes.

Every entry point that patches a process (the launcher's ``sitecustomize``, the Ray
``worker_process_setup_hook``, the pytest plugin, ``compat_patches.auto``, the vLLM plugin) goes
through :func:`activate`, which

- applies the patches (honouring ``COMPAT_PATCHES_DISABLE`` / ``_ONLY`` / ``_STRICT``),
- never raises unless strict mode is on: a patch problem, even a misspelt name in an environment
  variable, is logged and recorded, and the process goes on,
- logs ONE summary line naming the pid and the entry point (``via``), at WARNING when something
  drifted or failed, else at INFO,
- records an :class:`Activation`, so ``compat_patches.activation.last()`` tells, inside any process,
  whether and how it was patched.

``COMPAT_PATCHES_LOG_LEVEL=INFO`` (the launcher's ``-v``) prints the ``compat_patches`` log lines to
stderr in processes where nobody configured logging (worker processes usually).

Imports only the standard library at import time.
"""

import _thread
import os
import sys
from time import time as _now

from .core.log import INFO, WARNING, log

ENV_LOG_LEVEL = "COMPAT_PATCHES_LOG_LEVEL"

_lock = _thread.allocate_lock()
_history = []
_handler = None


class Activation:
    """One activation in one process: how it came (`via`), what it did (`report`, a
    compat_patches.Report, or None when even the report could not be made), what broke (`error`:
    the configuration or patch error that was reported, not raised)."""

    __slots__ = ("via", "pid", "report", "error", "argv", "time")

    def __init__(self, via, pid, report, error=None, argv=None, time=None):
        object.__setattr__(self, "via", via)
        object.__setattr__(self, "pid", pid)
        object.__setattr__(self, "report", report)
        object.__setattr__(self, "error", error)
        object.__setattr__(self, "argv", tuple(getattr(sys, "argv", ())) if argv is None else tuple(argv))
        object.__setattr__(self, "time", _now() if time is None else time)

    def __setattr__(self, name, value):
        raise AttributeError(f"Activation is immutable (cannot set {name!r})")

    def __repr__(self):
        return f"Activation(via={self.via!r}, pid={self.pid}, {self.summary()})"

    @property
    def ok(self):
        """No error, nothing drifted or failed."""
        if self.error is not None or self.report is None:
            return False
        return not self.report.by_status("drifted", "failed")

    def summary(self):
        """``name=status, ...`` (or the error)."""
        parts = []
        if self.report is not None:
            parts.append(", ".join(f"{entry.name}={entry.status}" for entry in self.report))
        if self.error is not None:
            parts.append(f"error: {self.error}")
        return "; ".join(parts) or "no patches registered"

    def to_dict(self):
        return {
            "via": self.via,
            "pid": self.pid,
            "ok": self.ok,
            "error": self.error,
            "argv": list(self.argv),
            "time": self.time,
            "statuses": ({entry.name: entry.status for entry in self.report}
                         if self.report is not None else None),
            "report": ([entry.to_dict() for entry in self.report]
                       if self.report is not None else None),
        }


def last():
    """The latest Activation in this process, or None when no entry point activated here."""
    with _lock:
        return _history[-1] if _history else None


def history():
    """Every Activation in this process, oldest first."""
    with _lock:
        return tuple(_history)


def _configure_logging_from_env():
    """Honour COMPAT_PATCHES_LOG_LEVEL where nobody configured logging (a worker process)."""
    global _handler
    level_name = os.environ.get(ENV_LOG_LEVEL, "").strip().upper()
    if not level_name or _handler is not None:
        return
    import logging

    logger = logging.getLogger("compat_patches")
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        return
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    if not logger.hasHandlers():
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setLevel(level)
        _handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(_handler)


def validate_names(names, source="argument"):
    """`names` (an iterable or a comma-separated string) as a tuple; unknown names raise
    compat_patches.UnknownPatchError listing the known names. Used by the entry points to fail
    in the driver / launcher before any worker starts."""
    import compat_patches
    from compat_patches.core.manager import names_argument, split_names

    names = split_names(names, source) if isinstance(names, str) else names_argument(names, source)
    return compat_patches._default_manager().check_names(names, source)


def validate_environment(environ=None):
    """Check COMPAT_PATCHES_ONLY / COMPAT_PATCHES_DISABLE of `environ` (default os.environ) as the
    core will read them in the process that gets this environment; raises UnknownPatchError or
    InvalidSettingError (a bad COMPAT_PATCHES_STRICT value, a list naming nothing)."""
    import compat_patches

    compat_patches._default_manager().check_environment(environ)


def activate(via, *, only=None, exclude=None, strict=None):
    """Apply the patches in this process on behalf of entry point `via`; returns the Activation.

    Raises only in strict mode (`strict=True` or COMPAT_PATCHES_STRICT=1); otherwise every
    problem is logged and kept in the returned Activation's `error` / `report`.
    """
    _configure_logging_from_env()
    report, error = None, None
    try:
        import compat_patches
        from compat_patches.core import env_strict

        strict = env_strict() if strict is None else strict
        report = compat_patches.apply_all(only=only, exclude=exclude, strict=strict)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if report is None:
            try:
                report = compat_patches.report()
            except Exception:  # e.g. the same misspelt name in the environment
                report = None
        record = _record(via, report, error)
        if strict:
            raise
        return record
    return _record(via, report, error)


def _record(via, report, error):
    activation = Activation(via=via, pid=os.getpid(), report=report, error=error)
    with _lock:
        _history.append(activation)
    log(INFO if activation.ok else WARNING, "activated in pid %d via %s: %s", activation.pid, via,
        activation.summary())
    return activation
