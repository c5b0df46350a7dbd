"""``import compat_patches.auto`` applies every patch whose bug exists here (honours the env vars).

A bad COMPAT_PATCHES_* value (a misspelt name in COMPAT_PATCHES_ONLY / _DISABLE, a switch or log
level outside what is accepted) stops the process here, before anything is applied, with one line on
stderr naming the variable, its value and the valid ones, and exit status 2 (``SystemExit``, as a
command-line tool exits on a usage error): a training run must not go on silently unpatched. A patch
that drifts or fails is logged and reported, and raises only in strict mode.
"""

import sys

from compat_patches.activation import activate, validate_environment
from compat_patches.core.errors import CompatPatchesError

try:
    validate_environment()
except CompatPatchesError as _error:
    sys.stderr.write(f"compat_patches: error: {_error}\n")
    sys.stderr.flush()
    raise SystemExit(2) from None

ACTIVATION = activate("auto")
REPORT = ACTIVATION.report
