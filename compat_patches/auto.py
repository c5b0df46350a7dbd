"""``import compat_patches.auto`` applies every patch whose bug exists here (honours the env vars).

A misspelt name in COMPAT_PATCHES_ONLY / COMPAT_PATCHES_DISABLE raises here, in the user's own
code; a patch that drifts or fails is logged and reported, and raises only in strict mode.
"""

from compat_patches.activation import activate, validate_environment

validate_environment()
ACTIVATION = activate("auto")
REPORT = ACTIVATION.report
