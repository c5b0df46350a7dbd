"""The generated contract, for every registered patch whose library is installed in range here."""

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

import compat_patches

from .contract import ORDERINGS, check_ordering, ordering_id, run_ordering


@functools.lru_cache(maxsize=None)
def _children(name):
    """Every ordering's fresh process for `name`, started together (one per core): each child
    mostly waits on imports, and a set runs 14 of them per patch in range."""
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    futures = {ordering: pool.submit(run_ordering, name, ordering) for ordering in ORDERINGS}
    pool.shutdown(wait=False)
    return futures


@pytest.mark.parametrize("ordering", ORDERINGS, ids=ordering_id)
@pytest.mark.parametrize("name", compat_patches.patch_names())
def test_contract(name, ordering):
    if not compat_patches._default_manager().in_range(name):  # the version gate, not the report:
        entry = compat_patches.report()[name]                 # a finding left by another test
        pytest.skip(f"{name} is {entry.status} here: {entry.reason}")  # must not hide a patch
    result = check_ordering(_children(name)[ordering].result(), ordering)
    if result.get("skip"):  # in range here: a skip would be a pass that proved nothing
        pytest.fail(f"{name} is in range here but its contract could not run: {result['skip']}")


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


def _outcome(operation, obj):
    try:
        operation(obj)
    except Exception as exc:
        return type(exc).__name__
    return "ok"


def _round_trip(obj):
    import pickle

    pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("name", compat_patches.patch_names())
def test_patched_targets_pickle_and_copy_as_their_originals(name):
    """Ray and multiprocessing pickle references to functions, configs deep-copy bound methods:
    patched, each target pickles, copies and deep-copies exactly when its original does."""
    import copy
    import importlib

    import wrapt

    manager = compat_patches._default_manager()
    if not manager.in_range(name):
        pytest.skip(f"{name} is out of range here")
    targets = manager.targets_for(name)
    modules = {t.module: importlib.import_module(t.module) for t in targets}

    def outcomes():
        found = {}
        for target in targets:
            parent, attribute, _ = wrapt.resolve_path(modules[target.module], target.attribute)
            obj = getattr(parent, attribute)  # as users reach it: through the class or module
            found[target.path] = [_outcome(op, obj) for op in (_round_trip, copy.copy, copy.deepcopy)]
        return found

    before = outcomes()
    with compat_patches.patched(name) as report:
        assert report[name].status == "applied", report[name]
        assert outcomes() == before
