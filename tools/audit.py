#!/usr/bin/env python
"""Audit: what matches a compat_patches record's bug pattern on the installed releases but is not covered.

    python tools/audit.py                              # this Python's transformers, and every record's targets
    python tools/audit.py --python VENV/bin/python     # that interpreter's transformers and registry
    python tools/audit.py --source PATH                # a transformers source tree or wheel (scans only)
    python tools/audit.py --describe                   # also: each GatedDeltaNet / Mamba2 mixer, its layer, signatures
    python tools/audit.py --verbose                    # also the covered findings

Patterns, read from the sources with ``ast`` (nothing of transformers is imported for them):

* ``stale-loss-flag``: a model class whose ``accepts_loss_kwargs`` resolves to False (own body or a base
  class, followed through the package's imports) although the ``forward`` it resolves hands ``**kwargs``
  (the count) to ``self.loss_function``; covered by ``transformers-stale-loss-kwargs`` CLASSES.
* ``gdn-layer`` / ``mamba2-layer``: a GatedDeltaNet or Mamba2 mixer class of any model, found by its name
  AND by its body (a gated-delta-rule call; a Mamba2 chunked scan, or ``torch_forward`` with ``ssm_state``
  and ``segment_sum``); covered when the packed-samples record targets the mixer's ``forward`` and its
  decoder layer's ``forward`` on this release.
* ``ragged-token-type-ids``: a processor method building token type ids from a batch-level array
  (``np.array(text_inputs["input_ids"])``, ``np.array(input_ids)`` over the whole batch); covered when
  ``transformers-vl-processor-ragged-batch`` targets that class on this release.
* ``target`` (per record of the registry, in a subprocess of ``--python``, which imports the target
  modules): every target the version gate selects still exists, has the record's parameters and passes
  its drift fingerprint (``check``), and is not reported fixed upstream (``fixed``).

One line per finding: ``UNCOVERED`` / ``REVIEWED`` (on the reviewed list, with its reason) / ``COVERED``
(``--verbose``). Exit status 1 when anything is uncovered and not reviewed, 0 otherwise, 2 when no
transformers source can be found. The reviewed list is tools/audit_reviewed.py (``REVIEWED``: finding
key -> reason, or {"reason": ..., "versions": PEP 440 range}).

Standard library and ``packaging`` only.
"""

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REVIEWED = os.path.join(ROOT, "tools", "audit_reviewed.py")

STALE_LOSS = "transformers-stale-loss-kwargs"
GDN = "transformers-gdn-packed-samples"
MAMBA2 = "transformers-mamba2-packed-samples"
RAGGED = "transformers-vl-processor-ragged-batch"
RECORD_OF_KIND = {"stale-loss-flag": STALE_LOSS, "gdn-layer": GDN, "mamba2-layer": MAMBA2,
                  "ragged-token-type-ids": RAGGED}

GDN_CALLS = frozenset({"chunk_gated_delta_rule", "torch_chunk_gated_delta_rule", "fused_chunk_gated_delta_rule",
                       "fused_recurrent_gated_delta_rule", "torch_recurrent_gated_delta_rule",
                       "recurrent_gated_delta_rule"})
MAMBA2_CALLS = frozenset({"mamba_chunk_scan_combined", "mamba_split_conv1d_scan_combined", "mamba2_chunk_scan",
                          "mamba2_split_conv1d_scan_combined", "mamba2_scan_forward"})  # the last: 5.25+
GDN_NAME = re.compile(r"GatedDeltaNet$")
MAMBA2_NAME = re.compile(r"Mamba2Mixer$")

UNCOVERED, REVIEWED, COVERED, SKIPPED = "UNCOVERED", "REVIEWED", "COVERED", "SKIPPED"


# ----- the sources ------------------------------------------------------------------------------

class SourceTree:
    """The ``.py`` files of one transformers package: its directory (``.../site-packages/transformers``)
    or a wheel. Paths are relative to the package (``models/x/modeling_x.py``)."""

    def __init__(self, location, version=None):
        self.location = os.fspath(location)
        self._zip = None
        if os.path.isfile(self.location) and zipfile.is_zipfile(self.location):
            self._zip = zipfile.ZipFile(self.location)
            self._files = {name[len("transformers/"):]: name for name in self._zip.namelist()
                           if name.startswith("transformers/") and name.endswith(".py")}
        elif os.path.isdir(self.location):
            self._files = {}
            for dirpath, dirnames, filenames in os.walk(self.location):
                dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                for filename in filenames:
                    if filename.endswith(".py"):
                        full = os.path.join(dirpath, filename)
                        self._files[os.path.relpath(full, self.location).replace(os.sep, "/")] = full
        else:
            raise FileNotFoundError(f"no transformers source at {self.location}")
        self.version = version or self._version()

    def files(self):
        return sorted(self._files)

    def has(self, path):
        return path in self._files

    def read(self, path):
        if self._zip is not None:
            return self._zip.read(self._files[path]).decode("utf-8")
        with open(self._files[path], encoding="utf-8") as handle:
            return handle.read()

    def _version(self):
        if self.has("__init__.py"):
            found = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", self.read("__init__.py"), re.M)
            if found:
                return found.group(1)
        if self._zip is not None:
            for name in self._zip.namelist():
                found = re.match(r"transformers-([^/]+)\.dist-info/", name)
                if found:
                    return found.group(1)
        parent = os.path.dirname(self.location.rstrip(os.sep))
        for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
            found = re.match(r"transformers-(.+)\.dist-info$", name)
            if found:
                return found.group(1)
        return None


def module_name(path):
    """``models/x/modeling_x.py`` -> ``transformers.models.x.modeling_x``."""
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["transformers", *parts])


def module_path(tree, name):
    """The tree path of dotted module `name`, or None."""
    parts = name.split(".")
    if parts[0] != "transformers":
        return None
    base = "/".join(parts[1:])
    for candidate in ((base + ".py") if base else None, (base + "/__init__.py") if base else "__init__.py"):
        if candidate and tree.has(candidate):
            return candidate
    return None


class Module:
    """One parsed module: its top-level classes, imported names, module-level assignments."""

    def __init__(self, name, path, text):
        self.name, self.path, self.text = name, path, text
        self.tree = ast.parse(text)
        self.classes, self.imports, self.assigns = {}, {}, {}
        package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
        for node in self.tree.body:
            if isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (source, alias.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.assigns[target.id] = node.value

    def segment(self, node):
        return ast.get_source_segment(self.text, node) or ast.unparse(node)


_FROM_IMPORT = re.compile(r"^[ \t]*from[ \t]+[.\w]+[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.M)


class Index:
    """Parsed modules of a SourceTree, on demand; class resolution through imports and bases."""

    def __init__(self, tree):
        self.tree = tree
        self._modules = {}
        self._mro = {}
        self.memo = {}

    def module(self, name):
        if name not in self._modules:
            path = module_path(self.tree, name)
            try:
                self._modules[name] = Module(name, path, self.tree.read(path)) if path else None
            except SyntaxError:
                self._modules[name] = None
        return self._modules[name]

    def module_at(self, path):
        return self.module(module_name(path))

    def text(self, path):
        if ("text", path) not in self.memo:
            self.memo[("text", path)] = self.tree.read(path)
        return self.memo[("text", path)]

    def imported(self, path):
        """The names a module imports with ``from X import ...`` (read from its text, not parsed)."""
        if ("imported", path) not in self.memo:
            names = set()
            for found in _FROM_IMPORT.finditer(self.text(path)):
                names.update(re.findall(r"\w+", found.group(1)))
            self.memo[("imported", path)] = names
        return self.memo[("imported", path)]

    def candidates(self, paths, seed, wanted):
        """The modules of `paths` worth parsing, without parsing the rest: those whose text contains
        one of the `seed` strings, then, until nothing new, those importing a class `wanted(module,
        class)` kept in a module already taken (a subclass in another module must import its base).
        Yields (path, Module)."""
        done, names = set(), set()
        pending = [p for p in paths if any(token in self.text(p) for token in seed)]
        while pending:
            new = set()
            for path in pending:
                done.add(path)
                module = self.module_at(path)
                if module is None:
                    continue
                for node in module.classes.values():
                    if node.name not in names and wanted(module, node):
                        new.add(node.name)
                yield path, module
            names |= new
            pending = [p for p in paths if p not in done and self.imported(p) & new] if new else []

    def resolve(self, module, name, depth=0):
        """(Module, ClassDef) of class `name` as seen from `module`, or None (outside the tree)."""
        if module is None or depth > 8:
            return None
        if name in module.classes:
            return module, module.classes[name]
        if name in module.imports:
            source, original = module.imports[name]
            return self.resolve(self.module(source), original, depth + 1)
        return None

    def bases(self, module, node):
        out = []
        for base in node.bases:
            if isinstance(base, ast.Name):
                out.append(self.resolve(module, base.id))
            elif isinstance(base, ast.Attribute):
                out.append(None)  # nn.Module and the like: outside the tree
        return [b for b in out if b is not None]

    def mro(self, module, node, depth=0):
        """The class and its in-tree bases in C3 order (``(Module, ClassDef)`` pairs)."""
        cache_key = (module.name, node.name, node.lineno)
        if cache_key not in self._mro:
            self._mro[cache_key] = [(module, node)] if depth > 30 else self._c3(module, node, depth)
        return self._mro[cache_key]

    def _c3(self, module, node, depth):
        sequences = [self.mro(m, n, depth + 1) for m, n in self.bases(module, node)]
        sequences.append([pair for pair in self.bases(module, node)])
        result = [(module, node)]
        key = lambda pair: (pair[0].name, pair[1].name)  # noqa: E731
        sequences = [[p for p in s] for s in sequences if s]
        while sequences:
            for sequence in sequences:
                head = sequence[0]
                if not any(key(head) in {key(p) for p in other[1:]} for other in sequences):
                    break
            else:  # inconsistent hierarchy: depth-first order
                head = sequences[0][0]
            result.append(head)
            sequences = [[p for p in s if key(p) != key(head)] for s in sequences]
            sequences = [s for s in sequences if s]
        return result

    def lookup(self, module, node, attribute):
        """(Module, ClassDef, the defining statement) of `attribute` along the MRO, or None."""
        for owner_module, owner in self.mro(module, node):
            for statement in owner.body:
                if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and statement.name == attribute:
                    return owner_module, owner, statement
                if isinstance(statement, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == attribute for t in statement.targets):
                    return owner_module, owner, statement
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) \
                        and statement.target.id == attribute:
                    return owner_module, owner, statement
        return None


def params(function):
    """A def's parameter names as inspect.signature lists them (``*args`` -> ``args``)."""
    a = function.args
    names = [p.arg for p in (*a.posonlyargs, *a.args)]
    if a.vararg:
        names.append(a.vararg.arg)
    names.extend(p.arg for p in a.kwonlyargs)
    if a.kwarg:
        names.append(a.kwarg.arg)
    return tuple(names)


def identifiers(node):
    """Every Name id and Attribute attr under `node`."""
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            yield child.id
        elif isinstance(child, ast.Attribute):
            yield child.attr


def methods(node):
    return {s.name: s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}


def modeling_paths(tree, prefix="modeling_"):
    return [p for p in tree.files()
            if re.fullmatch(rf"models/[^/]+/{prefix}[^/]+\.py", p)]


# ----- coverage: what the records say ------------------------------------------------------------

def _contains(spec, version):
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if spec is None:
        return True
    try:
        return SpecifierSet(spec).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


class Coverage:
    """What the records cover: `loss_classes` {(module, class): first affected release}; `records`
    {record name: (affected transformers range, [(target path, versions or None)])}."""

    def __init__(self, loss_classes=None, records=None):
        self.loss_classes = dict(loss_classes or {})
        self.records = dict(records or {})

    @classmethod
    def from_registry(cls, registry=None):
        """From the records of the compat_patches package under `registry` (None: the one importable
        here, this checkout first); imports nothing heavy."""
        import importlib

        path = os.path.abspath(registry or ROOT)
        if "compat_patches" not in sys.modules and path not in sys.path:
            sys.path.insert(0, path)
        import compat_patches

        found = os.path.dirname(os.path.dirname(os.path.abspath(compat_patches.__file__)))
        if registry is not None and found != path:
            raise RuntimeError(f"compat_patches was already imported from {compat_patches.__file__}, "
                               f"not from {registry}")

        loss = importlib.import_module("compat_patches.patches.transformers.stale_loss_kwargs")
        records = {}
        for name in compat_patches.patch_names():
            patch = compat_patches.get_patch(name)
            if "transformers" in patch.affected:
                records[name] = (patch.affected["transformers"],
                                 [(t.path, t.versions) for t in patch.targets])
        return cls(loss.CLASSES, records)

    def targeted(self, record, path, version):
        """True (targeted on `version`), else a text saying where the record targets `path`, or None."""
        affected, targets = self.records.get(record, (None, ()))
        ranges = [versions or "every release" for target, versions in targets if target == path]
        if not ranges:
            return None
        if _contains(affected, version) and any(_contains(v, version) for t, v in targets if t == path):
            return True
        return f"targeted only on transformers{affected} for {', '.join(ranges)}"

    def class_targeted(self, record, module, name, version):
        affected, targets = self.records.get(record, (None, ()))
        prefix = f"{module}:{name}."
        return _contains(affected, version) and any(
            t.startswith(prefix) and _contains(v, version) for t, v in targets)


class Finding:
    __slots__ = ("kind", "key", "message", "status", "reason")

    def __init__(self, kind, key, message, covered=False, status=None):
        self.kind, self.key, self.message = kind, key, message
        self.status = status or (COVERED if covered else UNCOVERED)
        self.reason = ""

    @property
    def id(self):
        return f"{self.kind}:{self.key}"

    def line(self):
        text = f"{self.status:9} {self.kind} {self.key}: {self.message}"
        return f"{text} [reviewed: {self.reason}]" if self.status == REVIEWED else text

    def __repr__(self):
        return f"Finding({self.status} {self.id})"


# ----- (a) stale accepts_loss_kwargs -------------------------------------------------------------

def _loss_calls(function):
    """The ``self.loss_function(...)`` calls of `function` that hand it ``**x`` or num_items_in_batch."""
    out = []
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "loss_function" and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == "self":
            if any(k.arg is None or k.arg == "num_items_in_batch" for k in node.keywords):
                out.append(node)
    return out


def _short(text, width=100):
    return text if len(text) <= width else text[:width - 3] + "..."


def scan_stale_loss(index, coverage, version):
    findings = []

    def flagged(module, node):  # the class or a base sets the flag: its subclasses are candidates
        return index.lookup(module, node, "accepts_loss_kwargs") is not None

    for path, module in index.candidates(modeling_paths(index.tree), ("accepts_loss_kwargs",), flagged):
        for name, node in module.classes.items():
            flag = index.lookup(module, node, "accepts_loss_kwargs")
            if flag is None or not isinstance(flag[2], (ast.Assign, ast.AnnAssign)):
                continue
            value = flag[2].value
            if not (isinstance(value, ast.Constant) and value.value is False):
                continue
            forward = index.lookup(module, node, "forward")
            if forward is None or not isinstance(forward[2], (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            calls = _loss_calls(forward[2])
            if not calls:
                continue
            owner_module, owner, statement = flag
            where = "own body" if owner is node else f"from {owner_module.name}:{owner.name}"
            first = coverage.loss_classes.get((owner_module.name, owner.name))
            covered = first is not None and _contains(f">={first}", version)
            note = ("" if covered else
                    f"; {STALE_LOSS} CLASSES lists {owner.name} from {first} only" if first else
                    f"; not in {STALE_LOSS} CLASSES")
            findings.append(Finding(
                "stale-loss-flag", f"{module.name}:{name}",
                f"accepts_loss_kwargs = False ({where}, line {statement.lineno}) but "
                f"{forward[1].name}.forward hands {_short(ast.unparse(calls[0]))} (line {calls[0].lineno}){note}",
                covered))
    return findings


# ----- (b) GatedDeltaNet / Mamba2 mixers --------------------------------------------------------

def mixer_kind(index, module, node):
    """("gdn" or "mamba2", why) or None: by name and by body (or a base that is one)."""
    key = ("mixer", module.name, node.name, node.lineno)
    if key not in index.memo:
        index.memo[key] = _mixer_kind(index, module, node)
    return index.memo[key]


def _mixer_kind(index, module, node):
    names = set(identifiers(node))
    own = methods(node)
    if names & GDN_CALLS or GDN_NAME.search(node.name):
        why = sorted(names & GDN_CALLS) or ["class name"]
        return "gdn", ("body: " + ", ".join(why)) if names & GDN_CALLS else "class name *GatedDeltaNet"
    if names & MAMBA2_CALLS:
        return "mamba2", "body: " + ", ".join(sorted(names & MAMBA2_CALLS))
    if "torch_forward" in own and "ssm_state" in names and ("segment_sum" in names or "chunk_size" in names):
        return "mamba2", "body: torch_forward with ssm_state"
    if MAMBA2_NAME.search(node.name):
        return "mamba2", "class name *Mamba2Mixer"
    for base_module, base in index.mro(module, node)[1:]:
        kind = mixer_kind(index, base_module, base)
        if kind:
            return kind[0], f"base {base_module.name}:{base.name} ({kind[1]})"
    return None


def _aliases(module, name):
    """Module-level names whose value mentions class `name` (``MIXER_TYPES = {...: Mixer}``)."""
    return {alias for alias, value in module.assigns.items() if name in set(identifiers(value))}


def _instantiates(node, names):
    """(attribute assigned, the call) where a method of `node` builds one of `names`, or None."""
    for function in methods(node).values():
        for statement in ast.walk(function):
            if not isinstance(statement, ast.Call):
                continue
            callee = statement.func
            while isinstance(callee, ast.Subscript):  # MIXER_TYPES[kind](...)
                callee = callee.value
            if isinstance(callee, ast.Name) and callee.id in names:
                return statement
    return None


def _assigned_attribute(node, names):
    """``self.<attr> = Mixer(...)`` in `node`'s methods: attr, or None."""
    for function in methods(node).values():
        for statement in ast.walk(function):
            if isinstance(statement, (ast.Assign, ast.AnnAssign)):
                value = statement.value
                targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                if value is not None and set(identifiers(value)) & names:
                    for target in targets:
                        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                                and target.value.id == "self":
                            return target.attr
    return None


def users(module, name):
    """Classes of `module` (other than `name`) that instantiate class `name` (directly or via an alias)."""
    names = {name} | _aliases(module, name)
    return [node for node in module.classes.values()
            if node.name != name and _instantiates(node, names) is not None]


def _calls_on(function, attribute):
    """Calls ``self.<attribute>(...)`` in `function`."""
    return [n for n in ast.walk(function) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == attribute and isinstance(n.func.value, ast.Name) and n.func.value.id == "self"]


def _layer_calls(function):
    """Calls of a loop variable iterating ``self.<layers>`` (``for decoder_layer in self.layers: ...``)."""
    out = []
    for loop in ast.walk(function):
        if not isinstance(loop, ast.For):
            continue
        targets = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
        if "self" not in set(identifiers(loop.iter)) and not any(
                isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
                for n in ast.walk(loop.iter)):
            continue
        for node in ast.walk(loop):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in targets:
                out.append(node)
    return out


def call_shape(call):
    """(keyword names passed, whether ``**x`` is passed, number of positional arguments)."""
    return ([k.arg for k in call.keywords if k.arg], any(k.arg is None for k in call.keywords), len(call.args))


def describe_mixer(index, module, node):
    """What the report needs of one mixer: its layer(s) and model(s), signatures, what flows down."""
    info = {"module": module.name, "class": node.name, "line": node.lineno}
    forward = index.lookup(module, node, "forward")
    if forward is not None and isinstance(forward[2], (ast.FunctionDef, ast.AsyncFunctionDef)):
        info["forward"] = params(forward[2])
        info["decorators"] = [ast.unparse(d) for d in forward[2].decorator_list]
    layers = []
    for layer in users(module, node.name):
        if "forward" not in methods(layer) and index.lookup(module, layer, "forward") is None:
            continue
        attribute = _assigned_attribute(layer, {node.name} | _aliases(module, node.name))
        entry = {"class": layer.name, "attribute": attribute}
        found = index.lookup(module, layer, "forward")
        if found is not None and isinstance(found[2], (ast.FunctionDef, ast.AsyncFunctionDef)):
            entry["forward"] = params(found[2])
            entry["decorators"] = [ast.unparse(d) for d in found[2].decorator_list]
            calls = _calls_on(found[2], attribute) if attribute else []
            entry["mixer_calls"] = [module.segment(c) for c in calls]
            entry["mixer_call_shapes"] = [call_shape(c) for c in calls]
        models = []
        for model in users(module, layer.name):
            model_forward = index.lookup(module, model, "forward")
            if model_forward is None or not isinstance(model_forward[2], (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            calls = _layer_calls(model_forward[2])
            models.append({"class": model.name, "forward": params(model_forward[2]),
                           "decorators": [ast.unparse(d) for d in model_forward[2].decorator_list],
                           "layer_calls": [module.segment(c) for c in calls],
                           "layer_call_shapes": [call_shape(c) for c in calls]})
        entry["models"] = models
        layers.append(entry)
    info["layers"] = layers
    return info


def find_mixers(index):
    """[(kind, why, Module, ClassDef)] of every GatedDeltaNet / Mamba2 mixer class in the modeling files."""
    out = []
    seed = (*sorted(GDN_CALLS | MAMBA2_CALLS), "GatedDeltaNet", "Mamba2Mixer", "ssm_state")
    for path, module in index.candidates(modeling_paths(index.tree), seed,
                                         lambda m, n: mixer_kind(index, m, n) is not None):
        for node in module.classes.values():
            kind = mixer_kind(index, module, node)
            if kind:
                out.append((kind[0], kind[1], module, node))
    return out


def scan_mixers(index, coverage, version):
    findings = []
    for kind, why, module, node in find_mixers(index):
        record = GDN if kind == "gdn" else MAMBA2
        info = describe_mixer(index, module, node)
        missing, ranges = [], []
        state = coverage.targeted(record, f"{module.name}:{node.name}.forward", version)
        if state is not True:
            missing.append(f"{node.name}.forward")
            if state:
                ranges.append(state)
        layer_names = [layer["class"] for layer in info["layers"]]
        for layer in layer_names:
            state = coverage.targeted(record, f"{module.name}:{layer}.forward", version)
            if state is not True:
                missing.append(f"{layer}.forward")
                if state:
                    ranges.append(state)
        layers = ", ".join(layer_names) or "no decoder layer found"
        if missing:
            message = (f"{kind} mixer ({why}); decoder layer {layers}; {record} does not target "
                       f"{', '.join(missing)} on {version}" + (f" ({'; '.join(ranges)})" if ranges else ""))
        else:
            message = f"{kind} mixer ({why}); decoder layer {layers}; targeted by {record}"
        findings.append(Finding(f"{kind}-layer", f"{module.name}:{node.name}", message, not missing))
    return findings


# ----- (c) token type ids from a batch-level array ----------------------------------------------

def _numpy_names(module):
    names = {"np", "numpy"}
    for statement in module.tree.body:
        if isinstance(statement, ast.Import):
            names |= {a.asname or a.name for a in statement.names if a.name == "numpy"}
    return names


def _loop_targets(function):
    out = set()
    for node in ast.walk(function):
        if isinstance(node, (ast.For, ast.comprehension)):
            out |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
    return out


def _batch_arrays(function, numpy):
    """``np.array(...)`` / ``np.asarray(...)`` calls of `function` over a whole batch of input ids."""
    loop_names = _loop_targets(function)
    out = []
    for node in ast.walk(function):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("array", "asarray") and isinstance(node.func.value, ast.Name)
                and node.func.value.id in numpy and node.args):
            continue
        argument = node.args[0]
        if isinstance(argument, ast.Subscript) and isinstance(argument.slice, ast.Constant) \
                and argument.slice.value == "input_ids":
            out.append(node)  # text_inputs["input_ids"]: every row at once
        elif isinstance(argument, ast.Name) and "input_ids" in argument.id and argument.id not in loop_names:
            out.append(node)  # a batch handed in (create_*_token_type_ids(self, input_ids))
    return out


def scan_processors(index, coverage, version):
    findings = []
    for path in modeling_paths(index.tree, "processing_"):
        text = index.text(path)
        if "token_type_ids" not in text or "input_ids" not in text:
            continue
        module = index.module_at(path)
        if module is None:
            continue
        numpy = _numpy_names(module)
        default = ("; return_mm_token_type_ids defaults to True in this module"
                   if re.search(r"""return_mm_token_type_ids["']?\s*[:=]\s*True""", text) else "")
        for node in module.classes.values():
            for name, function in methods(node).items():
                mentions = [n for n in identifiers(function) if "token_type_ids" in n]
                mentions += [c.value for c in ast.walk(function) if isinstance(c, ast.Constant)
                             and isinstance(c.value, str) and "token_type_ids" in c.value]
                if not mentions and "token_type_ids" not in name:
                    continue
                arrays = _batch_arrays(function, numpy)
                if not arrays:
                    continue
                covered = coverage.class_targeted(RAGGED, module.name, node.name, version)
                findings.append(Finding(
                    "ragged-token-type-ids", f"{module.name}:{node.name}.{name}",
                    f"makes one numpy array of the whole batch for its token type ids: "
                    f"{module.segment(arrays[0])} (line {arrays[0].lineno}); a ragged (unpadded) batch "
                    f"raises{default}" +
                    (f"; targeted by {RAGGED}" if covered else f"; {RAGGED} does not target it on {version}"),
                    covered))
    return findings


# ----- (d) every record's targets, in a subprocess -----------------------------------------------

_CHILD = r"""
import importlib, json, sys
import compat_patches
from compat_patches.core.install import TargetProblem, check_drift
manager = compat_patches._default_manager()
report = compat_patches.report()
out = []
for name in compat_patches.patch_names():
    entry = report[name]
    targets = manager.targets_for(name)
    out.append({"record": name, "status": entry.status, "reason": entry.reason, "versions": entry.versions,
                "targets": len(targets)})
    for target in targets:
        row = {"record": name, "path": target.path, "versions": target.versions}
        try:
            module = importlib.import_module(target.module)
        except Exception as exc:
            row.update(status="import-failed", reason=f"{type(exc).__name__}: {exc}")
        else:
            try:
                check_drift(module, target)
                row.update(status="ok", reason="")
            except TargetProblem as exc:
                row.update(status=exc.status, reason=exc.reason)
            except Exception as exc:
                row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        out.append(row)
print("\n@@AUDIT@@" + json.dumps({"registry": compat_patches.__file__, "rows": out}))
"""


def run_child(python, code, registry=None, timeout=900):
    """Run `code` in `python` with the compat_patches under `registry` (None: this checkout's, else
    whichever that interpreter has) first on its path; returns what it printed after the marker."""
    path = os.path.abspath(registry or ROOT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([path, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # cwd = registry: `python -c` puts the working directory first on sys.path
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=path,
                          timeout=timeout)
    marker = done.stdout.rfind("@@AUDIT@@")
    if done.returncode != 0 or marker < 0:
        raise RuntimeError(f"{python} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout[marker + len("@@AUDIT@@"):])
    used = os.path.dirname(os.path.dirname(os.path.abspath(result["registry"])))
    if registry is not None and used != path:
        raise RuntimeError(f"{python} imported compat_patches from {used}, not from {registry}")
    return result["rows"]


def scan_targets(python, registry=None):
    findings = []
    for row in run_child(python, _CHILD, registry):
        if "path" not in row:
            if row["status"] == "drifted":  # the gate itself: no target for this release, bad version
                findings.append(Finding("target", f"{row['record']}", row["reason"]))
            elif not row["targets"]:
                findings.append(Finding("target", row["record"], f"{row['status']}: {row['reason']}",
                                        status=SKIPPED))
            continue
        key = f"{row['record']}:{row['path']}"
        if row["status"] == "ok":
            findings.append(Finding("target", key, "exists, parameters and fingerprint match", True))
        elif row["status"] == "not-needed":
            findings.append(Finding("target", key, f"fixed upstream here (fixed=): {row['reason']}"))
        else:
            findings.append(Finding("target", key, f"{row['status']}: {row['reason']}"))
    return findings


# ----- the reviewed list, the command ----------------------------------------------------------

def load_reviewed(path):
    """{finding id: (reason, versions or None)} from a .py file defining REVIEWED (or a .toml table)."""
    if not path or not os.path.exists(path):
        return {}
    if path.endswith(".toml"):
        import tomllib  # Python 3.11+

        with open(path, "rb") as handle:
            raw = tomllib.load(handle).get("reviewed", {})
    else:
        namespace = {}
        with open(path, encoding="utf-8") as handle:
            exec(compile(handle.read(), path, "exec"), namespace)
        raw = namespace.get("REVIEWED", {})
    out = {}
    for key, value in raw.items():
        reason, versions = (value, None) if isinstance(value, str) else (value.get("reason", ""),
                                                                          value.get("versions"))
        if not reason:
            raise ValueError(f"reviewed entry {key!r} has no reason")
        out[key] = (reason, versions)
    return out


def apply_reviewed(findings, reviewed, version):
    used = set()
    for finding in findings:
        entry = reviewed.get(finding.id)
        if finding.status == UNCOVERED and entry is not None and _contains(entry[1], version):
            finding.status, finding.reason = REVIEWED, entry[0]
            used.add(finding.id)
    return sorted(set(reviewed) - used)


def audit(tree, coverage=None, version=None, python=None, kinds=None, registry=None, index=None):
    """The findings on `tree` (a SourceTree); with `python`, also every record's targets there
    (the records of the compat_patches package under `registry`). `index`: an Index of `tree` to
    reuse (its parsed modules)."""
    coverage = coverage or Coverage.from_registry(registry)
    version = version or tree.version
    index = index or Index(tree)
    kinds = set(kinds or ("stale-loss-flag", "mixers", "ragged-token-type-ids", "target"))
    findings = []
    if "stale-loss-flag" in kinds:
        findings += scan_stale_loss(index, coverage, version)
    if "mixers" in kinds:
        findings += scan_mixers(index, coverage, version)
    if "ragged-token-type-ids" in kinds:
        findings += scan_processors(index, coverage, version)
    if python and "target" in kinds:
        findings += scan_targets(python, registry)
    return findings


def installed_tree(python):
    """The transformers package directory `python` would import (found without importing it)."""
    code = ("import importlib.util, json; s = importlib.util.find_spec('transformers'); "
            "print(json.dumps(list(s.submodule_search_locations) if s else None))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    locations = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    return locations[0] if locations else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter whose transformers and registry are audited (default: this one)")
    parser.add_argument("--source", help="a transformers package directory or wheel to scan instead "
                                         "(the registry's targets are then not checked)")
    parser.add_argument("--reviewed", default=DEFAULT_REVIEWED, help="the reviewed list (default: %(default)s)")
    parser.add_argument("--registry", default=None,
                        help="the directory holding the compat_patches package whose records are audited "
                             f"(default: this checkout, {ROOT})")
    parser.add_argument("--skip-targets", action="store_true", help="source scans only: import nothing")
    parser.add_argument("--describe", action="store_true",
                        help="print each GatedDeltaNet / Mamba2 mixer with its layers and signatures (JSON)")
    parser.add_argument("--verbose", "-v", action="store_true", help="also print covered findings")
    args = parser.parse_args(argv)

    location = args.source or installed_tree(args.python)
    if not location:
        print(f"audit: no transformers found for {args.python}", file=sys.stderr)
        return 2
    try:
        tree = SourceTree(location)
    except FileNotFoundError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    print(f"audit: transformers {tree.version} at {location}")
    if args.describe:
        index = Index(tree)
        for kind, why, module, node in find_mixers(index):
            print(json.dumps(dict(kind=kind, why=why, **describe_mixer(index, module, node))))
    python = None if (args.source or args.skip_targets) else args.python
    findings = audit(tree, python=python, registry=args.registry and os.path.abspath(args.registry))
    stale = apply_reviewed(findings, load_reviewed(args.reviewed), tree.version)
    for finding in findings:
        if finding.status not in (COVERED, SKIPPED) or args.verbose:
            print(finding.line())
    for key in stale:
        print(f"{'STALE':9} reviewed entry matches nothing here: {key}")
    uncovered = [f for f in findings if f.status == UNCOVERED]
    counts = {s: sum(f.status == s for f in findings) for s in (UNCOVERED, REVIEWED, COVERED)}
    print(f"audit: {counts[UNCOVERED]} uncovered, {counts[REVIEWED]} reviewed, {counts[COVERED]} covered"
          + ("" if python else " (registry targets not checked)"))
    return 1 if uncovered else 0


if __name__ == "__main__":
    sys.exit(main())
