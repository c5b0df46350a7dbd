"""compat_patches.core.source: the fingerprint records' check= / fixed= read."""

import functools

from compat_patches.core.source import fingerprint, function_source


def _decorated(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)
    return wrapper


def plain(x):
    """Docstrings do not count."""
    return x + 1  # nor comments


def test_fingerprint_reads_a_plain_function():
    assert fingerprint(plain, "unused") == (([], "return x + 1"), None)
    assert function_source(plain) is function_source(plain)  # parsed once


def test_fingerprint_reports_a_foreign_wrapper_unless_it_is_the_library_own():
    wrapped = _decorated(plain)
    source, reason = fingerprint(wrapped, "patching under it would bypass it")
    assert source is None
    assert reason.startswith("already wrapped by builtins.function; patching under it would bypass it")
    source, reason = fingerprint(wrapped, "unused", own_wrapper=lambda f: f is wrapped)
    assert reason is None and source[1] == "return x + 1"  # read through, as inspect does


def test_fingerprint_reports_an_unreadable_source():
    scope = {}
    exec(compile("def made(x):\n    return x\n", "<no-source>", "exec"), scope)
    source, reason = fingerprint(scope["made"], "unused")
    assert source is None and reason.startswith("source unavailable for the fingerprint (OSError")
