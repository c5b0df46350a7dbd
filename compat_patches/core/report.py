"""Structured per-patch, per-process reports and their table / JSON renderings."""

import json
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

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


@dataclass(frozen=True)
class PatchReport:
    name: str
    status: str
    reason: str
    versions: Mapping[str, Optional[str]]
    affected: Mapping[str, str]
    summary: str = ""
    upstream: str = ""
    fixed_in: Optional[str] = None
    targets: Tuple[str, ...] = ()
    pid: int = field(default_factory=os.getpid)

    @property
    def active(self):
        return self.status in ACTIVE

    def to_dict(self):
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "versions": dict(self.versions),
            "affected": dict(self.affected),
            "summary": self.summary,
            "upstream": self.upstream,
            "fixed_in": self.fixed_in,
            "targets": list(self.targets),
            "pid": self.pid,
        }


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
