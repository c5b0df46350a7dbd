"""Structured per-patch, per-process reports and their table / JSON renderings."""

import os

APPLIED = "applied"
DEFERRED = "deferred"
PENDING = "pending"
NOT_NEEDED = "not-needed"
NOT_INSTALLED = "not-installed"
DISABLED = "disabled"
DRIFTED = "drifted"
FAILED = "failed"

STATUSES = (APPLIED, DEFERRED, PENDING, NOT_NEEDED, NOT_INSTALLED, DISABLED, DRIFTED, FAILED)
ACTIVE = (APPLIED, DEFERRED)
FINDINGS = (FAILED, DRIFTED, NOT_NEEDED, DISABLED)  # what an attempt found; true until the next attempt

_FIELDS = ("name", "status", "reason", "versions", "affected", "summary", "upstream", "fixed_in",
           "targets", "pid", "unverified")


class PatchReport:
    """What one patch did in one process (immutable). `unverified`: {distribution: the newest release
    the record was verified on} for each installed release newer than that."""

    __slots__ = _FIELDS

    def __init__(self, name, status, reason, versions, affected, summary="", upstream="",
                 fixed_in=None, targets=(), pid=None, unverified=None):
        for field, value in zip(_FIELDS, (name, status, reason, dict(versions), dict(affected),
                                          summary, upstream, fixed_in, tuple(targets),
                                          os.getpid() if pid is None else pid, dict(unverified or {}))):
            object.__setattr__(self, field, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"PatchReport is immutable (cannot set {name!r})")

    def __eq__(self, other):
        if not isinstance(other, PatchReport):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self):
        return f"PatchReport(name={self.name!r}, status={self.status!r}, reason={self.reason!r})"

    def __reduce__(self):  # reports cross process boundaries (Ray, multiprocessing)
        return PatchReport, tuple(getattr(self, field) for field in _FIELDS)

    @property
    def active(self):
        return self.status in ACTIVE

    def to_dict(self):
        out = {field: getattr(self, field) for field in _FIELDS}
        out["versions"], out["affected"] = dict(self.versions), dict(self.affected)
        out["unverified"] = dict(self.unverified)
        out["targets"] = list(self.targets)
        return out


class Report(tuple):
    """An ordered tuple of PatchReport; also indexable by patch name."""

    def __getitem__(self, key):
        if isinstance(key, str):
            for entry in self:
                if entry.name == key:
                    return entry
            raise KeyError(f"no patch named {key!r} in this report; names: {', '.join(self.names)}")
        return tuple.__getitem__(self, key)

    @property
    def names(self):
        return tuple(entry.name for entry in self)

    def by_status(self, *statuses):
        return tuple(entry.name for entry in self if entry.status in statuses)

    def to_json(self, **kwargs):
        import json

        return json.dumps([entry.to_dict() for entry in self], **kwargs)

    def table(self):
        rows = [("patch", "library", "range", "status", "reason")]
        for entry in self:
            library = ", ".join(f"{d} {v or '(absent)'}" for d, v in entry.versions.items())
            spec = ", ".join(f"{d}{s}" for d, s in entry.affected.items())
            rows.append((entry.name, library, spec, entry.status, entry.reason))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = []
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
            lines.append("  ".join(cells).rstrip())
        lines.insert(1, "  ".join("-" * w for w in widths) + "  ------")
        return "\n".join(lines)

    def __str__(self):
        return self.table()
