"""The declarative patch record: what a patch fixes, where the bug exists, what it wraps."""

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Tuple

from .versions import parse_specifier

_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Target:
    """One attribute to wrap, as ``"package.module:Class.attribute"``.

    `params` are the parameter names the original must have; `check(original)` may return a drift
    reason (source fingerprint); `fixed(original)` may return why this build already carries the
    upstream fix (a backport inside the affected range: the patch is then not needed); `versions`
    restricts this target to releases of the patch's primary distribution (a target that moved or
    changed shape gets one Target per shape).
    """

    path: str
    wrapper: Callable
    params: Optional[Tuple[str, ...]] = None
    check: Optional[Callable] = None
    versions: Optional[str] = None
    fixed: Optional[Callable] = None

    def __post_init__(self):
        module, sep, attribute = self.path.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(
                f"target path {self.path!r} must look like 'package.module:Class.attribute'"
            )
        if not callable(self.wrapper):
            raise TypeError(f"target {self.path!r}: wrapper must be callable, got {self.wrapper!r}")
        if self.params is not None:
            object.__setattr__(self, "params", tuple(self.params))
        if self.versions is not None:
            parse_specifier(self.versions, owner=f"target {self.path!r}")

    @property
    def module(self):
        return self.path.partition(":")[0]

    @property
    def attribute(self):
        return self.path.partition(":")[2]


@dataclass(frozen=True)
class Patch:
    """A scoped, version-gated fix of one upstream bug."""

    name: str
    summary: str
    upstream: str
    affected: Mapping[str, str]
    targets: Tuple[Target, ...]
    fixed_in: Optional[str] = None
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(f"patch name {self.name!r} must be lowercase words joined by '-'")
        if not self.affected:
            raise ValueError(f"patch {self.name!r}: affected must name at least one distribution")
        for dist, spec in self.affected.items():
            parse_specifier(spec, owner=f"patch {self.name!r}, distribution {dist!r}")
        object.__setattr__(self, "affected", MappingProxyType(dict(self.affected)))
        object.__setattr__(self, "targets", tuple(self.targets))
        for target in self.targets:
            if not isinstance(target, Target):
                raise TypeError(f"patch {self.name!r}: targets must be Target, got {target!r}")

    @property
    def primary(self):
        """The distribution whose version selects target shapes: the first one in `affected`."""
        return next(iter(self.affected))
