"""``compat-patches-run``: run a command with the patches applied in every Python process it starts.

    compat-patches-run python train.py --lr 1e-5
    compat-patches-run --disable vllm-ascend-moe-layout torchrun --nproc-per-node 8 train.py
    compat-patches-run -v --strict python -m verl.trainer.main_ppo ...

It puts compat_patches' bootstrap directory (a ``sitecustomize``) first on ``PYTHONPATH``, keeping
what was there, sets the COMPAT_PATCHES_* variables its options ask for, and replaces itself with
the command (``os.execvpe``). Every Python process that inherits that environment (the command,
its multiprocessing children, subprocesses, torchrun ranks, a Ray cluster started there) applies the
patches at start-up; an existing ``sitecustomize`` still runs, before ours.

Patch names (options and the COMPAT_PATCHES_ONLY / COMPAT_PATCHES_DISABLE already in the
environment) are checked before the command starts: an unknown name exits with status 2 and the list
of known names. ``--print-pythonpath`` prints the PYTHONPATH to export where the command cannot be
wrapped (a container entry point, ``ray start`` on other nodes).
"""

import argparse
import os
import sys

from .activation import ENV_LOG_LEVEL
from .core.manager import ALL_VALUES, ENV_DISABLE, ENV_ONLY, ENV_STRICT


def bootstrap_dir():
    """The directory holding our ``sitecustomize.py``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")


def pythonpath(existing=None):
    """PYTHONPATH with the bootstrap directory first and `existing` (default: the current
    PYTHONPATH) after it, without repeating the bootstrap directory."""
    existing = os.environ.get("PYTHONPATH", "") if existing is None else existing
    ours = bootstrap_dir()
    rest = [entry for entry in existing.split(os.pathsep)
            if entry and os.path.realpath(entry) != os.path.realpath(ours)]
    return os.pathsep.join([ours] + rest)


def build_env(environ=None, *, only=None, disable=None, strict=None, log_level=None):
    """The environment the command runs in (a new dict). Raises CompatPatchesError (an unknown
    name, or a bad COMPAT_PATCHES_* value)."""
    from .activation import validate_environment, validate_names

    env = dict(os.environ if environ is None else environ)
    if only is not None:
        env[ENV_ONLY] = ",".join(validate_names(only, "--only"))
    if disable is True or (isinstance(disable, str) and disable.strip().lower() in ALL_VALUES):
        env[ENV_DISABLE] = "1"
    elif disable:
        env[ENV_DISABLE] = ",".join(validate_names(disable, "--disable"))
    if strict is not None:
        env[ENV_STRICT] = "1" if strict else "0"
    if log_level:
        env[ENV_LOG_LEVEL] = log_level
    validate_environment(env)
    env["PYTHONPATH"] = pythonpath(env.get("PYTHONPATH", ""))
    return env


def _parser():
    parser = argparse.ArgumentParser(
        prog="compat-patches-run",
        usage="compat-patches-run [options] [--] command [args ...]",
        description="Run a command with compat_patches applied at start-up in every Python "
                    "process it starts (a sitecustomize first on PYTHONPATH).",
        epilog="Environment: COMPAT_PATCHES_ONLY, COMPAT_PATCHES_DISABLE, COMPAT_PATCHES_STRICT "
               "are honoured and passed on. See `python -m compat_patches` for the patch names.",
    )
    parser.add_argument("--only", metavar="NAMES",
                        help="comma-separated patch names: apply just these (COMPAT_PATCHES_ONLY)")
    parser.add_argument("--disable", metavar="NAMES",
                        help="comma-separated patch names not to apply, or 'all' "
                             "(COMPAT_PATCHES_DISABLE)")
    parser.add_argument("--strict", action="store_true", default=None,
                        help="a drifted or failed patch stops the process (COMPAT_PATCHES_STRICT=1)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print one line per process and per patch decision on stderr "
                             "(COMPAT_PATCHES_LOG_LEVEL=INFO)")
    parser.add_argument("--print-pythonpath", action="store_true",
                        help="print the PYTHONPATH that activates compat_patches, then exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    from .core import CompatPatchesError

    try:
        env = build_env(only=args.only, disable=args.disable, strict=args.strict,
                        log_level="INFO" if args.verbose else None)
    except CompatPatchesError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.print_pythonpath:
        print(env["PYTHONPATH"])
        return 0
    if not command:
        parser.error("no command given (e.g. compat-patches-run python train.py)")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        parser.exit(127, f"{parser.prog}: error: command not found: {command[0]}\n")
    except PermissionError:
        parser.exit(126, f"{parser.prog}: error: permission denied: {command[0]}\n")


if __name__ == "__main__":
    sys.exit(main())
