"""``python -m compat_patches scan PATH``: which hand patches in a source tree this package replaces.

Reads the tree with ``ast`` only (nothing is imported or executed) and finds monkey-patches of the
upstream symbols the records declare in ``replaces=`` and of those listed in
``compat_patches.not_needed``: attribute assignment, ``setattr``, wrapt helpers
(``wrap_function_wrapper``, ``wrap_object``, ``patch_function_wrapper``, ``FunctionWrapper``...),
``functools.wraps`` replacements, registry writes (subscript assignment, ``update`` /
``setdefault``, registration calls) and string-path patchers (``mock.patch("pkg.mod.Cls.attr")``,
``monkeypatch.setattr``) outside tests, plus definitions of the known downstream copies. Names are
resolved through the file's imports, simple assignments, ``getattr`` / ``importlib.import_module``
/ ``sys.modules`` look-ups, loops over literal tuples, and arguments passed to the file's own
functions.

Per finding: file:line, the patched symbol, the record that replaces it, whether that record is
needed with the installed versions (or those given with ``--for``), and the one line to use
instead; then the hand patches known to be unnecessary. Exit status 0 unless ``--fail-on-found``.

``--update-docs [DIR]`` regenerates the "Replaces" sections of docs/patches/*.md from the same data.
"""

import ast
import os
import sys
import time

START = "<!-- replaces:start -->"
END = "<!-- replaces:end -->"
REGENERATE = "python -m compat_patches scan --update-docs docs/patches"

_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv",
                        ".tox", ".nox", ".eggs", "site-packages", "build", "dist", ".mypy_cache",
                        ".pytest_cache", ".ruff_cache"})
_TEST_DIRS = frozenset({"test", "tests", "testing", "unittests", "unit_tests"})
_WRAPT = frozenset({"wrap_function_wrapper", "wrap_object", "wrap_object_attribute",
                    "patch_function_wrapper", "transient_function_wrapper", "apply_patch"})
_WRAPPER_TYPES = frozenset({"FunctionWrapper", "BoundFunctionWrapper", "ObjectProxy",
                            "CallableObjectProxy"})
_REGISTRY_METHODS = frozenset({"update", "setdefault", "__setitem__", "pop"})
_FIELDS = {}  # AST class -> the fields that can hold a patch site or a binding
_SKIP_FIELDS = frozenset({"ctx", "type_comment", "type_ignores", "returns", "annotation"})
_LEAVES = frozenset({ast.Constant, ast.Load, ast.Store, ast.Del, ast.Pass, ast.Break, ast.Continue,
                     ast.alias, ast.arguments})
AST = ast.AST
_WRAPPING = frozenset({"functools.wraps", "wrapt wrapper"})
_MAX_VALUES = 64  # candidate resolutions kept per expression
_UNKNOWN = "*"
_LOCAL = "@local"
_UNRESOLVED = "?"


# ---- the data: symbols to look for ---------------------------------------------------------------

class Symbol:
    """One declared symbol, parsed: ``pkg.mod:Cls.attr``, ``pkg.mod:NAME['key']``, ``pkg.mod:f('key')``."""

    __slots__ = ("text", "root", "module", "qual", "kind", "key")

    def __init__(self, text):
        module, _, rest = text.partition(":")
        self.text, self.module, self.root = text, tuple(module.split(".")), module.split(".")[0]
        self.kind, self.key = "attribute", None
        if rest.endswith(")") and "(" in rest:
            rest, _, arg = rest[:-1].partition("(")
            self.kind, self.key = "call", (_literal(arg) if arg else None)
        elif rest.endswith("]") and "[" in rest:
            rest, _, arg = rest[:-1].partition("[")
            self.kind, self.key = "item", _literal(arg)
        self.qual = tuple(rest.split("."))


def _literal(text):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, str) else repr(value)


class Entry:
    """A record (kind "record") or a not-needed entry (kind "not-needed") with its parsed symbols."""

    __slots__ = ("kind", "name", "item", "symbols", "copies", "order")

    def __init__(self, kind, name, item, symbols, copies, order):
        self.kind, self.name, self.item, self.order = kind, name, item, order
        self.symbols = tuple(Symbol(text) for text in symbols)
        self.copies = tuple(copies)


def load_entries(records=None, not_needed=None):
    if records is None:
        from .patches import ALL_PATCHES as records
    if not_needed is None:
        from .not_needed import NOT_NEEDED as not_needed
    entries = [Entry("record", r.name, r, r.replaces.symbols, r.replaces.copies, i)
               for i, r in enumerate(records)]
    entries += [Entry("not-needed", n.key, n, n.symbols, n.copies, len(entries) + i)
                for i, n in enumerate(not_needed)]
    return entries


class _Index:
    """The symbols by their last qualified name, for matching a resolved target quickly."""

    def __init__(self, entries):
        self.entries = entries
        self.by_last = {}
        self.calls = {}
        self.copies = {}  # function's last name -> [(entry, copy)]
        self.copy_paths = {}  # module copies (no function) by file name
        for entry in entries:
            for symbol in entry.symbols:
                if symbol.kind == "call":
                    self.calls.setdefault(symbol.qual[-1], []).append((entry, symbol))
                else:
                    self.by_last.setdefault(symbol.qual[-1], []).append((entry, symbol))
            for copy in entry.copies:
                if copy.function:
                    self.copies.setdefault(copy.function.split(".")[-1], []).append((entry, copy))
                elif copy.path:
                    self.copy_paths.setdefault(copy.path.rsplit("/", 1)[-1], []).append((entry, copy))


# ---- matching ------------------------------------------------------------------------------------

def _glob(pattern, literal):
    """`pattern` (a name, maybe with '*' wildcards from f-strings) matches the name `literal`."""
    if _UNKNOWN not in pattern:
        return pattern == literal
    if len(pattern.replace(_UNKNOWN, "")) < 3:
        return False
    pieces = pattern.split(_UNKNOWN)
    if not literal.startswith(pieces[0]) or not literal.endswith(pieces[-1]):
        return False
    at = len(pieces[0])
    for piece in pieces[1:-1]:
        at = literal.find(piece, at)
        if at < 0:
            return False
        at += len(piece)
    return at <= len(literal) - len(pieces[-1])


def _distinctive(name):
    """Whether a lone attribute name is specific enough to match without knowing its owner."""
    return any(c.isupper() for c in name) or len(name.strip("_")) >= 15


def match(parts, symbol):
    """How the resolved target `parts` matches `symbol`: "exact", "import", "name", "pattern",
    "possible", or None."""
    head = parts[0]
    if head == _LOCAL:
        return None
    want = symbol.qual + ((f"[{symbol.key}]",) if symbol.kind == "item" else ())
    body = parts[1:] if head == _UNRESOLVED else parts
    possible = False
    if body and body[-1] in (_UNKNOWN, "[*]") and len(want) >= 2:
        # setattr(Cls, <unknown name>, ...) / NAME[<unknown key>] = ...: the owner must match
        body, want, possible = body[:-1], want[:-1], True
    if len(body) < len(want):
        return None
    tail = body[len(body) - len(want):]
    wild = False
    for got, expected in zip(tail, want):
        if got == expected:
            continue
        if not _glob(got, expected):
            return None
        wild = True
    if head == _UNRESOLVED:
        if len(want) < 2 and not _distinctive(want[0]):
            return None
        if all(_UNKNOWN in got for got in tail):
            return None
        return "possible" if possible else ("pattern" if wild else "name")
    if not _glob(head, symbol.root) or len(body) == len(want):
        return None
    if len(want) == 1:
        # a module-level name: the path must be its module or a package above it (a re-export)
        owner = body[: len(body) - 1]
        if len(owner) > len(symbol.module) or not all(
                _glob(got, expected) for got, expected in zip(owner, symbol.module)):
            return None
    if possible:
        return "possible"
    if wild or _UNKNOWN in head:
        return "pattern"
    return "exact" if body[: len(body) - len(want)] == symbol.module else "import"


_STRENGTH = {"exact": 5, "import": 4, "name": 3, "pattern": 2, "possible": 1}


# ---- reading one file ----------------------------------------------------------------------------

class _Scope:
    __slots__ = ("parent", "bindings", "stars", "node", "decorators", "elements")

    def __init__(self, parent, node=None, decorators=()):
        self.parent, self.node, self.decorators = parent, node, decorators
        self.bindings, self.stars, self.elements = {}, [], {}

    def bind(self, name, value, scope):
        self.bindings.setdefault(name, []).append((value, scope))


class _Site:
    __slots__ = ("line", "form", "targets", "scope", "call_key", "value")

    def __init__(self, line, form, targets, scope, call_key=None, value=None):
        self.line, self.form, self.targets, self.scope, self.call_key = line, form, targets, scope, call_key
        self.value = value  # the assigned expression, where there is one


class FileScan:
    """The patch sites of one parsed module, with their targets resolved through its names."""

    def __init__(self, tree, module_name, is_package):
        self.module_name, self.is_package = module_name, is_package
        self.sites = []
        self.defs = []  # (qualname, line, scope)
        self._calls = []  # (call node, scope) of calls to plain names, for argument binding
        self._functions = {}
        self._param_bindings = {}  # id(function node) -> [(parameter, argument, caller scope)]
        self._memo = {}
        self._walk(tree)
        self._bind_arguments()

    # -- collecting bindings and sites --
    def _walk(self, tree):
        module_scope = _Scope(None, tree)
        stack = [(tree, module_scope, ())]
        FunctionDef, AsyncFunctionDef, ClassDef, Lambda = (ast.FunctionDef, ast.AsyncFunctionDef,
                                                           ast.ClassDef, ast.Lambda)
        handlers = {
            ast.Import: self._import, ast.ImportFrom: self._import_from, ast.Assign: self._assign,
            ast.AugAssign: self._aug_assign, ast.AnnAssign: self._ann_assign, ast.For: self._for,
            ast.AsyncFor: self._for, ast.comprehension: self._for, ast.Call: self._call,
            ast.NamedExpr: self._named, ast.withitem: self._withitem,
        }
        while stack:
            node, scope, classes = stack.pop()
            kind = type(node)
            if kind is FunctionDef or kind is AsyncFunctionDef or kind is ClassDef:
                scope.bind(node.name, (_LOCAL,) + classes + (node.name,), None)
                self.defs.append((".".join(classes + (node.name,)), node.lineno, scope))
                for decorator in node.decorator_list:
                    stack.append((decorator, scope, classes))
                if kind is ClassDef:
                    for base in node.bases:
                        stack.append((base, scope, classes))
                    inner, inner_classes = _Scope(scope, node), classes + (node.name,)
                else:
                    self._functions.setdefault(node.name, []).append(node)
                    inner = _Scope(scope, node, tuple(_decorator_names(node)))
                    inner_classes = classes
                    args = node.args
                    for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
                        stack.append((default, scope, classes))
                for child in reversed(node.body):
                    stack.append((child, inner, inner_classes))
                continue
            if kind is Lambda:
                stack.append((node.body, _Scope(scope, node), classes))
                continue
            handler = handlers.get(kind)
            if handler is not None:
                handler(node, scope)
            fields = _FIELDS.get(kind)
            if fields is None:
                fields = _FIELDS[kind] = tuple(f for f in kind._fields if f not in _SKIP_FIELDS)
            for field in fields:
                child = getattr(node, field, None)
                if type(child) is list:
                    for item in child:
                        if isinstance(item, AST) and type(item) not in _LEAVES:
                            stack.append((item, scope, classes))
                elif isinstance(child, AST) and type(child) not in _LEAVES:
                    stack.append((child, scope, classes))

    def _import(self, node, scope):
        for alias in node.names:
            if alias.asname:
                scope.bind(alias.asname, tuple(alias.name.split(".")), None)
            else:
                top = alias.name.split(".")[0]
                scope.bind(top, (top,), None)

    def _import_from(self, node, scope):
        base = self._absolute(node.module, node.level)
        if base is None:
            return
        for alias in node.names:
            if alias.name == "*":
                scope.stars.append(base)
            else:
                scope.bind(alias.asname or alias.name, base + (alias.name,), None)

    def _absolute(self, module, level):
        if not level:
            return tuple(module.split(".")) if module else None
        package = self.module_name.split(".") if self.module_name else []
        if not self.is_package:
            package = package[:-1]
        if level > 1:
            package = package[: len(package) - (level - 1)] if level - 1 <= len(package) else []
        parts = tuple(package) + (tuple(module.split(".")) if module else ())
        return parts or None

    def _bind_target(self, target, value, scope):
        kind = type(target)
        if kind is ast.Name:
            scope.bind(target.id, value, scope)
        elif kind in (ast.Tuple, ast.List):
            elements = value.elts if type(value) in (ast.Tuple, ast.List) else None
            if elements is not None and len(elements) == len(target.elts):
                for sub, val in zip(target.elts, elements):
                    self._bind_target(sub, val, scope)

    def _assign(self, node, scope):
        for target in node.targets:
            self._bind_target(target, node.value, scope)
            self._store_sites(target, node, scope)

    def _aug_assign(self, node, scope):
        if type(node.target) is ast.Name:
            scope.elements.setdefault(node.target.id, []).append(("extend", node.value))
        self._store_sites(node.target, node, scope)

    def _ann_assign(self, node, scope):
        if node.value is not None:
            self._bind_target(node.target, node.value, scope)
            self._store_sites(node.target, node, scope)

    def _named(self, node, scope):
        self._bind_target(node.target, node.value, scope)

    def _withitem(self, node, scope):
        if node.optional_vars is not None:
            self._bind_target(node.optional_vars, node.context_expr, scope)

    def _for(self, node, scope):
        target, source = node.target, node.iter
        if type(source) is ast.Call and type(source.func) is ast.Attribute and \
                source.func.attr == "items" and type(target) in (ast.Tuple, ast.List) and \
                len(target.elts) == 2:
            for position, name in enumerate(target.elts):
                if type(name) is ast.Name:
                    scope.bind(name.id, ("items", source.func.value, position), scope)
            return
        if type(target) is ast.Name:
            scope.bind(target.id, ("each", source), scope)
        elif type(target) in (ast.Tuple, ast.List):
            for position, sub in enumerate(target.elts):
                if type(sub) is ast.Name:
                    scope.bind(sub.id, ("each", source, position), scope)
        else:
            self._store_sites(target, node, scope)

    def _store_sites(self, target, node, scope):
        kind = type(target)
        if kind is ast.Attribute or kind is ast.Subscript:
            self.sites.append(_Site(node.lineno, "assignment", (target,), scope,
                                    value=getattr(node, "value", None)))
        elif kind in (ast.Tuple, ast.List):
            for sub in target.elts:
                self._store_sites(sub, node, scope)
        elif kind is ast.Starred:
            self._store_sites(target.value, node, scope)

    def _call(self, node, scope):
        func = node.func
        kind = type(func)
        if kind is ast.Name:
            name = func.id
            self._calls.append((node, scope))
        elif kind is ast.Attribute:
            name = func.attr
        else:
            return
        args = node.args
        if name == "setattr" and len(args) >= 2:
            self.sites.append(_Site(node.lineno, "setattr", ("setattr", args[0], args[1]), scope,
                                    value=args[2] if len(args) > 2 else None))
        elif name == "__setattr__" and len(args) >= 3:
            self.sites.append(_Site(node.lineno, "setattr", ("setattr", args[0], args[1]), scope))
        elif name in _WRAPT:
            module = args[0] if args else _keyword(node, "module", "target", "parent")
            attribute = args[1] if len(args) > 1 else _keyword(node, "name", "attribute")
            if module is not None and attribute is not None:
                self.sites.append(_Site(node.lineno, "wrapt", ("path", module, attribute), scope))
        elif name in _WRAPPER_TYPES and args:
            self.sites.append(_Site(node.lineno, "wrapt wrapper", (args[0],), scope))
        elif name == "wraps" and args:
            self.sites.append(_Site(node.lineno, "functools.wraps", (args[0],), scope))
        elif name == "update_wrapper" and len(args) >= 2:
            self.sites.append(_Site(node.lineno, "functools.wraps", (args[1],), scope))
        elif name in ("patch", "object", "multiple", "dict", "setitem") and kind is ast.Attribute \
                or name == "patch":
            self._mock(node, name, scope)
        elif name in ("append", "add", "extend", "insert") and kind is ast.Attribute and \
                type(func.value) is ast.Name and args:
            scope_of = scope
            scope_of.elements.setdefault(func.value.id, []).append(
                ("extend" if name == "extend" else "append", args[-1]))
        elif name in _REGISTRY_METHODS and kind is ast.Attribute:
            keys = _registry_keys(node, name)
            self.sites.append(_Site(node.lineno, "registry", ("item", func.value, keys), scope))
        else:
            self.sites.append(_Site(node.lineno, "call", ("call", func), scope, node))

    def _mock(self, node, name, scope):
        """mock.patch("a.b.C.x"), patch.object(C, "x"), patch.multiple(...), patch.dict(...),
        monkeypatch.setattr / setitem (the `.setattr` form is handled as setattr)."""
        args = node.args
        if name == "patch" and args:
            self.sites.append(_Site(node.lineno, "mock.patch", ("string", args[0]), scope))
        elif name == "object" and len(args) >= 2:
            self.sites.append(_Site(node.lineno, "mock.patch", ("setattr", args[0], args[1]), scope))
        elif name == "multiple" and args:
            for keyword in node.keywords:
                if keyword.arg:
                    self.sites.append(_Site(node.lineno, "mock.patch",
                                            ("named", args[0], keyword.arg), scope))
        elif name in ("dict", "setitem") and len(args) >= 2:
            keys = _dict_keys(args[1]) if name == "dict" else None
            self.sites.append(_Site(node.lineno, "mock.patch", ("item", args[0], keys,
                                                                 args[1] if name == "setitem" else None),
                                    scope))

    def _bind_arguments(self):
        """A function of this file called with resolvable arguments: bind its parameters to them."""
        for call, scope in self._calls:
            for function in self._functions.get(call.func.id, ()):
                params = [a.arg for a in function.args.posonlyargs + function.args.args]
                for name, value in zip(params, call.args):
                    if type(value) is not ast.Starred:
                        self._param_bindings.setdefault(id(function), []).append((name, value, scope))
                for keyword in call.keywords:
                    if keyword.arg:
                        self._param_bindings.setdefault(id(function), []).append(
                            (keyword.arg, keyword.value, scope))

    # -- resolution --
    def lookup(self, name, scope):
        """Candidate resolutions of the name `name` seen from `scope`."""
        found = set()
        current = scope
        while current is not None:
            if name in current.bindings:
                for value, where in current.bindings[name]:
                    found |= self._value(value, where)
                    if len(found) > _MAX_VALUES:
                        return found
                break
            node = current.node
            if node is not None and type(node) in (ast.FunctionDef, ast.AsyncFunctionDef):
                for param, value, where in self._param_bindings.get(id(node), ()):
                    if param == name:
                        found |= self.resolve(value, where)
                if found:
                    break
            current = current.parent
        if not found:
            module_scope = scope
            while module_scope.parent is not None:
                module_scope = module_scope.parent
            found = {star + (name,) for star in module_scope.stars}
            found.add((_UNRESOLVED, name))
        return found

    def _value(self, value, scope):
        if type(value) is tuple:
            if value and value[0] == "each":
                return self._each(value[1], scope, value[2] if len(value) > 2 else None)
            if value and value[0] == "items":
                return self._items(value[1], scope, value[2])
            return {value}
        return self.resolve(value, scope)

    def _elements(self, node, scope, depth=0):
        """The element expressions of a literal sequence `node` (following names)."""
        kind = type(node)
        if kind in (ast.Tuple, ast.List, ast.Set):
            return [(element, scope) for element in node.elts]
        if kind is ast.Name and depth < 4:
            out, current = [], scope
            while current is not None:
                if node.id in current.bindings or node.id in current.elements:
                    for value, where in current.bindings.get(node.id, ()):
                        if where is not None and not isinstance(value, tuple):
                            out += self._elements(value, where, depth + 1)
                    for how, value in current.elements.get(node.id, ()):
                        if how == "append":
                            out.append((value, current))
                        else:
                            out += self._elements(value, current, depth + 1)
                    break
                current = current.parent
            return out
        if kind is ast.BinOp and type(node.op) is ast.Add:
            return self._elements(node.left, scope, depth) + self._elements(node.right, scope, depth)
        return []

    def _each(self, source, scope, position):
        found = set()
        elements = self._elements(source, scope)
        for element, where in elements:
            if position is not None:
                if type(element) in (ast.Tuple, ast.List) and position < len(element.elts):
                    found |= self.resolve(element.elts[position], where)
            else:
                found |= self.resolve(element, where)
        return found or {(_UNRESOLVED, _UNKNOWN)}

    def _items(self, source, scope, index):
        found = set()
        for node, where in self._dicts(source, scope):
            for key, value in zip(node.keys, node.values):
                if key is not None:
                    found |= self.resolve(key if index == 0 else value, where)
        return found or {(_UNRESOLVED, _UNKNOWN)}

    def _dicts(self, node, scope, depth=0):
        if type(node) is ast.Dict:
            return [(node, scope)]
        if type(node) is ast.Name and depth < 4:
            current = scope
            while current is not None:
                if node.id in current.bindings:
                    out = []
                    for value, where in current.bindings[node.id]:
                        if where is not None and not isinstance(value, tuple):
                            out += self._dicts(value, where, depth + 1)
                    return out
                current = current.parent
        return []

    def resolve(self, node, scope):
        """Candidate dotted paths of the expression `node`, as tuples of names. A first element
        "?" means the base is unknown here; "*" stands for a name that is not a literal; string
        constants come back as ("'", text)."""
        key = (id(node), id(scope))
        memo = self._memo.get(key)
        if memo is not None:
            return memo
        self._memo[key] = {(_UNRESOLVED, _UNKNOWN)}  # recursion guard
        found = self._resolve(node, scope)
        if len(found) > _MAX_VALUES:
            found = set(list(found)[:_MAX_VALUES])
        self._memo[key] = found
        return found

    def _resolve(self, node, scope):
        kind = type(node)
        if kind is ast.Name:
            return self.lookup(node.id, scope)
        if kind is ast.Attribute:
            return {base + (node.attr,) for base in self.resolve(node.value, scope)
                    if base[0] != "'"}
        if kind is ast.Constant:
            return {("'", node.value)} if isinstance(node.value, str) else set()
        if kind is ast.JoinedStr or kind is ast.BinOp:
            return {("'", text) for text in self.strings(node, scope)}
        if kind is ast.Subscript:
            bases = self.resolve(node.value, scope)
            keys = self.strings(node.slice, scope)
            out = set()
            for base in bases:
                if base[0] == "'":
                    continue
                for text in keys:
                    if base[-2:] == ("sys", "modules") or base == ("sys", "modules"):
                        out.add(tuple(text.split(".")) if text != _UNKNOWN else (_UNRESOLVED, _UNKNOWN))
                    else:
                        out.add(base + (f"[{text}]",))
            return out
        if kind is ast.Call:
            return self._resolve_call(node, scope)
        if kind is ast.IfExp:
            return self.resolve(node.body, scope) | self.resolve(node.orelse, scope)
        if kind is ast.BoolOp:
            out = set()
            for value in node.values:
                out |= self.resolve(value, scope)
            return out
        if kind is ast.Starred:
            return self.resolve(node.value, scope)
        return {(_UNRESOLVED, _UNKNOWN)}

    def _resolve_call(self, node, scope):
        func = node.func
        name = func.id if type(func) is ast.Name else func.attr if type(func) is ast.Attribute else None
        args = node.args
        if name == "getattr" and len(args) >= 2:
            out = set()
            for base in self.resolve(args[0], scope):
                if base[0] != "'":
                    for text in self.strings(args[1], scope):
                        out.add(base + tuple(text.split(".")))
            if len(args) > 2:
                out |= {p for p in self.resolve(args[2], scope) if p[0] != "'"}
            return out
        if args and name and (name in ("import_module", "__import__") or "import" in name.lower()
                     and type(func) is ast.Name and name not in self._functions):
            # importlib.import_module("a.b"), and helpers such as import_optional_module("a.b")
            return {tuple(text.split(".")) for text in self.strings(args[0], scope) if text != _UNKNOWN} \
                or {(_UNRESOLVED, _UNKNOWN)}
        if name == "get" and args and type(func) is ast.Attribute:
            bases = self.resolve(func.value, scope)
            if any(base[-2:] == ("sys", "modules") for base in bases):
                return {tuple(text.split(".")) for text in self.strings(args[0], scope) if text != _UNKNOWN} \
                    or {(_UNRESOLVED, _UNKNOWN)}
        if name in ("staticmethod", "classmethod") and args:
            return self.resolve(args[0], scope)
        return {base + ("()",) for base in self.resolve(func, scope) if base[0] != "'"}

    def strings(self, node, scope, depth=0):
        """Candidate values of a string expression; '*' stands for the parts not known here."""
        kind = type(node)
        if kind is ast.Constant:
            return {node.value} if isinstance(node.value, str) else {_UNKNOWN}
        if kind is ast.JoinedStr:
            texts = {""}
            for value in node.values:
                if type(value) is ast.Constant:
                    parts = {str(value.value)}
                else:
                    parts = self.strings(value.value, scope, depth + 1) if depth < 3 else {_UNKNOWN}
                texts = {a + b for a in texts for b in parts}
                if len(texts) > _MAX_VALUES:
                    return {_UNKNOWN}
            return {_squash(text) for text in texts}
        if kind is ast.BinOp and type(node.op) is ast.Add:
            left, right = self.strings(node.left, scope, depth), self.strings(node.right, scope, depth)
            out = {_squash(a + b) for a in left for b in right}
            return out if len(out) <= _MAX_VALUES else {_UNKNOWN}
        if kind is ast.Name and depth < 4:
            out = set()
            for value in self.lookup(node.id, scope):
                out.add(value[1] if value[0] == "'" else _UNKNOWN)
            return out or {_UNKNOWN}
        return {_UNKNOWN}

    # -- the targets of a site --
    def targets(self, site):
        spec = site.targets
        scope = site.scope
        if len(spec) == 1:
            return self._target_of(spec[0], scope)
        form = spec[0]
        if form == "setattr":
            out = set()
            names = self.strings(spec[2], scope)
            for base in self.resolve(spec[1], scope):
                if base[0] == "'":  # monkeypatch.setattr("pkg.mod.Cls.attr", value)
                    out.add(tuple(base[1].split(".")))
                    continue
                for name in names:
                    out.add(base + (tuple(name.split(".")) if name != _UNKNOWN else (_UNKNOWN,)))
            return out
        if form == "path":
            out = set()
            names = self.strings(spec[2], scope)
            for base in self.resolve(spec[1], scope):
                if base[0] == "'":
                    base = tuple(base[1].split("."))
                for name in names:
                    out.add(base + tuple(name.split(".")))
            return out
        if form == "string":
            return {tuple(text.split(".")) for text in self.strings(spec[1], scope) if "." in text}
        if form == "named":
            out = set()
            for base in self.resolve(spec[1], scope):
                if base[0] == "'":
                    base = tuple(base[1].split("."))
                out.add(base + (spec[2],))
            return out
        if form == "item":
            out = set()
            keys = spec[2] if spec[2] else None
            if len(spec) > 3 and spec[3] is not None:
                keys = self.strings(spec[3], scope)
            for base in self.resolve(spec[1], scope):
                if base[0] == "'":
                    base = tuple(base[1].split("."))
                for key in keys or (_UNKNOWN,):
                    out.add(base + (f"[{key}]",))
            return out
        if form == "call":
            return {base for base in self.resolve(spec[1], scope) if base[0] != "'"}
        return set()

    def _target_of(self, node, scope):
        kind = type(node)
        if kind is ast.Subscript:
            out = set()
            keys = self.strings(node.slice, scope)
            for base in self.resolve(node.value, scope):
                if base[0] == "'":
                    continue
                for key in keys:
                    if base[-2:] == ("sys", "modules"):
                        out.add(("sys", "modules", f"[{key}]"))
                    else:
                        out.add(base + (f"[{key}]",))
            return out
        return {p for p in self.resolve(node, scope) if p[0] != "'"}


def _squash(text):
    while "**" in text:
        text = text.replace("**", "*")
    return text


def _keyword(node, *names):
    for keyword in node.keywords:
        if keyword.arg in names:
            return keyword.value
    return None


def _dict_keys(node):
    if type(node) is ast.Dict:
        keys = [k.value for k in node.keys if type(k) is ast.Constant and isinstance(k.value, str)]
        if len(keys) == len(node.keys):
            return tuple(keys)
    return None


def _registry_keys(node, method):
    if method == "update":
        keys = []
        for arg in node.args:
            found = _dict_keys(arg)
            if found is None:
                return None
            keys += found
        keys += [k.arg for k in node.keywords if k.arg]
        return tuple(keys) or None
    if node.args and type(node.args[0]) is ast.Constant and isinstance(node.args[0].value, str):
        return (node.args[0].value,)
    return None


def _decorator_names(node):
    for decorator in node.decorator_list:
        target = decorator.func if type(decorator) is ast.Call else decorator
        if type(target) is ast.Attribute:
            yield target.attr
        elif type(target) is ast.Name:
            yield target.id


# ---- the tree ------------------------------------------------------------------------------------

def is_test_path(relative):
    parts = relative.replace(os.sep, "/").split("/")
    name = parts[-1]
    return (any(part in _TEST_DIRS for part in parts[:-1]) or name.startswith("test_")
            or name.endswith("_test.py") or name == "conftest.py")


def python_files(root, include_tests=False):
    """(path, relative path) of the .py files under `root`, sorted; tests left out unless asked."""
    if os.path.isfile(root):
        yield root, os.path.basename(root)
        return
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")
                         and (include_tests or d not in _TEST_DIRS) and not d.endswith(".egg-info"))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, root)
                if include_tests or not is_test_path(relative):
                    yield path, relative


def _module_name(relative):
    parts = relative.replace(os.sep, "/")[:-3].split("/")
    if parts and parts[0] == "src" and len(parts) > 1:
        parts = parts[1:]
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def own_packages(root):
    """Top-level package names the tree defines itself (a patch of those is not a hand patch)."""
    names = set()
    if not os.path.isdir(root):
        return names
    for base in (root, os.path.join(root, "src")):
        try:
            listing = os.listdir(base)
        except OSError:
            continue
        for name in listing:
            path = os.path.join(base, name)
            if name.endswith(".py"):
                names.add(name[:-3])
            elif os.path.isfile(os.path.join(path, "__init__.py")):
                names.add(name)
    return names


class Finding:
    __slots__ = ("file", "line", "form", "target", "symbol", "entry", "others", "confidence",
                 "copy", "function", "decorators", "value", "copy_rank")

    def as_dict(self):
        return {
            "file": self.file, "line": self.line, "form": self.form, "target": self.target,
            "symbol": self.symbol.text if self.symbol else None, "confidence": self.confidence,
            "copy": _copy_dict(self.copy) if self.copy else None,
            "function": self.function,
        }


def _copy_dict(copy):
    return {"project": copy.project, "path": copy.path, "function": copy.function,
            "commit": copy.commit, "inventory": copy.inventory}


def _target_text(parts):
    head = parts[0]
    body = parts[1:] if head == _UNRESOLVED else parts
    text = ".".join(body).replace(".[", "[").replace(".()", "()")
    return text


def _in_copy(relative, copy):
    path = relative.replace(os.sep, "/")
    return bool(copy.path) and (path == copy.path or path.endswith("/" + copy.path)
                                or copy.path.endswith("/" + path))


def scan_file(path, relative, index, own=frozenset(), collect_other=False):
    """(findings, others, error) of one file."""
    try:
        with open(path, "rb") as handle:
            source = handle.read()
        tree = ast.parse(source, filename=relative)
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError) as exc:
        return [], [], f"{type(exc).__name__}: {exc}"
    try:
        return _scan_tree(tree, relative, index, own, collect_other)
    except RecursionError as exc:  # pathologically deep code: say so, go on with the tree
        return [], [], f"not analysed: {type(exc).__name__}: {exc}"


def _scan_tree(tree, relative, index, own, collect_other):
    module_name, is_package = _module_name(relative)
    scan = FileScan(tree, module_name, is_package)
    functions = _enclosing_functions(scan)
    findings, others = [], []
    copies_here = []
    for qualname, line, scope in scan.defs:
        chosen = {}
        for entry, copy in index.copies.get(qualname.split(".")[-1], ()):
            if copy.function != qualname and "." in copy.function:
                continue
            if entry.name not in chosen or _in_copy(relative, copy) and \
                    not _in_copy(relative, chosen[entry.name][3]):
                chosen[entry.name] = (line, qualname, entry, copy)
        copies_here += chosen.values()
    for site in scan.sites:
        if site.form == "call":
            func = site.targets[1]
            call_name = func.id if type(func) is ast.Name else getattr(func, "attr", None)
            if call_name not in index.calls:
                continue
        function, decorators = functions.get(id(site.scope), (None, ()))
        best = {}  # entry name -> (strength, entry, symbol, confidence, parts): the best target
        for parts in scan.targets(site):
            if not parts or parts[0] in own:
                continue
            matched = _best_match(parts, site, scan, index)
            for strength, entry, symbol, confidence in matched:
                if entry.name not in best or best[entry.name][0] < strength:
                    best[entry.name] = (strength, entry, symbol, confidence, parts)
            if not matched and collect_other and site.form not in ("call", "functools.wraps",
                                                                   "wrapt wrapper") \
                    and not (site.form == "registry" and len(parts) <= 2):
                if (parts[0] not in (_UNRESOLVED, _LOCAL, "'") and parts[0] not in _stdlib()
                        and "()" not in parts) or parts[:2] == ("sys", "modules"):
                    others.append({"file": relative, "line": site.line, "form": site.form,
                                   "target": _target_text(parts), "function": function})
        ranked = sorted(best.values(), key=lambda t: (-t[0], t[1].order))
        for strength, entry, symbol, confidence, parts in ranked:
            finding = Finding()
            finding.file, finding.line, finding.form = relative, site.line, site.form
            finding.target, finding.symbol, finding.entry = _target_text(parts), symbol, entry
            finding.others = [t[1] for t in ranked if t[1] is not entry]
            finding.confidence, finding.copy = confidence, None
            finding.function, finding.decorators = function, decorators
            finding.value = _value_names(scan, site) if site.value is not None else ()
            findings.append(finding)
    # a wraps()/FunctionWrapper() of a symbol whose patch this file also assigns: the same patch
    assigned = {(f.entry.name, f.symbol.text) for f in findings if f.form not in _WRAPPING}
    findings = [f for f in findings if f.form not in _WRAPPING
                or (f.entry.name, f.symbol.text) not in assigned]
    findings = _attach_copies(findings, copies_here, relative, scan, functions)
    return findings, _dedupe(others), None


def _best_match(parts, site, scan, index):
    """[(strength, entry, symbol, confidence)] of the entries whose symbols `parts` matches: the
    best symbol per entry."""
    if site.form == "call":
        candidates = index.calls.get(parts[-2] if parts[-1] == "()" else parts[-1], ())
        found = {}
        for entry, symbol in candidates:
            confidence = match(parts, symbol)
            if confidence is None:
                continue
            if symbol.key is not None:
                call = site.call_key
                first = call.args[0] if call.args else _keyword(call, "key", "model_type", "name")
                keys = scan.strings(first, site.scope) if first is not None else {_UNKNOWN}
                if symbol.key not in keys:
                    if _UNKNOWN not in keys:
                        continue
                    confidence = "possible"
            _keep(found, entry, symbol, confidence)
        return sorted(found.values(), key=lambda t: (-t[0], t[1].order))
    last = parts[-1]
    candidates = list(index.by_last.get(last, ()))
    if last in (_UNKNOWN, "[*]") and len(parts) > 1:
        candidates = [c for name in index.by_last for c in index.by_last[name]
                      if len(c[1].qual) >= 2 and c[1].kind == "attribute"
                      and _glob(parts[-2], c[1].qual[-2])] if last == _UNKNOWN else \
            [c for c in index.by_last.get(parts[-2], ()) if c[1].kind == "item"]
    elif last.startswith("[") and len(parts) > 1:
        candidates = [c for c in index.by_last.get(parts[-2], ()) if c[1].kind == "item"]
    elif _UNKNOWN in last:
        candidates = [c for name, items in index.by_last.items() if _glob(last, name) for c in items]
    found = {}
    for entry, symbol in candidates:
        confidence = match(parts, symbol)
        if confidence is not None:
            _keep(found, entry, symbol, confidence)
    return sorted(found.values(), key=lambda t: (-t[0], t[1].order))


def _keep(found, entry, symbol, confidence):
    strength = _STRENGTH[confidence]
    if entry.name not in found or found[entry.name][0] < strength:
        found[entry.name] = (strength, entry, symbol, confidence)


def _enclosing_functions(scan):
    """id(scope) -> (qualified function name, decorator names) for each function scope."""
    out, seen = {}, {}

    def name_of(scope):
        key = id(scope)
        if key in seen:
            return seen[key]
        names, current, decorators = [], scope, ()
        while current is not None and current.node is not None:
            node = current.node
            if type(node) in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef):
                names.append(node.name)
                if not decorators and current.decorators:
                    decorators = current.decorators
            current = current.parent
        value = (".".join(reversed(names)) or None, decorators)
        seen[key] = value
        return value

    for site in scan.sites:
        out[id(site.scope)] = name_of(site.scope)
    for _, _, scope in scan.defs:
        out.setdefault(id(scope), name_of(scope))
    return out


def _value_names(scan, site):
    """The last names of what an assignment puts in place (to link it to a known copy)."""
    names = set()
    for parts in scan.resolve(site.value, site.scope):
        if parts and parts[-1] not in ("()", _UNKNOWN):
            names.add(parts[-1])
        elif len(parts) > 1 and parts[-1] == "()":
            names.add(parts[-2])
    return names


def _attach_copies(findings, copies_here, relative, scan, functions):
    """Mark findings inside a known copy; a known copy without a finding is a finding itself."""
    for finding in findings:
        rank, finding.copy = 0, None
        for line, qualname, entry, copy in copies_here:  # the site is inside the copy's function
            if entry is finding.entry and finding.function and (
                    finding.function == qualname or finding.function.startswith(qualname + ".")):
                rank, finding.copy = 3, copy
        if not rank:
            for copy in finding.entry.copies:
                if not copy.function and _in_copy(relative, copy):  # the whole module is the copy
                    rank, finding.copy = 3, copy
                elif copy.function and copy.function.split(".")[-1] in finding.value:
                    rank, finding.copy = 2, copy  # it installs the copy's function
        if not rank:
            in_file = [c for c in finding.entry.copies if _in_copy(relative, c)]
            if in_file:  # in a file a known copy names
                rank, finding.copy = 1, in_file[0]
        finding.copy_rank = rank
    # a site several entries declare: the one whose known copy it is in, else the records
    by_site = {}
    for finding in findings:
        by_site.setdefault((finding.line, finding.form), []).append(finding)
    kept = []
    for group in by_site.values():
        best = max(group, key=lambda f: (f.copy_rank, f.entry.kind == "record",
                                         _STRENGTH[f.confidence], -f.entry.order))
        best.others = [f.entry for f in group if f.entry is not best.entry]
        kept.append(best)
    covered = {id(f.copy) for f in kept if f.copy is not None and f.copy_rank >= 2}
    for line, qualname, entry, copy in copies_here:
        if id(copy) in covered:
            continue
        in_path = _in_copy(relative, copy)
        finding = Finding()
        finding.file, finding.line, finding.form = relative, line, "known copy" if in_path else \
            "known copy's name"
        finding.target, finding.symbol, finding.entry, finding.others = qualname, None, entry, []
        finding.confidence, finding.copy = "exact" if in_path else "name", copy
        finding.function, finding.decorators, finding.value = qualname, (), ()
        finding.copy_rank = 3
        kept.append(finding)
        covered.add(id(copy))
    return kept


def _dedupe(items):
    seen, out = set(), []
    for item in items:
        key = (item["line"], item["target"])
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


_STDLIB = None


def _stdlib():
    global _STDLIB
    if _STDLIB is None:
        _STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | {"builtins", "__builtins__"}
    return _STDLIB


# ---- versions: is the record needed here? ----------------------------------------------------------

def parse_for(values):
    """{'transformers': '5.5.0', ...} from --for values like 'transformers==5.5.0,peft==0.17.1'."""
    versions = {}
    for value in values or ():
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            dist, sep, version = item.partition("==")
            if not sep or not dist.strip() or not version.strip():
                raise ValueError(f"--for takes DIST==VERSION, got {item!r}")
            versions[dist.strip()] = version.strip()
    return versions


class Versions:
    """The version of each distribution: the --for value, else the installed one."""

    def __init__(self, given=None):
        self.given = dict(given or {})
        self._cache = {}

    def __call__(self, dist):
        if dist in self.given:
            return self.given[dist]
        if dist not in self._cache:
            from .core.versions import installed_version

            self._cache[dist] = installed_version(dist)
        return self._cache[dist]


def record_status(record, versions, manager):
    """(needed: True / False / None, why)."""
    parts = []
    for dist, spec in record.affected.items():
        version = versions(dist)
        if version is None:
            return None, f"{dist} is not installed here (say --for {dist}==VERSION)"
        parts.append((dist, version, spec))
    try:
        needed = manager.in_range(record.name)
        from .core.versions import in_range, parse_version
    except ImportError as exc:
        return None, f"cannot compare versions here ({exc})"
    except Exception as exc:  # a bad version string, ...
        return None, f"cannot tell: {type(exc).__name__}: {exc}"
    here = ", ".join(f"{d} {v}" for d, v, _ in parts)
    if needed:
        return True, f"needed: {here} has the bug"
    for dist, version, spec in parts:
        parsed = parse_version(version)
        if parsed is None:
            return None, f"{dist} {version!r} is not a PEP 440 version"
        if not in_range(parsed, spec):
            fixed = f"; fixed in {record.fixed_in}" if record.fixed_in else ""
            return False, f"not needed: {dist} {version} is outside {spec}{fixed}"
    return False, f"not needed here: no target of the record covers {here}"


def not_needed_status(item, versions):
    """(may delete: True / False / None, why) of a not-needed entry."""
    if not item.needed_in:
        return True, f"not needed anywhere ({item.fixed_in})"
    try:
        from .core.versions import in_range, parse_version
    except ImportError as exc:
        return None, f"cannot compare versions here ({exc})"
    unknown = []
    inside = []
    for dist, specs in item.needed_in.items():
        version = versions(dist)
        if version is None:
            unknown.append(dist)
            continue
        parsed = parse_version(version)
        if parsed is None:
            unknown.append(dist)
            continue
        if not any(in_range(parsed, spec) for spec in specs):
            return True, f"delete: {dist} {version} is outside {' or '.join(specs)} ({item.fixed_in})"
        inside.append(f"{dist} {version}")
    if unknown:
        return None, (f"{', '.join(unknown)} not installed here; not needed outside "
                      + "; ".join(f"{d} {' or '.join(s)}" for d, s in item.needed_in.items())
                      + f" ({item.fixed_in})")
    return False, f"keep for now: {', '.join(inside)} may still need it (not needed from {item.fixed_in})"


def use_line(record, decorators=()):
    if record.replaces.use:
        return record.replaces.use
    if "contextmanager" in decorators or "asynccontextmanager" in decorators:
        return f'with compat_patches.patched("{record.name}"):'
    return f'compat_patches.apply_all(only=["{record.name}"])'


# ---- the whole scan ------------------------------------------------------------------------------

def scan(root, *, versions=None, include_tests=False, collect_other=False, records=None,
         not_needed=None):
    """Scan the tree `root`; returns the result as a dict (what --json prints)."""
    started = time.perf_counter()
    versions = versions if isinstance(versions, Versions) else Versions(versions)
    entries = load_entries(records, not_needed)
    index = _Index(entries)
    own = own_packages(root)
    findings, others, skipped, files = [], [], [], 0
    for path, relative in python_files(root, include_tests):
        files += 1
        found, other, error = scan_file(path, relative, index, frozenset(own), collect_other)
        if error:
            skipped.append({"file": relative, "error": error})
        findings += found
        others += other
    manager = _manager(records, versions)
    statuses = {}
    replaced, unnecessary = [], []
    for finding in findings:
        entry = finding.entry
        if entry.name not in statuses:
            if entry.kind == "record":
                statuses[entry.name] = record_status(entry.item, versions, manager)
            else:
                statuses[entry.name] = not_needed_status(entry.item, versions)
        status, why = statuses[entry.name]
        item = finding.as_dict()
        if entry.kind == "record":
            item.update(record=entry.name, needed=status, status=why,
                        use=use_line(entry.item, finding.decorators),
                        also=[e.name for e in finding.others])
            replaced.append(item)
        else:
            item.update(entry=entry.name, summary=entry.item.summary, deletable=status, status=why,
                        fixed_in=entry.item.fixed_in, evidence=entry.item.evidence,
                        verified=entry.item.verified, also=[e.name for e in finding.others])
            unnecessary.append(item)
    dists = sorted({d for e in entries if e.name in statuses for d in _dists(e)})
    result = {
        "path": root,
        "files": files,
        "skipped": skipped,
        "versions": {d: versions(d) for d in dists},
        "given": versions.given,
        "replaced": sorted(replaced, key=_order),
        "not_needed": sorted(unnecessary, key=_order),
        "tests": include_tests,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if collect_other:
        result["other"] = sorted(others, key=_order)
    return result


def _order(item):
    return item["file"], item["line"], item.get("target") or ""


def _dists(entry):
    if entry.kind == "record":
        return entry.item.affected
    return entry.item.needed_in


def _manager(records, versions):
    if records is None and not versions.given:
        import compat_patches

        return compat_patches._default_manager()
    from .core.manager import PatchManager

    if records is None:
        from .patches import ALL_PATCHES as records
    return PatchManager(records, version_of=versions)


# ---- text output ---------------------------------------------------------------------------------

def format_text(result, show_other=False):
    lines = []
    given = result["given"]
    versions = ", ".join(f"{d} {v or 'not installed'}" for d, v in result["versions"].items())
    tests = "" if result.get("tests") else " (tests left out)"
    lines.append(f"compat_patches scan {result['path']}: {result['files']} Python files read "
                 f"in {result['seconds']:.2f} s{tests}")
    if versions:
        lines.append(("versions (--for): " if given else "versions here: ") + versions)
    replaced = result["replaced"]
    lines.append("")
    lines.append(f"Hand patches compat_patches replaces: {len(replaced)} site(s)")
    uses = {}
    for file, group in _by_file(replaced):
        lines.append(f"  {file}")
        for item in group:
            lines.append(f"    {item['line']}: {item['target']} ({_how(item)})")
            lines.append(f"        -> {item['record']}: {item['status']}")
            if item["also"]:
                lines.append(f"        (also declared by: {', '.join(item['also'])})")
            uses.setdefault(item["record"], item["use"])
    if uses:
        lines.append("")
        lines.append("Use instead (after `import compat_patches`, before the library is used):")
        for name, use in uses.items():
            lines.append(f"    {use}    # {name}")
        lines.append("    or every record at once: compat_patches.apply_all()")
    unnecessary = result["not_needed"]
    lines.append("")
    lines.append(f"Hand patches not needed any more: {len(unnecessary)} site(s)")
    for file, group in _by_file(unnecessary):
        lines.append(f"  {file}")
        for item in group:
            lines.append(f"    {item['line']}: {item['target']} ({_how(item)})")
            lines.append(f"        -> {item['entry']}: {item['status']}")
            if not item.get("copy"):
                lines.append("           (not a known copy: check that this patch is the one described)")
            lines.append(f"           {item['evidence']} [{item['verified']}]")
    if show_other and "other" in result:
        lines.append("")
        lines.append(f"Other assignments to library attributes (no record; --all): "
                     f"{len(result['other'])} site(s)")
        for file, group in _by_file(result["other"]):
            lines.append(f"  {file}")
            for item in group:
                lines.append(f"    {item['line']}: {item['target']} ({item['form']})")
    if result["skipped"]:
        lines.append("")
        lines.append(f"Not parsed: {len(result['skipped'])} file(s)")
        for item in result["skipped"]:
            lines.append(f"    {item['file']}: {item['error']}")
    return "\n".join(lines)


def _how(item):
    how = item["form"]
    if item.get("confidence") and item["confidence"] not in ("exact", "import"):
        how += f", matched by {item['confidence']}"
    if item.get("copy"):
        copy = item["copy"]
        row = f" (inventory #{copy['inventory']})" if copy.get("inventory") else ""
        how += f"; known copy: {copy['project']} {copy['function'] or copy['path']}{row}"
    if item.get("function"):
        how += f"; in {item['function']}"
    return how


def _by_file(items):
    groups = {}
    for item in items:
        groups.setdefault(item["file"], []).append(item)
    return groups.items()


# ---- docs: the "Replaces" sections ---------------------------------------------------------------

def replaces_markdown(record):
    """The generated body of a record page's "Replaces" section (between the markers)."""
    import textwrap

    def wrap(text, first="", rest=""):
        return textwrap.fill(" ".join(text.split()), width=100, initial_indent=first,
                             subsequent_indent=rest, break_long_words=False, break_on_hyphens=False)

    replaces = record.replaces
    out = [START]
    if replaces.copies:
        rows = any(copy.inventory for copy in replaces.copies)
        out.append("Known hand patches and workarounds of this bug" + (
            " (row numbers are the field inventory's, 2026-11-28):" if rows else ":"))
        out.append("")
        for copy in replaces.copies:
            label = f"#{copy.inventory}, {copy.short_project}" if copy.inventory else copy.short_project
            where = f" ({copy.project} at {copy.commit})" if copy.commit and "/" in copy.project else \
                (f" ({copy.project})" if copy.project != copy.short_project else "")
            text = f"**{label}**{where}"
            if copy.path:
                text += f" `{copy.path}`"
            if copy.function:
                text += f" `{copy.function}`"
            if copy.what:
                text += f": {copy.what}"
            out.append(wrap(text, "- ", "  "))
        out.append("")
    elif not replaces.note:
        out.append("No hand patch of this bug is known downstream.")
        out.append("")
    if replaces.note:
        for paragraph in replaces.note.split("\n\n"):
            if paragraph.strip().startswith("- "):
                for bullet in paragraph.strip().split("\n- "):
                    out.append(wrap(bullet.strip()[2:] if bullet.strip().startswith("- ") else bullet,
                                    "- ", "  "))
            else:
                out.append(wrap(paragraph))
            out.append("")
    if replaces.symbols:
        copies = " (and for the copies above)" if any(c.function for c in replaces.copies) else ""
        out.append(wrap(f"`python -m compat_patches scan PATH` looks for hand patches of "
                        f"{'this symbol' if len(replaces.symbols) == 1 else 'these symbols'}{copies} "
                        f"and suggests `{use_line(record)}` instead:"))
        out.append("")
        for symbol in replaces.symbols:
            out.append(f"- `{symbol}`")
        out.append("")
    out.append(END)
    return "\n".join(out)


def update_page(text, record, *, source="the page"):
    """`text` with the record's "Replaces" section body regenerated. A section without markers has
    its whole body replaced (up to the next "## " heading)."""
    block = replaces_markdown(record)
    if START in text or END in text:
        if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
            raise ValueError(f"{source} must hold one {START} line and one {END} line after it")
        head, rest = text.split(START)
        tail = rest.split(END, 1)[1]
        return head + block + tail
    heading = "\n## Replaces\n"
    if heading not in text:
        raise ValueError(f"{source} has no '## Replaces' section")
    head, rest = text.split(heading, 1)
    following = rest.find("\n## ")
    if following < 0:
        return f"{head}{heading}\n{block}\n"
    return f"{head}{heading}\n{block}\n{rest[following:]}"


def extract_block(text):
    if text.count(START) != 1 or text.count(END) != 1:
        return None
    return START + text.split(START, 1)[1].split(END, 1)[0] + END


def update_docs(folder, records=None, only=None, check=False):
    """Regenerate the "Replaces" sections under `folder`; returns the names of pages changed (or,
    with check=True, that would change)."""
    if records is None:
        from .patches import ALL_PATCHES as records
    changed = []
    for record in records:
        if only is not None and record.name not in only:
            continue
        page = os.path.join(folder, f"{record.name}.md")
        if not os.path.isfile(page):
            continue
        with open(page, encoding="utf-8") as handle:
            text = handle.read()
        if not record.replaces and START not in text:
            continue
        new = update_page(text, record, source=page)
        if new != text:
            changed.append(record.name)
            if not check:
                with open(page, "w", encoding="utf-8") as handle:
                    handle.write(new)
    return changed


# ---- command line --------------------------------------------------------------------------------

def main(argv=None):
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m compat_patches scan",
        description="Find hand-written monkey-patches in a source tree that compat_patches replaces, "
                    "and hand patches known to be unnecessary. Reads the files with ast: nothing "
                    "is imported or executed.")
    parser.add_argument("path", nargs="?", help="a source tree or one .py file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--for", dest="for_versions", action="append", metavar="DIST==VERSION",
                        help="judge the records for these versions instead of the installed ones "
                             "(repeat, or separate with commas)")
    parser.add_argument("--fail-on-found", action="store_true",
                        help="exit 1 when a replaceable or unnecessary hand patch is found")
    parser.add_argument("--all", dest="show_other", action="store_true",
                        help="also list other assignments to attributes of libraries (no record)")
    parser.add_argument("--include-tests", action="store_true",
                        help="read test files too (left out by default: mock.patch there is a test's)")
    parser.add_argument("--update-docs", nargs="?", const="docs/patches", metavar="DIR",
                        help="regenerate the 'Replaces' sections of DIR/<record>.md from the records "
                             "(default docs/patches)")
    parser.add_argument("--check-docs", nargs="?", const="docs/patches", metavar="DIR",
                        help="exit 1 if a 'Replaces' section under DIR is not the generated one")
    args = parser.parse_args(argv)
    if args.update_docs or args.check_docs:
        folder = args.update_docs or args.check_docs
        changed = update_docs(folder, check=bool(args.check_docs))
        verb = "out of date" if args.check_docs else "updated"
        print(f"{len(changed)} page(s) {verb}" + (": " + ", ".join(changed) if changed else ""))
        return 1 if args.check_docs and changed else 0
    if not args.path:
        parser.error("PATH is required")
    if not os.path.exists(args.path):
        parser.error(f"{args.path}: no such file or directory")
    try:
        given = parse_for(args.for_versions)
    except ValueError as exc:
        parser.error(str(exc))
    result = scan(args.path, versions=given, include_tests=args.include_tests,
                  collect_other=args.show_other)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_text(result, show_other=args.show_other))
    found = result["replaced"] or result["not_needed"]
    return 1 if args.fail_on_found and found else 0


if __name__ == "__main__":
    sys.exit(main())
