"""The compatibility table of the registry, in Markdown (``python -m compat_patches --markdown``).

It shows what each record declares (name, affected releases, the newest releases it was verified
on where its range is open, fixed in, upstream fix, summary), never
the status on this machine, so the copy in README.md is the same everywhere. Standard library only;
``import compat_patches`` does not import this module.
"""

import re

START = "<!-- compat-table:start -->"
END = "<!-- compat-table:end -->"
REGENERATE = "python -m compat_patches --markdown --update README.md"
NOT_FIXED = "not fixed upstream"
HEADER = ("patch", "library: affected releases", "verified through", "fixed in", "upstream fix", "summary")

_GITHUB = re.compile(
    r"^https?://github\.com/(?P<owner>[^/]+)/(?P<repo>[^/#?]+?)(?:\.git)?"
    r"(?:/(?P<kind>pull|issues|commit)/(?P<ref>[0-9A-Za-z]+))?/?(?:[#?].*)?$"
)


def upstream_text(url):
    """A short label for an upstream link: ``transformers#46142``, ``vllm@1a2b3c4``, ``vllm-ascend``;
    the URL itself when it is not a GitHub repository, pull request, issue or commit."""
    match = _GITHUB.match(url or "")
    if not match:
        return url
    repo, kind, ref = match["repo"], match["kind"], match["ref"]
    if kind in ("pull", "issues"):
        return f"{repo}#{ref}"
    if kind == "commit":
        return f"{repo}@{ref[:7]}"
    return repo


def cell(text):
    """`text` as the content of one Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def affected_text(affected):
    """``peft `>=0.19.0.dev0` with transformers `>=5.0.0rc0` ``: the bug needs every range at once."""
    parts = [f"{dist} `{spec}`" for dist, spec in affected.items()]
    return parts[0] + (" with " + ", ".join(parts[1:]) if parts[1:] else "")


def markdown_table(records, *, pages="docs/patches/"):
    """One row per record, in registry order. `pages` is the folder of the per-patch pages,
    relative to the file the table goes into."""
    rows = [HEADER, ("---",) * len(HEADER)]
    for record in records:
        upstream = record.upstream
        rows.append((
            f"[`{record.name}`]({pages}{record.name}.md)",
            affected_text(record.affected),
            ", ".join(f"{dist} {version}" for dist, version in record.verified_through.items()),
            record.fixed_in or NOT_FIXED,
            f"[{upstream_text(upstream)}]({upstream})" if upstream else "",
            record.summary,
        ))
    return "\n".join("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)


def replace_block(text, table, *, source="the file"):
    """`text` with everything between the START and END markers replaced by `table`.

    Raises ValueError when the markers are missing, repeated or out of order.
    """
    starts, ends = text.count(START), text.count(END)
    if starts != 1 or ends != 1:
        raise ValueError(f"{source} must hold exactly one {START} and one {END} line "
                         f"(found {starts} and {ends})")
    head, rest = text.split(START)
    if END not in rest:
        raise ValueError(f"{source}: {END} comes before {START}")
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def extract_block(text):
    """The table between the markers (without them), or None when the markers are not there."""
    if text.count(START) != 1 or text.count(END) != 1:
        return None
    rest = text.split(START, 1)[1]
    if END not in rest:
        return None
    return rest.split(END, 1)[0].strip("\n")
