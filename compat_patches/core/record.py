"""The declarative patch record: what a patch fixes, where the bug exists, what it wraps.

Plain classes, no dataclasses / typing / re: every record is built when the registry is first used,
in every patched process, so they must cost next to nothing to define.
"""

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


class _Frozen:
    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable (cannot set {name!r})")

    def _init(self, **values):
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._repr_fields)
        return f"{type(self).__name__}({fields})"


class Target(_Frozen):
    """One attribute to wrap, as ``"package.module:Class.attribute"``.

    `params` are the parameter names the original must have; `check(original)` may return a drift
    reason (source fingerprint); `fixed(original)` may return why this build already carries the
    upstream fix (a backport inside the affected range: the patch is then not needed); `versions`
    restricts this target to releases of the patch's primary distribution (a target that moved or
    changed shape gets one Target per shape).
    """

    __slots__ = ("path", "wrapper", "params", "check", "versions", "fixed", "module", "attribute")
    _repr_fields = ("path", "versions")

    def __init__(self, path, wrapper, params=None, check=None, versions=None, fixed=None):
        module, sep, attribute = path.partition(":") if isinstance(path, str) else ("", "", "")
        if not sep or not module or not attribute:
            raise ValueError(
                f"target path {path!r} must look like 'package.module:Class.attribute'"
            )
        if not callable(wrapper):
            raise TypeError(f"target {path!r}: wrapper must be callable, got {wrapper!r}")
        if isinstance(params, str):
            raise TypeError(f"target {path!r}: params must be a tuple of names, got {params!r}")
        if versions is not None and not isinstance(versions, str):
            raise TypeError(f"target {path!r}: versions must be a PEP 440 range string, "
                            f"got {versions!r}")
        self._init(path=path, wrapper=wrapper, params=None if params is None else tuple(params),
                   check=check, versions=versions, fixed=fixed, module=module, attribute=attribute)


def _strings(values, owner, what):
    values = (values,) if isinstance(values, str) else tuple(values)
    for value in values:
        if not isinstance(value, str) or not value:
            raise TypeError(f"{owner}: {what} must be non-empty strings, got {value!r}")
    return values


def _symbols(values, owner):
    symbols = _strings(values, owner, "symbols")
    for symbol in symbols:
        module, sep, rest = symbol.partition(":")
        if not sep or not module or not rest or " " in symbol:
            raise ValueError(f"{owner}: symbol {symbol!r} must look like 'package.module:Class.attribute' "
                             "(or 'package.module:NAME[\'key\']', 'package.module:function()')")
    return symbols


class Copy(_Frozen):
    """A known downstream hand patch (or workaround) of a bug: where it lives and what it does.

    `project` is the GitHub ``owner/name`` (or a plain name where there is no repository), `path`
    the file in it, `function` the function (or ``Class.method``) that installs or is the patch
    ("" for a whole module), `commit` the commit it was read at, `inventory` its row number in the
    field inventory, `what` one or two sentences for the docs page. ``python -m compat_patches scan``
    reports a definition of `function` in `path` even where it finds no assignment.
    """

    __slots__ = ("project", "path", "function", "commit", "inventory", "what")
    _repr_fields = ("project", "path", "function")

    def __init__(self, project, path="", function="", *, commit="", inventory=None, what=""):
        for field, value in (("project", project), ("path", path), ("function", function),
                             ("commit", commit), ("what", what)):
            if not isinstance(value, str):
                raise TypeError(f"copy {project!r}: {field} must be a string, got {value!r}")
        if not project:
            raise ValueError("copy: project must be named")
        if inventory is not None and not isinstance(inventory, int):
            raise TypeError(f"copy {project!r}: inventory must be a row number, got {inventory!r}")
        self._init(project=project, path=path, function=function, commit=commit,
                   inventory=inventory, what=what)

    @property
    def short_project(self):
        return self.project.rsplit("/", 1)[-1]


class Replaces(_Frozen):
    """What a record makes unnecessary downstream (the data of ``python -m compat_patches scan``).

    `symbols`: the upstream attributes a hand patch of this bug assigns or wraps, as
    ``"package.module:Class.attribute"`` where the attribute is defined (a subclass or a re-export
    such as ``transformers.PretrainedConfig`` matches too), ``"package.module:NAME['key']"`` for one
    entry of a registry dict, ``"package.module:register_x('key')"`` for a registration call with
    that first argument. `copies`: known downstream hand patches (Copy). `note`: what a user
    deletes and keeps on adopting the record (docs page prose). `use`: the one line to use instead
    (default: ``compat_patches.apply_all(only=["<name>"])``).
    """

    __slots__ = ("symbols", "copies", "note", "use")
    _repr_fields = ("symbols", "copies")

    def __init__(self, symbols=(), copies=(), note="", use=""):
        copies = tuple(copies)
        for copy in copies:
            if not isinstance(copy, Copy):
                raise TypeError(f"replaces: copies must be Copy, got {copy!r}")
        if not isinstance(note, str) or not isinstance(use, str):
            raise TypeError("replaces: note and use must be strings")
        self._init(symbols=_symbols(symbols, "replaces"), copies=copies, note=note, use=use)

    def __bool__(self):
        return bool(self.symbols or self.copies or self.note)


NOTHING_REPLACED = Replaces()


class NotNeeded(_Frozen):
    """A hand patch the field still carries that no release in `needed_in` calls for any more.

    `key` names it; `summary` says what the hand patch does; `symbols` / `copies` as in Replaces;
    `needed_in` maps distributions to the PEP 440 range where it may still be needed (a tuple of
    ranges means any of them; empty: needed nowhere, e.g. not a bug fix); `fixed_in` says which
    release made it unnecessary (or why it never was); `evidence` what shows it, and `verified`
    whether that was ``"measured"`` (run here) or ``"read"`` (read in the release's source).
    """

    __slots__ = ("key", "summary", "symbols", "copies", "needed_in", "fixed_in", "evidence",
                 "verified")
    _repr_fields = ("key", "needed_in")

    def __init__(self, key, summary, *, symbols=(), copies=(), needed_in=None, fixed_in="",
                 evidence="", verified="read"):
        owner = f"not-needed entry {key!r}"
        if not isinstance(key, str) or not key or set(key) - _NAME_CHARS - {"-"}:
            raise ValueError(f"{owner}: key must be lowercase words joined by '-'")
        if verified not in ("measured", "read"):
            raise ValueError(f"{owner}: verified must be 'measured' or 'read', got {verified!r}")
        needed_in = dict(needed_in or {})
        for dist, spec in needed_in.items():
            needed_in[dist] = _strings(spec, owner, f"needed_in[{dist!r}]")
        copies = tuple(copies)
        for copy in copies:
            if not isinstance(copy, Copy):
                raise TypeError(f"{owner}: copies must be Copy, got {copy!r}")
        self._init(key=key, summary=summary, symbols=_symbols(symbols, owner), copies=copies,
                   needed_in=needed_in, fixed_in=fixed_in, evidence=evidence, verified=verified)


class Patch(_Frozen):
    """A scoped, version-gated fix of one upstream bug.

    `affected` maps each distribution to the PEP 440 range where the bug exists; the first one is
    the primary distribution, whose version selects among target shapes. `verified_through` maps a
    distribution to the newest release the record was verified on: a newer installed release still
    gets the patch (an open range), and the report says it is unverified there. `upstream_tests` are
    pytest node ids (from the repository root) of the upstream fix's own regression tests, copied
    under tests/upstream/; `differences` says where the patch deliberately differs from upstream.
    `replaces` (a Replaces) names the upstream symbols hand patches of this bug assign or wrap and
    the known downstream copies: ``python -m compat_patches scan`` and the pages' "Replaces"
    sections are built from it.
    """

    __slots__ = ("name", "summary", "upstream", "affected", "targets", "fixed_in", "notes",
                 "upstream_tests", "differences", "verified_through", "replaces")
    _repr_fields = ("name", "affected")

    def __init__(self, name, summary, upstream, affected, targets, fixed_in=None, notes="",
                 upstream_tests=(), differences="", verified_through=None, replaces=None):
        if not (isinstance(name, str) and name and name[0] != "-" and name[-1] != "-"
                and "--" not in name and set(name) <= _NAME_CHARS | {"-"}):
            raise ValueError(f"patch name {name!r} must be lowercase words joined by '-'")
        if not affected:
            raise ValueError(f"patch {name!r}: affected must name at least one distribution")
        for dist, spec in affected.items():
            if not isinstance(spec, str):
                raise TypeError(f"patch {name!r}, distribution {dist!r}: the range must be a "
                                f"PEP 440 string, got {spec!r}")
        targets = tuple(targets)
        for target in targets:
            if not isinstance(target, Target):
                raise TypeError(f"patch {name!r}: targets must be Target, got {target!r}")
        if isinstance(upstream_tests, str):
            raise TypeError(f"patch {name!r}: upstream_tests must be a tuple of node ids, "
                            f"got the string {upstream_tests!r}")
        verified_through = dict(verified_through or {})
        for dist, version in verified_through.items():
            if dist not in affected or not isinstance(version, str):
                raise TypeError(f"patch {name!r}: verified_through must map distributions of `affected` "
                                f"to a release string, got {dist!r}: {version!r}")
        if replaces is None:
            replaces = NOTHING_REPLACED
        elif not isinstance(replaces, Replaces):
            raise TypeError(f"patch {name!r}: replaces must be Replaces, got {replaces!r}")
        self._init(name=name, summary=summary, upstream=upstream, affected=dict(affected),
                   targets=targets, fixed_in=fixed_in, notes=notes,
                   upstream_tests=tuple(upstream_tests), differences=differences,
                   verified_through=verified_through, replaces=replaces)

    @property
    def primary(self):
        """The distribution whose version selects target shapes: the first one in `affected`."""
        return next(iter(self.affected))

    def validate(self):
        """Parse every version range (imports packaging); raises ValueError naming the bad one."""
        from .versions import parse_specifier

        for dist, spec in self.affected.items():
            parse_specifier(spec, owner=f"patch {self.name!r}, distribution {dist!r}")
        from .versions import parse_version

        for dist, version in self.verified_through.items():
            if parse_version(version) is None:
                raise ValueError(f"patch {self.name!r}: verified_through {dist} {version!r} is not PEP 440")
        for target in self.targets:
            if target.versions is not None:
                parse_specifier(target.versions, owner=f"patch {self.name!r}, target {target.path!r}")
        return self
