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


class Patch(_Frozen):
    """A scoped, version-gated fix of one upstream bug.

    `affected` maps each distribution to the PEP 440 range where the bug exists; the first one is
    the primary distribution, whose version selects among target shapes. `verified_through` maps a
    distribution to the newest release the record was verified on: a newer installed release still
    gets the patch (an open range), and the report says it is unverified there. `upstream_tests` are
    pytest node ids (from the repository root) of the upstream fix's own regression tests, copied
    under tests/upstream/; `differences` says where the patch deliberately differs from upstream.
    """

    __slots__ = ("name", "summary", "upstream", "affected", "targets", "fixed_in", "notes",
                 "upstream_tests", "differences", "verified_through")
    _repr_fields = ("name", "affected")

    def __init__(self, name, summary, upstream, affected, targets, fixed_in=None, notes="",
                 upstream_tests=(), differences="", verified_through=None):
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
        self._init(name=name, summary=summary, upstream=upstream, affected=dict(affected),
                   targets=targets, fixed_in=fixed_in, notes=notes,
                   upstream_tests=tuple(upstream_tests), differences=differences,
                   verified_through=verified_through)

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
