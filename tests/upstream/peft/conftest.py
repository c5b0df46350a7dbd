"""[patched] mode of the copied PEFT tests applies the records a module names in ``ALSO_PATCHED`` too.

The two PEFT records share one converter and split the work by the kind of ``target_modules`` (a regex:
peft-moe-regex-targets; a list, a set or "all-linear": peft-shared-expert-targets), so PEFT's tests run
against both, as ``apply_all()`` would. In [unpatched] mode neither is active.
"""

import pytest

import compat_patches

ACTIVE = ("applied", "deferred")


@pytest.fixture(autouse=True)
def also_patched(request, upstream_mode):
    names = getattr(request.module, "ALSO_PATCHED", ())
    if upstream_mode == "unpatched" or not names:
        for name in names:
            assert compat_patches.report()[name].status not in ACTIVE, f"{name} is active in [unpatched] mode"
        yield
        return
    with compat_patches.patched(*names):
        yield
