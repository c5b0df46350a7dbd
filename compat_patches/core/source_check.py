"""Drift checks read from the installed source files, without importing the target libraries.

What ``python -m compat_patches`` runs by default (``--deep`` imports and applies instead). For each
target a record selects here it

1. finds the target module's file through the import system's finders, executing nothing (no
   parent package is imported either);
2. finds the definition with ``ast``: the class, then the attribute in the class body or along its
   bases in method-resolution order, following ``from ... import`` and ``import`` bindings into other
   installed files;
3. builds a *source stand-in*: the very ``def`` compiled (never run) from that file, inside classes of
   the same names, so that ``inspect.getsource``, ``inspect.signature``, ``__code__``,
   ``__qualname__`` and ``__module__`` answer as they do for the live function; ``staticmethod`` /
   ``classmethod`` are applied, and each decorator that uses ``functools.wraps`` adds a
   ``__wrapped__`` layer, as the live one does;
4. compares ``Target.params`` and runs the record's own ``fixed`` and ``check`` fingerprints on the
   stand-in, in the order and with the outcome ``install.check_drift`` gives them.

It says what it could not check, and never guesses:

- a fingerprint that reads ``sys.modules`` or imports a module that is not imported (it asks about the
  live library, not the source), or that raises on the stand-in, is *not checked from source*;
  ``importlib.util.find_spec`` answers it from the installed files meanwhile, so a fingerprint that
  only reads other source files still runs;
- a definition it cannot find for sure (a star import, a base class it cannot read, such as a
  C extension's, an attribute a class decorator may add, a value computed at run time) is not
  checked; one that is surely absent (every base read, no decorator that could add it) is drift;
- a decorator whose definition builds a call-forwarding wrapper (``*args`` / ``**kwargs``) without
  ``functools.wraps``, a class used as decorator or one it cannot read hides the live signature and
  source: that target is not checked.

Assumed (and what ``--deep`` and the matrix test, which compares both modes on every quick version
set, are there for): class decorators keep the methods the class body defines; a function decorator
with no inner call-forwarding function returns the function it is given; a module that is found
imports (``--deep`` tells when it does not).
"""

import ast
import os
import sys

from .install import _parameter_names
from .report import DRIFTED, NOT_NEEDED

_THIS_FILE = os.path.abspath(__file__)


class Unknown(Exception):
    """The source does not say for sure (the reason is the message)."""


class Missing(LookupError):
    """The source says for sure that the attribute is not there."""


# ----- finding and parsing modules -----------------------------------------------------------------

class _Module:
    __slots__ = ("name", "path", "tree", "is_package", "loader", "lines", "_bindings")

    def __init__(self, name, path, tree, is_package, loader, lines):
        self.name, self.path, self.tree, self.is_package, self.loader = name, path, tree, is_package, loader
        self.lines = lines
        self._bindings = None

    @property
    def package(self):
        return self.name if self.is_package else self.name.rpartition(".")[0]

    def bindings(self):
        """{name: [binding, ...]} of the module's top level, in source order (``if TYPE_CHECKING``
        blocks left out: they bind nothing at run time)."""
        if self._bindings is None:
            self._bindings = {}
            _collect(self.tree.body, self._bindings)
        return self._bindings


def _collect(statements, out):
    for node in statements:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            out.setdefault(node.name, []).append(("def", node))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    out.setdefault(alias.asname, []).append(("module", alias.name))
                else:
                    top = alias.name.split(".")[0]
                    out.setdefault(top, []).append(("module", top))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    out.setdefault("*", []).append(("star", node))
                else:
                    out.setdefault(alias.asname or alias.name, []).append(("from", node, alias.name))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and node.value is not None:
                    out.setdefault(target.id, []).append(("assign", node.value))
                elif isinstance(target, (ast.Tuple, ast.List)):
                    for element in target.elts:
                        if isinstance(element, ast.Name):
                            out.setdefault(element.id, []).append(("unknown", node))
        elif isinstance(node, ast.If):
            test = node.test
            if not (getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"):
                _collect(node.body, out)
            _collect(node.orelse, out)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            _collect(node.body, out)
            for handler in node.handlers:
                _collect(handler.body, out)
            _collect(node.orelse, out)
            _collect(node.finalbody, out)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            _collect(node.body, out)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            for child in ast.walk(node):
                if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                    out.setdefault(child.id, []).append(("unknown", node))


def _is_none(binding):
    return binding[0] == "assign" and isinstance(binding[1], ast.Constant) and binding[1].value is None


class SourceIndex:
    """The installed source, module by module, parsed once; nothing is imported or executed."""

    def __init__(self):
        self._modules = {}
        self._specs = {}

    def spec(self, name):
        """The import system's spec for `name`, found without executing anything, or None."""
        if name not in self._specs:
            self._specs[name] = self._find_spec(name)
        return self._specs[name]

    def _find_spec(self, name):
        from importlib.machinery import PathFinder

        parent, _, _ = name.rpartition(".")
        if parent:
            parent_spec = self.spec(parent)
            path = getattr(parent_spec, "submodule_search_locations", None)
            if not path:
                return None
            path = list(path)
        else:
            path = None
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__spec__", None) is not None:
            return module.__spec__
        try:
            spec = PathFinder.find_spec(name, path)
        except (ImportError, ValueError, OSError):
            spec = None
        if spec is None:  # an editable install's finder, a zip importer, ...
            for finder in sys.meta_path:
                if finder is PathFinder or getattr(finder, "__name__", "") in ("BuiltinImporter", "FrozenImporter"):
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                try:
                    spec = find(name, path)
                except Exception:  # a finder that cannot answer: as if it had none
                    spec = None
                if spec is not None:
                    break
        return spec

    def module(self, name):
        """The parsed module `name`, or None when no installed file defines it."""
        if name in self._modules:
            return self._modules[name]
        spec = self.spec(name)
        parsed = None
        if spec is not None and spec.origin and spec.loader is not None:
            try:
                source = spec.loader.get_source(name)
            except (ImportError, OSError, AttributeError, SyntaxError, UnicodeDecodeError):
                source = None
            if source is not None:
                try:
                    tree = ast.parse(source, filename=spec.origin)
                except (SyntaxError, ValueError):
                    tree = None
                if tree is not None:
                    if not os.path.isfile(spec.origin):  # a zip: let linecache see what we parsed
                        import linecache

                        linecache.cache[spec.origin] = (len(source), None, source.splitlines(True), spec.origin)
                    parsed = _Module(name, spec.origin, tree, spec.submodule_search_locations is not None,
                                     spec.loader, source.splitlines(True))
        self._modules[name] = parsed
        return parsed

    # ----- names ------------------------------------------------------------------------------------

    def lookup(self, module, name, depth=0):
        """What `name` is at the top level of `module`: ("def", module, node), ("module", name)."""
        if depth > 30:
            raise Unknown(f"{module.name}.{name}: import chain too deep")
        bindings = module.bindings().get(name, ())
        if not bindings:
            if "*" in module.bindings():
                raise Unknown(f"{module.name} may bind {name} through a star import")
            if "__getattr__" in module.bindings():
                raise Unknown(f"{module.name} answers {name} at run time (module __getattr__)")
            if module.is_package and self.spec(f"{module.name}.{name}") is not None:
                return ("module", f"{module.name}.{name}")
            raise Missing(f"{module.name} defines no {name}")
        real = [b for b in bindings if not _is_none(b)] or bindings
        binding = real[-1]
        kind = binding[0]
        if kind == "def":
            return ("def", module, binding[1])
        if kind == "module":
            return ("module", binding[1])
        if kind == "from":
            node, attribute = binding[1], binding[2]
            source = _absolute(module, node)
            return self.attribute_of_module(source, attribute, depth + 1)
        if kind == "assign":
            if isinstance(binding[1], (ast.Name, ast.Attribute)):
                return self.expression(module, binding[1], depth + 1)
            return ("value", module, binding[1])
        raise Unknown(f"{module.name}.{name} is bound by code the source check does not follow")

    def attribute_of_module(self, module_name, attribute, depth=0):
        target = self.module(module_name)
        if target is None:
            if self.spec(module_name) is not None:
                raise Unknown(f"cannot read the source of {module_name}")
            raise Missing(f"no installed module {module_name}")
        try:
            return self.lookup(target, attribute, depth)
        except Missing:
            if self.spec(f"{module_name}.{attribute}") is not None:
                return ("module", f"{module_name}.{attribute}")
            raise

    def expression(self, module, node, depth=0):
        """What a Name / Attribute expression of `module` refers to."""
        if isinstance(node, ast.Name):
            if node.id in _BUILTIN_NAMES and node.id not in module.bindings():
                return ("builtin", node.id)
            return self.lookup(module, node.id, depth)
        if isinstance(node, ast.Attribute):
            owner = self.expression(module, node.value, depth)
            if owner[0] == "module":
                return self.attribute_of_module(owner[1], node.attr, depth + 1)
            if owner[0] == "def" and isinstance(owner[2], ast.ClassDef):
                return self.class_attribute(owner, node.attr, depth + 1)
            raise Unknown(f"cannot follow {ast.unparse(node)}")
        raise Unknown(f"{ast.unparse(node)} is computed at run time")

    # ----- classes ----------------------------------------------------------------------------------

    def bases(self, cls, depth=0):
        """The resolved bases of a class ("def", module, ClassDef), unreadable ones as ("unknown", text)."""
        _, module, node = cls
        out = []
        for base in node.bases:
            text = ast.unparse(base)
            try:
                found = self.expression(module, base, depth + 1)
            except (Unknown, Missing):
                out.append(("unknown", text))
                continue
            if found[0] == "builtin" and found[1] == "object":
                continue
            if found[0] != "def" or not isinstance(found[2], ast.ClassDef):
                out.append(("unknown", text))
            else:
                out.append(found)
        return out

    def mro(self, cls, depth=0):
        if depth > 30:
            raise Unknown("class hierarchy too deep")
        if cls[0] == "unknown":
            return [cls]
        bases = self.bases(cls, depth)
        sequences = [self.mro(base, depth + 1) for base in bases] + [list(bases)]
        result = [cls]
        sequences = [list(s) for s in sequences if s]
        while sequences:
            for sequence in sequences:
                head = sequence[0]
                if not any(_same(head, item) for other in sequences for item in other[1:]):
                    break
            else:
                raise Unknown(f"no consistent method resolution order for {cls[2].name}")
            result.append(head)
            sequences = [[i for i in s if not _same(i, head)] for s in sequences]
            sequences = [s for s in sequences if s]
        return result

    def class_attribute(self, cls, attribute, depth=0):
        """The definition `attribute` resolves to on class `cls` (walking its MRO)."""
        own = _in_body(cls[2], attribute)  # the common case: no base class needs to be read
        for owner in ([cls] if own is not None else self.mro(cls, depth)):
            if owner[0] == "unknown":
                raise Unknown(f"{attribute} may come from {owner[1]}, whose source the check cannot read")
            _, module, node = owner
            found = _in_body(node, attribute)
            if found is not None:
                if found[0] == "def":
                    return ("def", module, found[1])
                if not isinstance(found[1], (ast.Name, ast.Attribute)):
                    return ("value", module, found[1])
                try:
                    value = self.expression(module, found[1], depth + 1)
                except Missing as exc:
                    raise Unknown(str(exc)) from None
                return value
            for decorator in node.decorator_list:
                why = class_decorator_adds(self, module, decorator)
                if why:
                    raise Unknown(f"{node.name} is decorated with @{ast.unparse(decorator)}, which "
                                  f"{why}: it may define {attribute}")
            if node.keywords:  # a metaclass may define anything
                raise Unknown(f"{node.name} has class keywords (a metaclass), which may define {attribute}")
        raise Missing(f"{cls[2].name} and its bases define no {attribute}")


_BUILTIN_NAMES = frozenset({"object", "staticmethod", "classmethod", "property", "type"})


def _same(a, b):
    if a[0] == "unknown" or b[0] == "unknown":
        return a[0] == b[0] and a[1] == b[1]
    return a[1] is b[1] and a[2] is b[2]


def _in_body(node, name):
    found = None
    for statement in _flatten(node.body):
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and statement.name == name:
            found = ("def", statement)
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets) and statement.value is not None:
                found = ("assign", statement.value)
    return found


def _flatten(statements):
    for statement in statements:
        if isinstance(statement, ast.If):
            yield from _flatten(statement.body)
            yield from _flatten(statement.orelse)
        else:
            yield statement


def _absolute(module, node):
    if not node.level:
        return node.module or ""
    package = module.package.split(".") if module.package else []
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


# ----- decorators ----------------------------------------------------------------------------------

WRAPS, SAME, OPAQUE = "wraps", "same", "opaque"


def classify_decorator(index, module, decorator):
    """(kind, why): WRAPS (the live object carries ``__wrapped__``), SAME (the function itself) or
    OPAQUE (a wrapper that hides the signature and source, or a decorator the source does not show)."""
    text = "@" + ast.unparse(decorator)
    expression = decorator.func if isinstance(decorator, ast.Call) else decorator
    try:
        found = index.expression(module, expression)
    except (Unknown, Missing) as exc:
        return OPAQUE, f"{text}: {exc}"
    if found[0] == "builtin":
        return (found[1], None) if found[1] in ("staticmethod", "classmethod") else (OPAQUE, f"{text} is builtin {found[1]}")
    if found[0] != "def":
        return OPAQUE, f"{text} is not a function the source check can read"
    node = found[2]
    if isinstance(node, ast.ClassDef):
        return OPAQUE, f"{text} is a class (its instances wrap the function)"
    calls_wraps, forwards = False, False
    for child in ast.walk(node):
        if isinstance(child, ast.Call):
            name = getattr(child.func, "id", None) or getattr(child.func, "attr", None)
            if name in ("wraps", "update_wrapper"):
                calls_wraps = True
        if child is not node and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if child.args.vararg is not None or child.args.kwarg is not None:
                forwards = True
    if calls_wraps:
        return WRAPS, None
    if forwards:
        return OPAQUE, (f"{text} wraps the function without functools.wraps (the live signature and "
                        "source are its wrapper's)")
    return SAME, None


_DESCRIPTIVE = frozenset({"__doc__", "__name__", "__qualname__", "__module__"})


def class_decorator_adds(index, module, decorator):
    """Why a class decorator may set attributes on the class (None when its definition only
    describes it: docstrings, names)."""
    expression = decorator.func if isinstance(decorator, ast.Call) else decorator
    try:
        found = index.expression(module, expression)
    except (Unknown, Missing) as exc:
        return f"the check cannot read ({exc})"
    if found[0] != "def" or isinstance(found[2], ast.ClassDef):
        return "the check cannot read"
    for child in ast.walk(found[2]):
        if isinstance(child, ast.Call) and getattr(child.func, "id", None) == "setattr":
            return "calls setattr"
        targets = (child.targets if isinstance(child, ast.Assign)
                   else [child.target] if isinstance(child, (ast.AugAssign, ast.AnnAssign)) else ())
        for target in targets:
            if isinstance(target, ast.Attribute) and target.attr not in _DESCRIPTIVE:
                return f"sets .{target.attr}"
    return None


# ----- stand-ins ----------------------------------------------------------------------------------

def _stand_in_def(module, node):
    """A fresh parse of the def with nothing evaluated at definition time (decorators, defaults,
    annotations), its first line where the decorated def's code object starts."""
    import textwrap

    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    snippet = textwrap.dedent("".join(module.lines[first - 1:node.end_lineno]))
    clone = ast.parse(snippet).body[0]
    ast.increment_lineno(clone, first - 1)
    clone.lineno = first
    clone.decorator_list = []
    clone.returns = None
    if hasattr(clone, "type_params"):
        clone.type_params = []
    arguments = clone.args
    for argument in arguments.posonlyargs + arguments.args + arguments.kwonlyargs + [arguments.vararg, arguments.kwarg]:
        if argument is not None:
            argument.annotation = None
    arguments.defaults = [ast.Constant(value=None) for _ in arguments.defaults]
    arguments.kw_defaults = [None if d is None else ast.Constant(value=None) for d in arguments.kw_defaults]
    return clone


def _enclosing_classes(tree, target):
    """The ClassDef nodes enclosing `target` in `tree` (outermost first), or None."""
    def walk(statements, chain):
        for statement in _flatten_all(statements):
            if statement is target:
                return chain
            if isinstance(statement, ast.ClassDef):
                found = walk(statement.body, chain + [statement])
                if found is not None:
                    return found
        return None
    return walk(tree.body, [])


def _flatten_all(statements):
    for statement in statements:
        if isinstance(statement, ast.If):
            yield from _flatten_all(statement.body)
            yield from _flatten_all(statement.orelse)
        elif isinstance(statement, ast.Try):
            yield from _flatten_all(statement.body)
            for handler in statement.handlers:
                yield from _flatten_all(handler.body)
            yield from _flatten_all(statement.orelse)
            yield from _flatten_all(statement.finalbody)
        elif isinstance(statement, (ast.With, ast.AsyncWith)):
            yield from _flatten_all(statement.body)
        else:
            yield statement


def build_stand_in(index, module, node):
    """The live-like object for a def: (object, None), or (None, why it cannot stand in)."""
    import functools

    layers, wrap = [], None
    for decorator in reversed(node.decorator_list):  # applied bottom-up
        kind, why = classify_decorator(index, module, decorator)
        if kind == OPAQUE:
            return None, why
        if kind in ("staticmethod", "classmethod"):
            if decorator is not node.decorator_list[0]:
                return None, f"@{kind} is not the outermost decorator"
            wrap = kind
        elif kind == WRAPS:
            layers.append(decorator)
    chain = _enclosing_classes(module.tree, node)
    if chain is None:
        return None, f"the def of {node.name} is not at a place the check can rebuild"
    body = [_stand_in_def(module, node)]
    for cls in reversed(chain):
        body = [ast.ClassDef(name=cls.name, bases=[], keywords=[], body=body, decorator_list=[],
                             **({"type_params": []} if sys.version_info >= (3, 12) else {}))]
        body[0].lineno, body[0].col_offset = min(cls.lineno, body[0].body[0].lineno), 0
        body[0].end_lineno, body[0].end_col_offset = body[0].body[0].end_lineno, 0
    tree = ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))
    namespace = {"__name__": module.name, "__file__": module.path, "__loader__": module.loader,
                 "__builtins__": __builtins__}
    try:
        exec(compile(tree, module.path, "exec", dont_inherit=True), namespace)  # defines, runs no body
    except Exception as exc:
        return None, f"cannot rebuild the def ({type(exc).__name__}: {exc})"
    if chain:
        owner = namespace[chain[0].name]
        for cls in chain[1:]:
            owner = vars(owner)[cls.name]
        function = vars(owner)[node.name]
    else:
        function = namespace[node.name]
    for _ in layers:
        def stand_in_wrapper(*args, **kwargs):
            raise TypeError("a source stand-in is not callable")
        function = functools.update_wrapper(stand_in_wrapper, function)
    if wrap == "staticmethod":
        function = staticmethod(function)
    elif wrap == "classmethod":
        function = classmethod(function)
    return function, None


# ----- running a record's fingerprint --------------------------------------------------------------

class _Escape(Exception):
    pass


def _stdlib_dirs():
    import sysconfig

    paths = sysconfig.get_paths()
    return tuple({os.path.join(os.path.realpath(paths[key]), "") for key in ("stdlib", "platstdlib") if key in paths})


_STDLIB = _stdlib_dirs()


def _watched(filename):
    """Code whose questions count (a record, its helpers): anything but the standard library
    (inspect reads sys.modules itself) and this module."""
    if filename == _THIS_FILE or filename.startswith("<"):
        return False
    path = os.path.realpath(filename)
    return not (path.startswith(_STDLIB) and "-packages" + os.sep not in path)


def _harmless_import(name):
    top = (name or "").partition(".")[0]
    # the standard library, compat_patches and what it requires: never the library being checked
    return top in getattr(sys, "stdlib_module_names", ()) or top in ("compat_patches", "wrapt", "packaging")


def _static_find_spec(index):
    def find_spec(name, package=None):
        if name.startswith("."):
            from importlib.util import resolve_name

            name = resolve_name(name, package)
        return index.spec(name)
    return find_spec


def run_fingerprint(index, fingerprint, original):
    """("done", finding) or ("unchecked", why): `fingerprint(original)` on a stand-in, watched."""
    import importlib.util

    def profile(frame, event, arg):
        if event == "c_call":
            if getattr(arg, "__self__", None) is sys.modules and _watched(frame.f_code.co_filename):
                raise _Escape("it reads sys.modules (the imported library, not its source)")
        elif event == "call" and frame.f_code.co_name == "_find_and_load":
            name = frame.f_locals.get("name")
            if not _harmless_import(name):
                raise _Escape(f"it imports {name}")

    if sys.getprofile() is not None:  # a profiler's C hook cannot be put back once replaced
        return "unchecked", "a profiler is active in this process (the check watches calls with one)"
    global _current
    real_find_spec = importlib.util.find_spec
    importlib.util.find_spec = _static_find_spec(index)
    _current = index
    sys.setprofile(profile)
    try:
        finding = fingerprint(original)
    except _Escape as escape:
        return "unchecked", str(escape)
    except Exception as exc:
        return "unchecked", f"it raised {type(exc).__name__}: {exc} on the source stand-in"
    finally:
        sys.setprofile(None)
        importlib.util.find_spec = real_find_spec
    return "done", finding


# ----- one target ----------------------------------------------------------------------------------

class TargetFinding:
    """What the source says about one target: `status` None (matches), DRIFTED or NOT_NEEDED with
    `reason`; `module_found` False when no installed file defines the module; `unchecked` lists
    what could not be checked from source."""

    __slots__ = ("target", "status", "reason", "module_found", "unchecked")

    def __init__(self, target, status=None, reason="", module_found=True, unchecked=()):
        self.target, self.status, self.reason = target, status, reason
        self.module_found, self.unchecked = module_found, list(unchecked)


def resolve(index, module_name, dotted):
    """What ``module_name:dotted`` is in the installed source: ("def", module, node), ("module",
    name) or ("value", module, expression). Raises Missing or Unknown."""
    module = index.module(module_name)
    if module is None:
        if index.spec(module_name) is not None:
            raise Unknown(f"the source of {module_name} cannot be read")
        raise Missing(f"no installed module {module_name}")
    parts = dotted.split(".")
    found = index.lookup(module, parts[0])
    for position, part in enumerate(parts[1:], 1):
        if found[0] == "module":
            found = index.attribute_of_module(found[1], part)
        elif found[0] == "def" and isinstance(found[2], ast.ClassDef):
            found = index.class_attribute(found, part)
        else:
            raise Unknown(f"{'.'.join(parts[:position])} is neither a class nor a module in the source")
    return found


def check_target(index, target):
    """Mirror of ``install.check_drift`` on the installed source."""
    if index.module(target.module) is None:
        if index.spec(target.module) is not None:
            return TargetFinding(target, unchecked=[f"{target.path}: the source of {target.module} cannot be read"])
        return TargetFinding(target, module_found=False)
    try:
        found = resolve(index, target.module, target.attribute)
    except Missing as exc:
        return TargetFinding(target, DRIFTED, f"target {target.path} is missing (installed source: {exc})")
    except Unknown as exc:
        return TargetFinding(target, unchecked=[f"{target.path}: {exc}"])
    if found[0] != "def" or not isinstance(found[2], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return TargetFinding(target, unchecked=[f"{target.path}: not a def in the installed source"])
    original, why = build_stand_in(index, found[1], found[2])
    if original is None:
        return TargetFinding(target, unchecked=[f"{target.path}: {why}"])
    if target.params is not None:
        try:
            names = _parameter_names(original)
        except (TypeError, ValueError) as exc:
            return TargetFinding(target, DRIFTED, f"target {target.path} has no signature ({exc})")
        if names != target.params:
            return TargetFinding(target, DRIFTED, f"target {target.path} signature changed: expected "
                                                  f"parameters {target.params}, found {names}")
    unchecked = []
    for fingerprint, status, what in ((target.fixed, NOT_NEEDED, "already carries the upstream fix"),
                                      (target.check, DRIFTED, "changed")):
        if fingerprint is None:
            continue
        outcome, value = run_fingerprint(index, fingerprint, original)
        if outcome == "unchecked":
            label = "fixed=" if status == NOT_NEEDED else "check="
            unchecked.append(f"{target.path}: {label}{getattr(fingerprint, '__name__', 'fingerprint')} "
                             f"not run from source: {value}")
            continue
        if value:
            return TargetFinding(target, status, f"target {target.path} {what}: {value}", unchecked=unchecked)
    return TargetFinding(target, unchecked=unchecked)


# ----- for records' fingerprints: one question, answered live or from source -------------------------

_current = None  # the index of the source check running now (its parsed files), else a shared one


def _index():
    global _current
    if _current is None:
        _current = SourceIndex()
    return _current


def source_object(path):
    """The object at ``"package.module:Class.attribute"`` for a record's fingerprint: the live one
    where the module is imported, else what the installed source defines there: a def's stand-in
    (as the source check builds it) or a literal's value. Raises LookupError where it is not there,
    Unknown where the source does not say (then the source check reports the fingerprint as not
    run from source). Imports nothing."""
    module_name, _, dotted = path.partition(":")
    module = sys.modules.get(module_name)
    if module is not None:
        found = module
        for part in dotted.split("."):
            try:
                found = getattr(found, part)
            except AttributeError as exc:
                raise LookupError(f"{path}: {exc}") from None
        return found
    index = _index()
    found = resolve(index, module_name, dotted)
    if found[0] == "value":
        try:
            return ast.literal_eval(found[2])
        except ValueError:
            raise Unknown(f"{path} is computed at run time") from None
    if found[0] == "def" and isinstance(found[2], (ast.FunctionDef, ast.AsyncFunctionDef)):
        original, why = build_stand_in(index, found[1], found[2])
        if original is None:
            raise Unknown(f"{path}: {why}")
        return original
    raise Unknown(f"{path} is a {'module' if found[0] == 'module' else 'class'}: not rebuilt from source")


def defines(path):
    """Whether ``"package.module:Class.attribute"`` exists: live where the module is imported,
    else in the installed source (Unknown where the source does not say). Imports nothing."""
    module_name, _, dotted = path.partition(":")
    if sys.modules.get(module_name) is not None:
        try:
            source_object(path)
        except LookupError:
            return False
        return True
    try:
        resolve(_index(), module_name, dotted)
    except Missing:
        return False
    return True
