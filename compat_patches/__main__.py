"""``python -m compat_patches``: which patches this environment needs, and why.

The command decides, checks and leaves nothing behind. By default it reads: installed versions from
the distributions' metadata, each needed record's targets from the installed source files (no
target library is imported or executed: :mod:`compat_patches.core.source_check`), and says what it
could not check that way. ``--deep`` imports the target modules and applies every needed patch for
real, then reverts it: the check a training process gets. ``--lazy`` reads versions only.

Each record gets one word (the ``finding``, the same in the table and in ``--json``): ``needed``,
``not-needed``, ``not-installed``, ``disabled``, ``drifted`` or ``failed``. ``--json`` keeps every
key it always had (``status`` is what ``apply_all()`` would report here: ``applied``, ``deferred``,
...) and adds ``finding``, ``check``, ``unchecked``, ``hand_patches``, ``compat_patches`` and
``mode``. The table fits the terminal (the reason column wraps); piped, its lines are whole.

Stdout carries the report and nothing else: from the start to the exit of the command, file
descriptor 1 and ``sys.stdout`` point at stderr (libraries print banners and log lines on import,
some at exit), and the report is written to a copy of the original stdout. A configuration error
(an unknown patch name in COMPAT_PATCHES_ONLY, a bad COMPAT_PATCHES_LOG_LEVEL, ...) is one
``python -m compat_patches: error: ...`` line on stderr and exit status 2; a reader that closes the
pipe early (``| head``) ends the command quietly with status 141, as a SIGPIPE would.

``--markdown`` prints the registry's compatibility table (no status: it is the same on every
machine); ``--markdown --update README.md`` rewrites the table between the
``<!-- compat-table:start -->`` and ``<!-- compat-table:end -->`` lines of that file.
"""

import argparse
import logging
import os
import sys

import compat_patches
from compat_patches.core import CompatPatchesError, PatchDriftError, PatchFailedError, env_strict
from compat_patches.core import report as st

PROG = "python -m compat_patches"
EXIT_CONFIG = 2      # a configuration error (argparse uses 2 for usage errors too)
EXIT_STRICT = 1      # COMPAT_PATCHES_STRICT is on and a patch drifted or failed
EXIT_PIPE = 141      # 128 + SIGPIPE: the reader closed stdout early

SOURCE, DEEP, LAZY = "source", "deep", "lazy"
# how a record's finding was reached (`check` in --json)
BY_VERSIONS = "versions"          # installed versions and the environment decided it
BY_SOURCE = "source"              # every target checked in the installed source files
BY_SOURCE_PARTLY = "source-partly"  # some checks could not run from source: `unchecked` says which
BY_IMPORT = "import"              # --deep: imported and applied


def _parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Report which compat_patches records fix a bug in this environment (needed, "
                    "not-needed, not-installed, disabled, drifted, failed) and why. Nothing is left "
                    "applied.",
        epilog="Environment: COMPAT_PATCHES_ONLY, COMPAT_PATCHES_DISABLE, COMPAT_PATCHES_STRICT (with "
               "STRICT on, the report is still printed and the exit status is 1 when a patch drifted "
               "or failed), COMPAT_PATCHES_REQUIRE_VERIFIED, COMPAT_PATCHES_LOG_LEVEL, "
               "COMPAT_PATCHES_LOG_FORMAT. Exit status 2: a configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"compat_patches {compat_patches.__version__}")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list (one object per record) instead of a table")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--deep", action="store_true",
                      help="import the target modules and apply each needed patch for real (then "
                           "revert it), instead of reading the installed source files")
    mode.add_argument("--lazy", action="store_true",
                      help="installed versions only: read no source, import nothing (drift is not "
                           "checked)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the compatibility table of every registered patch in Markdown "
                             "(what each record declares; no status here, nothing imported)")
    parser.add_argument("--update", metavar="FILE",
                        help="with --markdown: rewrite the table between the compat-table markers "
                             "of FILE (e.g. README.md) instead of printing it")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each patch decision")
    return parser


def main(argv=None):
    """Run the command; returns the exit status. Stdout is given back before returning."""
    return _dispatch(sys.argv[1:] if argv is None else argv, keep_stdout_diverted=False)


def _dispatch(argv, *, keep_stdout_diverted):
    if argv and argv[0] == "scan":
        from .scan import main as scan_main

        return scan_main(argv[1:])
    return _main(argv, keep_stdout_diverted=keep_stdout_diverted)


def _main(argv, *, keep_stdout_diverted):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.update and not args.markdown:
        parser.error("--update needs --markdown")
    if args.markdown and (args.json or args.lazy or args.deep):
        parser.error("--markdown cannot be combined with --json, --deep or --lazy")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")

    output = _ReportOutput()
    try:
        try:
            if args.markdown:
                status, text = _markdown(args)
            else:
                status, text = _report(args, width=None if args.json else output.columns())
        except CompatPatchesError as exc:
            return _fail(exc)
        if text is not None:
            try:
                output.write(text + "\n")
            except BrokenPipeError:
                return EXIT_PIPE
        return status
    finally:
        output.close(restore=not keep_stdout_diverted)


def _fail(exc):
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return EXIT_STRICT if isinstance(exc, (PatchDriftError, PatchFailedError)) else EXIT_CONFIG


# ----- the report ------------------------------------------------------------------------------------

class Finding:
    """One record's line of the command: its PatchReport plus how it was decided."""

    __slots__ = ("entry", "check", "unchecked", "hand_patches")

    def __init__(self, entry, check, unchecked=(), hand_patches=None):
        self.entry, self.check, self.unchecked, self.hand_patches = entry, check, list(unchecked), hand_patches

    @property
    def word(self):
        return st.finding(self.entry.status)

    def to_dict(self, mode):
        out = self.entry.to_dict()
        out.update(finding=self.word, check=self.check, unchecked=list(self.unchecked),
                   hand_patches=self.hand_patches, compat_patches=compat_patches.__version__, mode=mode)
        return out


def _report(args, *, width=None):
    from compat_patches.activation import validate_environment

    manager = compat_patches._default_manager()
    validate_environment()  # a bad name or value is reported before anything is read or imported
    strict = env_strict()
    mode = DEEP if args.deep else LAZY if args.lazy else SOURCE
    notes = []
    if mode == DEEP:
        findings, import_errors = _deep(manager)
        notes = [f"note: could not import {module} here ({error})"
                 for module, error in sorted(import_errors.items())]
    elif mode == LAZY:
        findings = _lazy(manager)
    else:
        findings = source_findings(manager)
        from compat_patches.core.log import INFO, log

        for item in findings:  # one line per decision, as --deep logs them (-v shows them)
            log(INFO, "%s: %s (%s)", item.entry.name, item.word, item.entry.reason)
    for item in findings:
        item.hand_patches = hand_patches(item.entry.name)
    if args.json:
        import json

        for note in notes:
            print(note, file=sys.stderr)
        text = json.dumps([item.to_dict(mode) for item in findings], indent=2)
    else:
        text = render(findings, mode, notes=notes, width=width)
    status = 0
    bad = [item.entry.name for item in findings if item.entry.status in (st.DRIFTED, st.FAILED)]
    if strict and bad:
        status = EXIT_STRICT
        print(f"{PROG}: error: COMPAT_PATCHES_STRICT is on and {', '.join(bad)} drifted or failed",
              file=sys.stderr)
    refused = _refused(manager, findings)
    if refused:
        status = EXIT_STRICT
        print(f"{PROG}: error: COMPAT_PATCHES_REQUIRE_VERIFIED is on and {', '.join(refused)} "
              "would not be applied (installed releases newer than they were verified through)",
              file=sys.stderr)
    return status, text


def _refused(manager, findings):
    """Records COMPAT_PATCHES_REQUIRE_VERIFIED keeps off: disabled, on releases newer than verified."""
    from compat_patches.core.manager import env_require_verified, unverified

    if not env_require_verified():
        return []
    return [item.entry.name for item in findings if item.entry.status == st.DISABLED
            and unverified(manager.get(item.entry.name), item.entry.versions)]


def _each(manager, apply):
    """apply(name) for every record in order; a record refused by COMPAT_PATCHES_REQUIRE_VERIFIED
    is reported as the manager recorded it (disabled) instead of ending the report."""
    from compat_patches.core import PatchUnverifiedError

    entries = []
    try:
        for name in manager.names:
            try:
                entries.append(apply(name)[name])
            except PatchUnverifiedError:
                entries.append(manager.report()[name])
    finally:
        manager.revert_all()
    return entries


def _deep(manager):
    """Apply first, then import the target modules, as a training process does (``import
    compat_patches.auto`` first): a record that makes a library importable (peft-hybrid-cache-import)
    is in place before the modules that need it are imported; the rest install through their
    post-import hooks. Then report and revert."""
    from compat_patches.core import PatchUnverifiedError

    import_errors = {}
    try:
        for name in manager.names:
            try:
                manager.apply_all(only=[name], strict=False)
            except PatchUnverifiedError:
                pass  # refused and recorded (disabled); the report below says so
        import_errors = manager.import_targets()
        entries = list(manager.report())
    finally:
        manager.revert_all()
    return [Finding(entry, BY_IMPORT if manager.in_range(entry.name) else BY_VERSIONS)
            for entry in entries], import_errors


def _lazy(manager):
    entries = _each(manager, lambda name: manager.apply_all(only=[name], strict=False))
    return [Finding(entry, BY_VERSIONS,
                    ["drift not checked (--lazy): run without --lazy to read the installed source"]
                    if st.finding(entry.status) == st.NEEDED else ())
            for entry in entries]


def _base_reason(entry):
    return ", ".join(f"{d} {v}" for d, v in entry.versions.items()) + " has the bug"


def _unverified_suffix(entry):
    if not entry.unverified:
        return ""
    return "; unverified on " + ", ".join(f"{dist} {entry.versions[dist]}: verified through {verified}"
                                          for dist, verified in entry.unverified.items())


def source_findings(manager, index=None):
    """What ``--deep`` would find, read from the installed source files (nothing imported)."""
    from compat_patches.core.manager import ENV_REQUIRE_VERIFIED, env_require_verified
    from compat_patches.core.report import PatchReport
    from compat_patches.core.source_check import SourceIndex, check_target

    index = SourceIndex() if index is None else index
    out = []
    for entry in manager.report():
        if entry.status != st.PENDING:  # decided by versions or the environment, as --deep decides it
            out.append(Finding(entry, BY_VERSIONS))
            continue
        patch = manager.get(entry.name)
        targets = manager.targets_for(entry.name)
        base = _base_reason(entry)
        unchecked, problem, missing, present = [], None, set(), set()
        if entry.unverified and env_require_verified():
            status = st.DISABLED
            reason = (f"{base}, but " + ", ".join(f"{d} {entry.versions[d]} is newer than the {v} it was "
                                                  "verified through" for d, v in entry.unverified.items())
                      + f" and {ENV_REQUIRE_VERIFIED} is on")
        else:
            for target in targets:
                result = check_target(index, target)
                unchecked += result.unchecked
                if not result.module_found:
                    missing.add(target.module)
                    continue
                present.add(target.module)
                if result.status is not None:
                    problem = result
                    break
            if problem is not None:
                status, reason = problem.status, problem.reason
            elif missing:
                status = st.APPLIED if present else st.DEFERRED
                reason = (f"{base}; no installed file defines {', '.join(sorted(missing))}: it would "
                          "wait for their import") + _unverified_suffix(entry)
            else:
                status = st.APPLIED
                reason = base + (f"; fixed upstream in {patch.fixed_in}: upgrade and drop it"
                                 if patch.fixed_in else "") + _unverified_suffix(entry)
        # the fields --deep gives: the targets selected here; `unverified` only where it would apply
        report = PatchReport(name=entry.name, status=status, reason=reason, versions=entry.versions,
                             affected=entry.affected, summary=entry.summary, upstream=entry.upstream,
                             fixed_in=entry.fixed_in, targets=tuple(t.path for t in targets),
                             unverified=entry.unverified if status in (st.APPLIED, st.DEFERRED) else {})
        out.append(Finding(report, BY_SOURCE_PARTLY if unchecked else BY_SOURCE, unchecked))
    return out


# ----- hand patches (the records' pages; issue 29 makes this data) ------------------------------------

def hand_patches(name, docs=None):
    """``docs/patches/<name>.md#replaces`` when that page (a source checkout or an unpacked sdist) says
    it replaces known downstream hand patches of the bug; None otherwise or without the docs.
    `docs`: the docs folder (default: the one next to the package)."""
    if docs is None:
        docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(compat_patches.__file__))), "docs")
    try:
        with open(os.path.join(docs, "patches", f"{name}.md"), encoding="utf-8") as file:
            text = file.read()
    except OSError:
        return None
    section = text.partition("\n## Replaces\n")[2].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if not line.strip().startswith("<!--")]
    section = "\n".join(lines).strip()
    if not section:
        return None
    opening = " ".join(section.split("\n\n", 1)[0].lower().split())[:200]
    if opening.startswith("no ") or any(words in opening for words in ("found no", "lists no", "no hand patch",
                                                                      "no monkey-patch", "no known")):
        return None
    if not any(line.startswith("- ") for line in lines):
        return None
    return f"docs/patches/{name}.md#replaces"


# ----- rendering ---------------------------------------------------------------------------------------

_MODE_TEXT = {
    SOURCE: "read from the installed source files (nothing imported; --deep imports and applies)",
    DEEP: "imported and applied, then reverted (--deep)",
    LAZY: "installed versions only (--lazy: drift not checked)",
}


def _libraries(findings):
    versions = {}
    for item in findings:
        versions.update(item.entry.versions)
    read = [f"{d} {v}" for d, v in versions.items() if v is not None]
    absent = sorted(d for d, v in versions.items() if v is None)
    return read, absent


def render(findings, mode, *, notes=(), width=None):
    """The command's text: what was read, one row per record, a summary and what to do next."""
    from compat_patches.core.report import render_table, wrap_text

    read, absent = _libraries(findings)
    version = sys.version.split()[0]
    lines = wrap_text(f"compat_patches {compat_patches.__version__} on Python {version}: {_MODE_TEXT[mode]}",
                      width, "  ")
    lines += wrap_text("installed: " + (", ".join(read) or "none of the libraries the records fix")
                       + (f"; not installed: {', '.join(absent)}" if absent else ""), width, "  ")
    lines.append("")
    rows = [(item.entry.name, item.word, item.entry.reason
             + (f" [{len(item.unchecked)} check(s) need --deep]" if item.unchecked
                and item.check != BY_VERSIONS else ""))
            for item in findings]
    lines.append(render_table(("patch", "finding", "reason"), rows, width=width))
    lines += [""] + [line for text in summary(findings, mode) for line in wrap_text(text, width, "  ")]
    lines += list(notes)
    return "\n".join(lines)


def summary(findings, mode):
    """The closing lines: counts, then what to do next."""
    def named(word):
        return [item.entry.name for item in findings if item.word == word]

    needed = named(st.NEEDED)
    counts = [f"{len(named(word))} {word}" for word in st.FINDING_WORDS[1:] if named(word)]
    total = len(findings)
    lines = [f"{len(needed)} of {total} records fix a bug in this environment"
             + (f" ({', '.join(needed)})" if needed else "") + (f"; {', '.join(counts)}." if counts else ".")]
    if needed:
        lines.append("Next: add `import compat_patches.auto` as the first line of the training script "
                     "(or call compat_patches.apply_all()); for every process of a distributed run, "
                     "launch it as `compat-patches-run python train.py`"
                     + ("; vLLM's own workers apply them through the installed vllm.general_plugins "
                        "entry point" if _installed("vllm") else "")
                     + ("; Ray actors: runtime_env=compat_patches.ray.runtime_env()" if _installed("ray") else "")
                     + ".")
    else:
        lines.append("Next: nothing to apply here.")
    drifted = named(st.DRIFTED) + named(st.FAILED)
    if drifted:
        lines.append(f"{', '.join(drifted)}: the installed release has the bug but its code is not what the "
                     "record was written for, so the patch stays off (reason above); a newer compat_patches "
                     "may cover it.")
    gone = [f"{item.entry.name} ({item.hand_patches})" for item in findings
            if item.word == st.NOT_NEEDED and item.hand_patches]
    if gone:
        lines.append("Not needed here, so the hand patches of these bugs that the pages list can go: "
                     + ", ".join(gone) + ".")
    partly = [item.entry.name for item in findings if item.unchecked and item.check != BY_VERSIONS]
    if partly and mode == SOURCE:
        lines.append(f"Not every check of {', '.join(partly)} can run from source (--json: `unchecked`); "
                     f"`{PROG} --deep` imports the libraries and applies for real.")
    return lines


def _installed(distribution):
    from compat_patches.core.versions import installed_version

    return installed_version(distribution) is not None


# ----- --markdown -------------------------------------------------------------------------------------

def _markdown(args):
    from compat_patches.core.table import markdown_table, replace_block
    from compat_patches.patches import ALL_PATCHES

    table = markdown_table(ALL_PATCHES)
    if not args.update:
        return 0, table
    try:
        with open(args.update, encoding="utf-8") as file:
            old = file.read()
    except OSError as exc:
        raise _UsageError(f"cannot read {args.update}: {exc.strerror or exc}") from None
    try:
        new = replace_block(old, table, source=args.update)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    if new == old:
        print(f"{args.update}: compatibility table already up to date", file=sys.stderr)
    else:
        with open(args.update, "w", encoding="utf-8") as file:
            file.write(new)
        print(f"{args.update}: compatibility table updated", file=sys.stderr)
    return 0, None


class _UsageError(CompatPatchesError):
    """A bad --update file (missing, no markers): reported like a configuration error."""


class _ReportOutput:
    """Where the report goes: the original stdout, while everything else goes to stderr.

    On a real file descriptor 1, fd 1 is pointed at stderr (C extensions, handlers holding
    ``sys.__stdout__``, output at exit) and the report is written to a duplicate of the original.
    Without one (stdout replaced in-process), only ``sys.stdout`` is swapped.
    """

    def __init__(self):
        self._stdout = sys.stdout
        self._encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        self._fd = None
        try:
            real = sys.stdout is not None and sys.stdout.fileno() == 1
        except (AttributeError, OSError, ValueError):  # stdout replaced in-process (a capture)
            real = False
        if real:
            sys.stdout.flush()
            fd = os.dup(1)
            try:
                os.dup2(2, 1)
            except OSError:  # no stderr to point at: leave fd 1 alone
                os.close(fd)
            else:
                self._fd = fd
        if sys.stderr is not None:
            sys.stdout = sys.stderr

    def columns(self):
        """The width to fit: $COLUMNS when set, else the terminal's; None when the report is piped."""
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            columns = 0
        if columns > 0:
            return columns
        fd = self._fd
        if fd is None:
            try:
                fd = self._stdout.fileno()
            except (AttributeError, OSError, ValueError):
                return None
        try:
            return os.get_terminal_size(fd).columns if os.isatty(fd) else None
        except OSError:
            return None

    def write(self, text):
        if self._fd is None:
            if self._stdout is None:  # stdout closed (`>&-`): nowhere to write
                return
            self._stdout.write(text)
            self._stdout.flush()
            return
        data = text.encode(self._encoding, errors="backslashreplace")
        while data:
            data = data[os.write(self._fd, data):]

    def close(self, restore=True):
        if self._fd is not None:
            if restore:
                if sys.stderr is not None:
                    sys.stderr.flush()
                os.dup2(self._fd, 1)
            os.close(self._fd)
            self._fd = None
        if restore:
            sys.stdout = self._stdout


if __name__ == "__main__":
    sys.exit(_dispatch(sys.argv[1:], keep_stdout_diverted=True))
