"""``python -m compat_patches``: which patches apply in this environment, and why.

By default the target modules of every in-range patch are imported so that drift is checked
against the installed library; the patches are applied to find out, then reverted.
"""

import argparse
import contextlib
import logging
import os
import sys

import compat_patches


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m compat_patches",
        description="Report which compat_patches apply here (patch, library, range, status, reason).",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--lazy", action="store_true",
                        help="do not import target libraries: patches on modules not imported "
                             "report 'deferred' instead of being checked for drift")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each patch decision")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")

    manager = compat_patches._default_manager()
    with _stdout_to_stderr():  # libraries log to stdout on import (vLLM does): keep ours parseable
        import_errors = {} if args.lazy else manager.import_targets()
        try:
            report = manager.apply_all()
        finally:
            manager.revert_all()
    if args.json:
        print(report.to_json(indent=2))
    else:
        print(report.table())
        for module, error in sorted(import_errors.items()):
            print(f"note: could not import {module} here ({error})")
    return 0


@contextlib.contextmanager
def _stdout_to_stderr():
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # also what C extensions and already-configured handlers write to fd 1
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
