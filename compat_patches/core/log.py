"""The ``compat_patches`` logger, without importing ``logging`` where nobody could see the record.

``logging`` costs every process ~20 ms to import. While it is not imported, no handler exists, so a
record below WARNING would reach nobody (the last-resort handler prints WARNING and up only): it is
dropped without importing anything. WARNING and up, or any level once ``logging`` is imported
(by the application, a library, or COMPAT_PATCHES_LOG_LEVEL), go through the real logger.
"""

import sys

NAME = "compat_patches"
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40


def log(level, message, *args, exc_info=False):
    logging = sys.modules.get("logging")
    if logging is None:
        if level < WARNING:
            return
        import logging
    logging.getLogger(NAME).log(level, message, *args, exc_info=exc_info)
