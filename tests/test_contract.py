"""The generated contract, for every registered patch whose library is installed in range here."""

import pytest

import compat_patches

from .contract import ORDERINGS, check_ordering, ordering_id, run_ordering


@pytest.mark.parametrize("ordering", ORDERINGS, ids=ordering_id)
@pytest.mark.parametrize("name", compat_patches.patch_names())
def test_contract(name, ordering):
    entry = compat_patches.report()[name]
    if entry.status != "pending":
        pytest.skip(f"{name} is {entry.status} here: {entry.reason}")
    result = check_ordering(run_ordering(name, ordering), ordering)
    if result.get("skip"):
        pytest.skip(result["skip"])


@pytest.mark.parametrize("name", compat_patches.patch_names())
def test_out_of_range_touches_nothing(name):
    entry = compat_patches.apply_all(only=[name])[name]
    try:
        if entry.status in ("not-needed", "not-installed", "disabled"):
            assert compat_patches.report()[name].status == entry.status
            assert name not in compat_patches._default_manager().active_names()
        else:
            pytest.skip(f"{name} is {entry.status} here (covered by test_contract)")
    finally:
        compat_patches.revert_all()
