"""compat_patches bootstrap: applies the patches at interpreter start.

`compat-patches-run` (compat_patches.launcher) puts this file's directory first on PYTHONPATH, so
Python imports it as `sitecustomize` in the launched process and in every Python process that
inherits the environment (multiprocessing spawn/forkserver children, subprocess, torchrun ranks,
Ray workers started from there).

1. The next `sitecustomize` on sys.path (the user's or the distribution's) runs first, exactly as
   if we were not there, and stays `sys.modules["sitecustomize"]`; its error is printed as Python
   prints it, and start-up goes on.
2. Then `compat_patches.activation.activate("sitecustomize")`: the COMPAT_PATCHES_* variables
   apply; a patch problem is logged, never fatal, unless COMPAT_PATCHES_STRICT=1, where the
   process exits with status 1 before running any user code.

Imports only the standard library, then compat_patches (wrapt, packaging): no ML library.
"""

import os
import sys



def _same_dir(entry, here):
    try:
        return os.path.realpath(entry or os.curdir) == here
    except (TypeError, ValueError):
        return False


def _chain_next_sitecustomize():
    import importlib.machinery
    from importlib._bootstrap import module_from_spec  # importlib.util costs ~4 ms a process

    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    ourselves = sys.modules.get(__name__)
    path = [entry for entry in sys.path if isinstance(entry, str) and not _same_dir(entry, here)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return None
    module = module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # as site.py reports an error in sitecustomize, then goes on
        if ourselves is not None:
            sys.modules["sitecustomize"] = ourselves
        if sys.flags.verbose:
            sys.excepthook(*sys.exc_info())
        else:
            sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                             f"{exc.__class__.__name__}: {exc}\n")
        return None
    return module


def _activate():
    try:
        from compat_patches.activation import activate
    except Exception as exc:  # e.g. another interpreter inherited PYTHONPATH without compat_patches
        sys.stderr.write(f"compat_patches: not importable in {sys.executable} "
                         f"({exc.__class__.__name__}: {exc}); this process is not patched\n")
        return None
    try:
        return activate("sitecustomize")
    except Exception as exc:  # activate() raises in strict mode only: refuse to run unpatched
        from compat_patches.core import env_strict

        strict = env_strict()
        sys.stderr.write(f"compat_patches: {'strict mode (COMPAT_PATCHES_STRICT): ' if strict else ''}"
                         f"{exc.__class__.__name__}: {exc}\n")
        if strict:
            sys.stderr.flush()
            os._exit(1)
        return None


if __name__ == "sitecustomize":
    _chain_next_sitecustomize()
    _activate()
