"""Which process applied what: the one call every process entry point makes.

Every entry point that patches a process (the launcher's ``sitecustomize``, the Ray
``worker_process_setup_hook``, the pytest plugin, ``compat_patches.auto``, the vLLM plugin) goes
through :func:`activate`, which

- applies the patches (honouring ``COMPAT_PATCHES_DISABLE`` / ``_ONLY`` / ``_STRICT`` /
  ``_REQUIRE_VERIFIED``),
- raises only in strict mode (``strict=True`` or ``COMPAT_PATCHES_STRICT=1``): otherwise a patch
  problem, or a bad value in an environment variable, is logged and recorded, and the process goes
  on (unpatched where the configuration could not be read),
- logs ONE line at INFO per process naming the package version, the pid, the entry point (``via``)
  and what is active, and ONE more at WARNING when something drifted or failed or the configuration
  is bad (a later activation that changes nothing logs nothing again);
  ``COMPAT_PATCHES_LOG_FORMAT=json`` makes each one JSON object (see :mod:`compat_patches.core.log`),
- records an :class:`Activation`, so ``compat_patches.activation.last()`` tells, inside any process,
  whether and how it was patched.

:func:`activate` itself does not validate names up front: entry points that can stop cleanly call
:func:`validate_environment` first and so do raise on a configuration error, in the user's own
code, before anything is applied: ``compat_patches.auto`` (which prints the error as one line and
exits with status 2, SystemExit), the vLLM plugin (``vllm_plugin.register``), the launcher (exit
status 2) and Ray's ``runtime_env()`` in the driver. The ``sitecustomize`` bootstrap, the Ray worker
hook and the pytest plugin call :func:`activate` alone.

``COMPAT_PATCHES_LOG_LEVEL=INFO`` (the launcher's ``-v``) prints the ``compat_patches`` log lines to
stderr in processes where nobody configured logging (worker processes usually).

Imports only the standard library at import time.
"""

import _thread
import os
import sys
from time import time as _now

from .core.log import (ENV_LOG_FORMAT, ENV_LOG_LEVEL, INFO, WARNING, log, log_format, parse_log_format,
                       parse_log_level)

_lock = _thread.allocate_lock()
_history = []
_handler = None
_announced = {}  # what the last breadcrumb lines of this process said: {"active": key, "problems": key}


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
    """Honour COMPAT_PATCHES_LOG_LEVEL / _LOG_FORMAT where nobody configured logging (a worker
    process); raises InvalidSettingError on a bad value, after configuring what it could."""
    format_error = None
    try:
        json_format = parse_log_format(os.environ.get(ENV_LOG_FORMAT)) == "json"
    except Exception as exc:
        json_format, format_error = False, exc
    level = parse_log_level(os.environ.get(ENV_LOG_LEVEL))
    if level is not None and _handler is None:
        _add_handler(level, json_format)
    if format_error is not None:
        raise format_error


def _add_handler(level, json_format):
    global _handler
    import logging

    logger = logging.getLogger("compat_patches")
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    if not logger.hasHandlers():
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setLevel(level)
        # JSON: the message already is the whole object (logger, level, message, fields)
        _handler.setFormatter(logging.Formatter("%(message)s") if json_format else _TextFormatter())
        logger.addHandler(_handler)


def _TextFormatter():
    """``compat_patches: <message>``, without repeating the name where the message starts with it
    (the breadcrumb lines, self-contained for the last-resort handler)."""
    import logging

    class TextFormatter(logging.Formatter):
        def format(self, record):
            text = super().format(record)
            return text if text.startswith("compat_patches ") else f"{record.name}: {text}"

    return TextFormatter("%(message)s")


def validate_names(names, source="argument"):
    """`names` (an iterable or a comma-separated string) as a tuple; unknown names raise
    compat_patches.UnknownPatchError listing the known names. Used by the entry points to fail
    in the driver / launcher before any worker starts."""
    import compat_patches
    from compat_patches.core.manager import names_argument, split_names

    names = split_names(names, source) if isinstance(names, str) else names_argument(names, source)
    return compat_patches._default_manager().check_names(names, source)


def validate_environment(environ=None):
    """Check the COMPAT_PATCHES_* variables of `environ` (default os.environ) as the process that
    gets this environment will read them: ONLY / DISABLE (names), STRICT / REQUIRE_VERIFIED
    (switches), LOG_LEVEL and LOG_FORMAT. Raises UnknownPatchError or InvalidSettingError (both
    CompatPatchesError), naming the variable, its value and what is accepted."""
    import compat_patches

    environ = os.environ if environ is None else environ
    compat_patches._default_manager().check_environment(environ)
    parse_log_level(environ.get(ENV_LOG_LEVEL))
    parse_log_format(environ.get(ENV_LOG_FORMAT))


def activate(via, *, only=None, exclude=None, strict=None):
    """Apply the patches in this process on behalf of entry point `via`; returns the Activation.

    Raises only in strict mode (`strict=True` or COMPAT_PATCHES_STRICT=1); otherwise every
    problem is logged and kept in the returned Activation's `error` / `report`.
    """
    setting_error = None
    try:
        _configure_logging_from_env()
    except Exception as exc:  # a bad LOG_LEVEL / LOG_FORMAT: patch anyway, report it
        setting_error = f"{type(exc).__name__}: {exc}"
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
        record = _record(via, report, _joined(setting_error, error), announce=not strict)
        if strict:
            raise
        return record
    return _record(via, report, setting_error)


def _joined(*errors):
    errors = [e for e in errors if e]
    return "; ".join(errors) if errors else None


def _record(via, report, error, announce=True):
    activation = Activation(via=via, pid=os.getpid(), report=report, error=error)
    with _lock:
        _history.append(activation)
    if announce:
        _announce(activation)
    return activation


def _versions(report):
    versions = {}
    for entry in report or ():
        versions.update({d: v for d, v in entry.versions.items() if v is not None})
    return versions


def _announce(activation):
    """The breadcrumb: one INFO line with what is active, one WARNING line with what went wrong;
    each only when it says something the last one of this process did not."""
    from compat_patches import __version__

    report = activation.report
    active = [entry.name for entry in report if entry.active] if report is not None else []
    statuses = {entry.name: entry.status for entry in report} if report is not None else {}
    counts = {}
    for name, status in statuses.items():
        if name not in active:
            counts[status] = counts.get(status, 0) + 1
    head = f"compat_patches {__version__} in pid {activation.pid} via {activation.via}"
    import compat_patches

    manager = id(compat_patches._manager)  # a new set of records (tests swap it) is news
    key = (manager, tuple(active), tuple(statuses.items()), activation.error is None)
    if _announced.get("active") != key:
        _announced["active"] = key
        named = [name + ("" if statuses[name] == "applied" else f" ({statuses[name]})") for name in active]
        text = (f"{head}: active: {', '.join(named) or 'none'}"
                + (f"; {len(active)} of {len(statuses)} records ("
                   + ", ".join(f"{n} {status}" for status, n in counts.items()) + ")" if counts else ""))
        log(INFO, "%s", text, fields={
            "event": "compat_patches.active", "version": __version__, "pid": activation.pid,
            "via": activation.via, "active": active, "statuses": statuses, "versions": _versions(report),
            "argv": list(activation.argv)} if log_format() == "json" else None)
    problems = {entry.name: f"{entry.status}: {entry.reason}" for entry in report or ()
                if entry.status in ("drifted", "failed")}
    if not problems and activation.error is None:
        return
    key = (manager, tuple(problems.items()), activation.error)
    if _announced.get("problems") == key:
        return
    _announced["problems"] = key
    parts = [f"{name} {finding}" for name, finding in problems.items()]
    if activation.error is not None:
        parts.append(("not applied: " if report is None else "") + activation.error)
    log(WARNING, "%s", f"{head}: " + "; ".join(parts), fields={
        "event": "compat_patches.problems", "version": __version__, "pid": activation.pid,
        "via": activation.via, "drifted": {n: r for n, r in problems.items() if r.startswith("drifted")},
        "failed": {n: r for n, r in problems.items() if r.startswith("failed")},
        "error": activation.error} if log_format() == "json" else None)
