"""Source fingerprints for ``check=`` / ``fixed=``: a function's ``def`` normalised by ``ast.unparse``."""

_parsed = {}  # a record's check= and fixed= read the same function: parse it once


def function_source(function):
    """``(decorators, body)`` of `function`'s ``def`` statement, each normalised by ``ast.unparse``
    (so formatting and comments do not count), the docstring dropped. Raises OSError / TypeError /
    SyntaxError where the source cannot be read or is no ``def``."""
    if function not in _parsed:
        _parsed[function] = _parse(function)
    return _parsed[function]


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
