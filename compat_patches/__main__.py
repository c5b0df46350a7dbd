"""``python -m compat_patches``: which patches apply in this environment, and why.

By default the target modules of every in-range patch are imported so that drift is checked
against the installed library; the patches are applied to find out, then reverted.
"""

import argparse
import logging
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


if __name__ == "__main__":
    sys.exit(main())
