"""``python -m compat_patches``: which patches apply in this environment, and why.

By default the target modules of every in-range patch are imported so that drift is checked
against the installed library; the patches are applied to find out, then reverted.

Stdout carries the report and nothing else: from the start to the exit of the command, file
descriptor 1 and ``sys.stdout`` point at stderr (libraries print banners and log lines on import,
some at exit), and the report is written to a copy of the original stdout. A configuration error
(an unknown patch name in COMPAT_PATCHES_ONLY, ...) is one ``python -m compat_patches: error: ...``
line on stderr and exit status 2; a reader that closes the pipe early (``| head``) ends the command
quietly with status 141, as a SIGPIPE would.

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

PROG = "python -m compat_patches"
EXIT_CONFIG = 2      # a configuration error (argparse uses 2 for usage errors too)
EXIT_STRICT = 1      # COMPAT_PATCHES_STRICT is on and a patch drifted or failed
EXIT_PIPE = 141      # 128 + SIGPIPE: the reader closed stdout early


def _parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Report which compat_patches apply here (patch, library, range, status, reason).",
        epilog="Environment: COMPAT_PATCHES_ONLY, COMPAT_PATCHES_DISABLE, COMPAT_PATCHES_STRICT "
               "(with STRICT on, the report is still printed and the exit status is 1 when a patch "
               "drifted or failed). Exit status 2: a configuration error.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--lazy", action="store_true",
                        help="do not import target libraries: patches on modules not imported "
                             "report 'deferred' instead of being checked for drift")
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
    return _main(argv, keep_stdout_diverted=False)


def _main(argv, *, keep_stdout_diverted):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.update and not args.markdown:
        parser.error("--update needs --markdown")
    if args.markdown and (args.json or args.lazy):
        parser.error("--markdown cannot be combined with --json or --lazy")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")

    output = _ReportOutput()
    try:
        try:
            if args.markdown:
                status, text = _markdown(args)
            else:
                status, text = _report(args)
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


def _report(args):
    manager = compat_patches._default_manager()
    manager.check_environment()  # a bad name is reported before any library is imported
    strict = env_strict()
    import_errors = {} if args.lazy else manager.import_targets()
    try:
        # strict mode would raise at the first drift: report every patch, then exit 1 below
        report = manager.apply_all(strict=False)
    finally:
        manager.revert_all()
    notes = [f"note: could not import {module} here ({error})"
             for module, error in sorted(import_errors.items())]
    if args.json:
        for note in notes:
            print(note, file=sys.stderr)
        text = report.to_json(indent=2)
    else:
        text = "\n".join([report.table(), *notes])
    status = EXIT_STRICT if strict and report.by_status("drifted", "failed") else 0
    if status:
        print(f"{PROG}: error: COMPAT_PATCHES_STRICT is on and "
              f"{', '.join(report.by_status('drifted', 'failed'))} drifted or failed",
              file=sys.stderr)
    return status, text


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
    sys.exit(_main(None, keep_stdout_diverted=True))
