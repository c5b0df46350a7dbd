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

# What the report command says it found (it applies, checks and reverts: nothing stays `applied`).
# `needed`: the installed releases have the bug and the patch would install cleanly (its target
# modules not importable here included: it would wait for their import).
NEEDED = "needed"
_FINDING = {APPLIED: NEEDED, DEFERRED: NEEDED, PENDING: NEEDED}
FINDING_WORDS = (NEEDED, NOT_NEEDED, NOT_INSTALLED, DISABLED, DRIFTED, FAILED)


def finding(status):
    """The report command's word for a status: `needed` for applied / deferred / pending, else the
    status itself (not-needed, not-installed, disabled, drifted, failed)."""
    return _FINDING.get(status, status)


def wrap_text(text, width, indent=""):
    """`text` as lines of at most `width` characters (None: one line), continuation lines indented."""
    if width is None:
        return [text]
    import textwrap

    return textwrap.wrap(text, width=max(width, len(indent) + 20), subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False) or [""]


def render_table(header, rows, *, width=None, min_last=40):
    """A plain-text table: every column padded to its widest cell but the last, which is wrapped so
    that each line fits `width` characters; where that leaves the last column fewer than `min_last`
    characters, it goes on indented lines of its own under each row. `width` None: never wrapped."""
    rows = [tuple(str(cell) for cell in row) for row in rows]
    columns = len(header)
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(columns - 1)]
    lead = sum(widths) + 2 * (columns - 1)
    stacked = width is not None and width - lead < min_last
    last = None if width is None else (width - 4 if stacked else width - lead)
    lines = ["  ".join([header[i].ljust(widths[i]) for i in range(columns - 1)]
                       + ([] if stacked else [header[-1]])).rstrip(),
             "  ".join(["-" * w for w in widths] + ([] if stacked else ["-" * max(len(header[-1]), 6)]))]
    for row in rows:
        pieces = wrap_text(row[-1], last) if last is not None else [row[-1]]
        cells = [row[i].ljust(widths[i]) for i in range(columns - 1)]
        if stacked:
            lines.append("  ".join(cells).rstrip())
            lines += [("    " + piece).rstrip() for piece in pieces]
        else:
            lines.append("  ".join(cells + [pieces[0]]).rstrip())
            lines += [(" " * lead + piece).rstrip() for piece in pieces[1:]]
    return "\n".join(lines)


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

    def table(self, width=None):
        """The live table (patch, library, range, status, reason); the reason column is wrapped to
        fit `width` characters, never when `width` is None."""
        rows = []
        for entry in self:
            library = ", ".join(f"{d} {v or '(absent)'}" for d, v in entry.versions.items())
            spec = ", ".join(f"{d}{s}" for d, s in entry.affected.items())
            rows.append((entry.name, library, spec, entry.status, entry.reason))
        return render_table(("patch", "library", "range", "status", "reason"), rows, width=width)

    def __str__(self):
        return self.table()
