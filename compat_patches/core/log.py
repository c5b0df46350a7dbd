"""The ``compat_patches`` logger, without importing ``logging`` where nobody could see the record.

``logging`` costs every process ~20 ms to import. While it is not imported, no handler exists, so a
record below WARNING would reach nobody (the last-resort handler prints WARNING and up only): it is
dropped without importing anything. WARNING and up, or any level once ``logging`` is imported
(by the application, a library, or COMPAT_PATCHES_LOG_LEVEL), go through the real logger.

``COMPAT_PATCHES_LOG_FORMAT=json`` makes every message one JSON object (``logger``, ``level``,
``message`` and, for the per-process breadcrumb, its fields), for log collectors; ``text`` or unset:
plain sentences. ``COMPAT_PATCHES_LOG_LEVEL`` (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``,
``CRITICAL``) is read by :mod:`compat_patches.activation`; both are validated here.
"""

import os
import sys

from .errors import InvalidSettingError

NAME = "compat_patches"
DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50
LEVELS = {"DEBUG": DEBUG, "INFO": INFO, "WARNING": WARNING, "ERROR": ERROR, "CRITICAL": CRITICAL}
ENV_LOG_LEVEL = "COMPAT_PATCHES_LOG_LEVEL"
ENV_LOG_FORMAT = "COMPAT_PATCHES_LOG_FORMAT"
FORMATS = ("text", "json")


def parse_log_level(raw):
    """The level COMPAT_PATCHES_LOG_LEVEL asks for (None: unset or empty); other values raise."""
    value = (raw or "").strip().upper()
    if not value:
        return None
    if value in LEVELS:
        return LEVELS[value]
    raise InvalidSettingError(
        f"{ENV_LOG_LEVEL}={raw!r} is not a log level: use DEBUG, INFO, WARNING, ERROR or CRITICAL "
        "(any case), or unset it")


def parse_log_format(raw):
    """``"text"`` or ``"json"`` (unset or empty: text); other values raise."""
    value = (raw or "").strip().lower()
    if not value:
        return "text"
    if value in FORMATS:
        return value
    raise InvalidSettingError(f"{ENV_LOG_FORMAT}={raw!r} is not a log format: use text or json, or unset it")


def log_format(environ=None):
    """The format in effect; a bad value counts as text here (it is reported where it is validated)."""
    try:
        return parse_log_format((os.environ if environ is None else environ).get(ENV_LOG_FORMAT))
    except InvalidSettingError:
        return "text"


def _level_name(level):
    for name, number in LEVELS.items():
        if number == level:
            return name
    return f"Level {level}"


def as_json(level, message, args=(), fields=None):
    import json

    try:
        text = message % args if args else message
    except (TypeError, ValueError):
        text = " ".join([message, *map(str, args)])
    payload = {"logger": NAME, "level": _level_name(level), "message": text}
    if fields:
        payload.update(fields)
    return json.dumps(payload, default=str, sort_keys=False)


def log(level, message, *args, exc_info=False, fields=None):
    """Log `message % args` under the compat_patches logger. `fields` (a dict) are added to the
    JSON object when COMPAT_PATCHES_LOG_FORMAT=json (ignored in text)."""
    logging = sys.modules.get("logging")
    if logging is None:
        if level < WARNING:
            return
        import logging
    logger = logging.getLogger(NAME)
    if not logger.isEnabledFor(level):
        return
    if log_format() == "json":
        logger.log(level, "%s", as_json(level, message, args, fields), exc_info=exc_info)
    else:
        logger.log(level, message, *args, exc_info=exc_info)
