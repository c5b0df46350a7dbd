"""``import compat_patches.auto`` applies every patch whose bug exists here (honours the env vars)."""

import compat_patches

REPORT = compat_patches.apply_all()
