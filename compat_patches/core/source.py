"""Source fingerprints for ``check=`` / ``fixed=``: a function's ``def`` normalised by ``ast.unparse``."""

_parsed = {}  # a record's check= and fixed= read the same function: parse it once


def function_source(function):
    """``(decorators, body)`` of `function`'s ``def`` statement, each normalised by ``ast.unparse``
    (so formatting and comments do not count), the docstring dropped. Raises OSError / TypeError /
    SyntaxError where the source cannot be read or is no ``def``."""
    if function not in _parsed:
        _parsed[function] = _parse(function)
    return _parsed[function]


def wrapper_reason(original, consequence):
    """Why `original` cannot be patched as the function it wraps (someone's wrapper, recognised by
    ``__wrapped__``; `consequence` says what patching under it would do), or None."""
    if not hasattr(original, "__wrapped__"):
        return None
    return (f"already wrapped by {type(original).__module__}.{type(original).__qualname__}; "
            f"{consequence}")


def unreadable(exc):
    """The drift reason for a source that could not be read (`exc` from reading it)."""
    return f"source unavailable for the fingerprint ({type(exc).__name__}: {exc})"


def fingerprint(original, consequence, own_wrapper=None):
    """``(function_source(original), None)``, or ``(None, why not)`` where `original` is someone's
    wrapper (`own_wrapper(original)` True: the library's own decorator, read through) or its source
    cannot be read: what a record's ``check=`` reports and its ``fixed=`` reads."""
    if own_wrapper is None or not own_wrapper(original):
        reason = wrapper_reason(original, consequence)
        if reason is not None:
            return None, reason
    try:
        return function_source(original), None
    except (OSError, TypeError, SyntaxError) as exc:
        return None, unreadable(exc)


def _parse(function):
    import ast
    import inspect
    import textwrap

    node = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise TypeError(f"{function!r} is not defined by a def statement")
    body = node.body
    first = body[0] if body else None
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        body = body[1:]
    return ([ast.unparse(d) for d in node.decorator_list],
            "\n".join(ast.unparse(statement) for statement in body))


def missing_parameters(function, names):
    """Why `function` is not the shape a wrapper reads by name: the `names` its signature lacks, or
    None (a `check=` helper for targets whose wrapper binds arguments by name)."""
    import inspect

    found = inspect.signature(function).parameters
    missing = [name for name in names if name not in found]
    return f"its signature has no {', '.join(missing)}" if missing else None
