"""Defects found by adversarial use of the core (issue 13); each test failed before its fix."""

import copy
import importlib
import logging
import multiprocessing
import pickle
import sys
import threading
import time
import types

import pytest

import compat_patches
from compat_patches.core import (
    InvalidSettingError, PatchDriftError, PatchFailedError, PatchManager, UnknownPatchError,
    live_managers,
)

from .fakes import drop_module, import_module, make_patch, manager, our_wrappers, write_module

METHODS_SOURCE = '''
class Base:
    def method(self, x, scale=1):
        return ("original", x * scale)

    @staticmethod
    def static(x):
        return ("original", x)

    @classmethod
    def klass(cls, x):
        return ("original", cls.__name__, x)


def function(a, b):
    return a + b
'''


@pytest.fixture
def mod(tmp_path, monkeypatch):
    return import_module(tmp_path, monkeypatch)


def _wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ----- 1. first use from many threads makes one manager ----------------------------------------
def test_first_use_from_eight_threads_makes_one_manager(mod, monkeypatch):
    class SlowManager(PatchManager):  # widen the race window of the first use
        def __init__(self, *args, **kwargs):
            time.sleep(0.05)
            super().__init__(*args, **kwargs)

    patch = make_patch(mod.__name__, affected={"packaging": ">=0"})  # installed in every set
    original = vars(mod.Base)["method"]
    monkeypatch.setattr(compat_patches, "_manager", None)
    monkeypatch.setattr(compat_patches, "PatchManager", SlowManager)
    monkeypatch.setattr(importlib.import_module("compat_patches.patches"), "ALL_PATCHES", (patch,))
    before = len(live_managers())
    barrier = threading.Barrier(8)

    def first_use():
        barrier.wait()
        compat_patches.apply_all()

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(live_managers()) - before == 1
        assert our_wrappers(vars(mod.Base)["method"], patch.targets[0].wrapper) == 1
    finally:
        compat_patches.revert_all()
    assert vars(mod.Base)["method"] is original
    assert compat_patches.report()["fake-fix"].status == "pending"


# ----- 2. revert_all() inside patched() ---------------------------------------------------------
def test_revert_inside_a_scope_then_a_new_scope_applies_and_reports_it(mod):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__))
    with m.patched("fake-fix"):
        m.revert_all()
        assert vars(mod.Base)["method"] is original
    assert m._states["fake-fix"].holds == 0
    with m.patched("fake-fix") as report:
        assert report["fake-fix"].status == "applied"
        assert m.report()["fake-fix"].status == "applied"
        assert mod.Base().method(2) == ("fake-fix", ("original", 2))
    assert vars(mod.Base)["method"] is original
    assert m.report()["fake-fix"].status == "pending"


def test_an_outer_scope_cancelled_by_revert_does_not_end_a_later_scope(mod):
    m = manager(make_patch(mod.__name__))
    outer = m.patched("fake-fix")
    outer.__enter__()
    m.revert_all()
    with m.patched("fake-fix"):
        outer.__exit__(None, None, None)  # leaving the cancelled scope changes nothing
        assert mod.Base().method(1) == ("fake-fix", ("original", 1))
    assert mod.Base().method(1) == ("original", 1)


def test_revert_inside_a_scope_before_import_keeps_the_next_scope_hooked(tmp_path, monkeypatch):
    name = write_module(tmp_path, monkeypatch)
    try:
        m = manager(make_patch(name))
        with m.patched("fake-fix"):
            m.revert_all()
        with m.patched("fake-fix") as report:
            assert report["fake-fix"].status == "deferred"
            module = importlib.import_module(name)
            assert module.Base().method(1) == ("fake-fix", ("original", 1))
            assert m.report()["fake-fix"].status == "applied"
        assert module.Base().method(1) == ("original", 1)
    finally:
        drop_module(name)


# ----- 3. a module another thread is still importing --------------------------------------------
SLOW_SOURCE = '''
import _compat_patches_test_gate as gate
gate.entered.set()
gate.release.wait(10)

class Base:
    def method(self, x, scale=1):
        return ("original", x * scale)
'''


@pytest.mark.parametrize("strict", [False, True])
def test_module_being_imported_by_another_thread_is_deferred_not_drifted(tmp_path, monkeypatch,
                                                                         strict):
    gate = types.ModuleType("_compat_patches_test_gate")
    gate.entered, gate.release = threading.Event(), threading.Event()
    monkeypatch.setitem(sys.modules, gate.__name__, gate)
    name = write_module(tmp_path, monkeypatch, SLOW_SOURCE)
    importer = threading.Thread(target=importlib.import_module, args=(name,))
    importer.start()
    try:
        assert gate.entered.wait(10)
        m = manager(make_patch(name))
        entry = m.apply_all(strict=strict)["fake-fix"]  # strict: no PatchDriftError either
        assert entry.status == "deferred", entry
        gate.release.set()
        importer.join(10)
        assert _wait_for(lambda: m.report()["fake-fix"].status == "applied"), m.report()["fake-fix"]
        assert sys.modules[name].Base().method(1) == ("fake-fix", ("original", 1))
        m.revert_all()
        assert sys.modules[name].Base().method(1) == ("original", 1)
    finally:
        gate.release.set()
        importer.join(10)
        drop_module(name)


# ----- 4. patched callables pickle and copy as their originals do ------------------------------
@pytest.fixture
def methods(tmp_path, monkeypatch):
    module = import_module(tmp_path, monkeypatch, METHODS_SOURCE)
    patch = make_patch(module.__name__, attribute="Base.method")
    others = [make_patch(module.__name__, name="fake-" + attr.lower().replace(".", "-"), attribute=attr)
              for attr in ("Base.static", "Base.klass", "function")]
    m = manager(patch, *others)
    m.apply_all()
    yield module
    m.revert_all()


def _references(module):
    base = module.Base()
    return {"method via class": module.Base.method, "bound method": base.method,
            "staticmethod": module.Base.static, "classmethod": module.Base.klass,
            "function": module.function}


def test_patched_callables_pickle_by_reference(methods):
    for what, obj in _references(methods).items():
        loaded = pickle.loads(pickle.dumps(obj))  # resolved by name in this (patched) process
        assert type(loaded) is type(obj), what
    assert pickle.loads(pickle.dumps(methods.function)) is methods.function
    assert pickle.loads(pickle.dumps(methods.Base.static))(3) == ("fake-base-static", ("original", 3))
    assert pickle.loads(pickle.dumps(methods.Base.klass))(3) == ("fake-base-klass",
                                                                ("original", "Base", 3))
    assert pickle.loads(pickle.dumps(methods.Base().method))(2) == ("fake-fix", ("original", 2))


REBINDING_SOURCE = '''
from {defining} import function
'''


def test_a_function_patched_where_another_module_rebinds_it_pickles(tmp_path, monkeypatch):
    """`from .meta import f` in another module, patched there (vLLM's reload/layerwise.py does
    this): pickled as the original is, through its defining module."""
    defining = import_module(tmp_path, monkeypatch, METHODS_SOURCE)
    user = import_module(tmp_path, monkeypatch, REBINDING_SOURCE.format(defining=defining.__name__))
    m = manager(make_patch(user.__name__, attribute="function"))
    m.apply_all()
    try:
        assert pickle.loads(pickle.dumps(user.function)) is defining.function
        both = manager(make_patch(defining.__name__, name="defining", attribute="function"))
        both.apply_all()
        assert pickle.loads(pickle.dumps(user.function)) is defining.function
        both.revert_all()
    finally:
        m.revert_all()


def test_patched_callables_copy_and_deepcopy(methods):
    base = methods.Base()
    shallow = copy.copy(base.method)
    assert shallow(1) == ("fake-fix", ("original", 1)) and shallow.__self__ is base
    deep = copy.deepcopy({"f": base.method})["f"]
    assert deep(1) == ("fake-fix", ("original", 1)) and deep.__self__ is not base
    assert copy.copy(methods.function) is methods.function
    assert copy.deepcopy(methods.function) is methods.function
    assert copy.deepcopy(methods.Base.static)(4) == ("fake-base-static", ("original", 4))


def _call(function, *args):
    return function(*args)


def test_a_spawned_child_gets_the_function_by_reference(methods):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        # the child imports the module itself and is not patched: the original runs there
        assert pool.apply(_call, (methods.function, 1, 2)) == 3
        assert pool.apply(_call, (methods.Base.static, 5)) == ("original", 5)


# ----- 5. a third party replaces our wrapper with a plain function calling it -------------------
def test_replaced_by_a_plain_function_calling_ours_is_reported_failed(mod, monkeypatch, caplog):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__))

    def replace_ours():
        ours = vars(mod.Base)["method"]

        def foreign(self, *args, **kwargs):  # no __wrapped__: wrapt cannot see us under it
            return ours(self, *args, **kwargs)

        mod.Base.method = foreign

    m.apply_all()
    replace_ours()
    with caplog.at_level(logging.ERROR, logger="compat_patches"):
        m.revert_all()
    entry = m.report()["fake-fix"]
    assert entry.status == "failed", entry
    assert "replaced by" in entry.reason and "Base.method" in entry.reason
    assert any("replaced by" in record.getMessage() for record in caplog.records)
    assert m.active_names() == ()  # nothing of ours left to retry: the guard stays quiet

    mod.Base.method = original
    m.apply_all()
    replace_ours()
    monkeypatch.setenv("COMPAT_PATCHES_STRICT", "1")
    with pytest.raises(PatchFailedError, match="replaced by"):
        m.revert_all()


def test_replaced_by_the_original_is_a_clean_revert(mod):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__))
    m.apply_all()
    mod.Base.method = original  # someone else restored it
    m.revert_all()
    assert m.report()["fake-fix"].status == "pending"


# ----- 6. a strict-mode failure stays in the report ---------------------------------------------
def test_strict_failure_is_kept_in_the_report(mod):
    m = manager(make_patch(mod.__name__, params=("self", "renamed")))
    with pytest.raises(PatchDriftError):
        m.apply_all(strict=True)
    assert m.report()["fake-fix"].status == "drifted"
    with pytest.raises(PatchDriftError):
        with m.patched("fake-fix", strict=True):
            pass
    assert m.report()["fake-fix"].status == "drifted"


# ----- 7 and 10. input edges ---------------------------------------------------------------------
@pytest.mark.parametrize("value", ["2", "enable", "y", "maybe"])
def test_strict_rejects_undocumented_values(mod, monkeypatch, value):
    monkeypatch.setenv("COMPAT_PATCHES_STRICT", value)
    m = manager(make_patch(mod.__name__))
    with pytest.raises(InvalidSettingError, match=f"COMPAT_PATCHES_STRICT='{value}'"):
        m.apply_all()
    assert m.active_names() == ()


@pytest.mark.parametrize("value, strict", [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
                                           ("0", False), ("false", False), ("No", False),
                                           ("off", False), ("", False)])
def test_strict_accepts_documented_values(mod, monkeypatch, value, strict):
    monkeypatch.setenv("COMPAT_PATCHES_STRICT", value)
    m = manager(make_patch(mod.__name__, params=("self", "renamed")))
    if strict:
        with pytest.raises(PatchDriftError):
            m.apply_all()
    else:
        assert m.apply_all()["fake-fix"].status == "drifted"


@pytest.mark.parametrize("variable, value, message", [
    ("COMPAT_PATCHES_ONLY", ",", "names no patch"),
    ("COMPAT_PATCHES_ONLY", " , ", "names no patch"),
    ("COMPAT_PATCHES_DISABLE", "1,,typo", "mixes '1'"),
    ("COMPAT_PATCHES_DISABLE", "fake-fix,1,typo", "mixes '1'"),
    ("COMPAT_PATCHES_DISABLE", "fake-fix,all", "mixes 'all'"),
])
def test_env_lists_that_would_hide_a_mistake_raise(mod, monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSettingError, match=message):
        manager(make_patch(mod.__name__)).apply_all()


@pytest.mark.parametrize("value", ["0", "false", "no", "off", " "])
def test_disable_false_values_disable_nothing(mod, monkeypatch, value):
    monkeypatch.setenv("COMPAT_PATCHES_DISABLE", value)
    m = manager(make_patch(mod.__name__))
    assert m.apply_all()["fake-fix"].status == "applied"
    m.revert_all()


def test_disable_typo_after_a_name_is_reported(mod, monkeypatch):
    monkeypatch.setenv("COMPAT_PATCHES_DISABLE", "fake-fix,typo")
    with pytest.raises(UnknownPatchError, match="'typo'"):
        manager(make_patch(mod.__name__)).apply_all()


def test_only_given_one_string_means_one_name(mod):
    m = manager(make_patch(mod.__name__), make_patch(mod.__name__, name="other",
                                                     attribute="function"))
    report = m.apply_all(only="fake-fix")
    assert report["fake-fix"].status == "applied" and report["other"].status == "pending"
    m.revert_all()
    report = m.apply_all(exclude="fake-fix")
    assert report["fake-fix"].status == "pending" and report["other"].status == "applied"
    m.revert_all()
    with pytest.raises(UnknownPatchError, match="'fake'"):
        m.apply_all(only="fake")


@pytest.mark.parametrize("only", [5, [1], [None]])
def test_only_of_the_wrong_type_raises_type_error(mod, only):
    with pytest.raises(TypeError, match="only must"):
        manager(make_patch(mod.__name__)).apply_all(only=only)


LOCAL_SOURCE = '''
def _make():
    def method(self, x):
        return ("original", x)
    return method


class Base:
    method = _make()  # a local function: pickle refuses it by name
'''


def test_an_unpicklable_original_stays_unpicklable(tmp_path, monkeypatch):
    """huggingface_hub's strict __setattr__ is such a local function (transformers 5.4-5.5)."""
    module = import_module(tmp_path, monkeypatch, LOCAL_SOURCE)
    with pytest.raises((AttributeError, pickle.PicklingError)):
        pickle.dumps(module.Base.method)
    m = manager(make_patch(module.__name__))
    m.apply_all()
    try:
        with pytest.raises((AttributeError, pickle.PicklingError)):
            pickle.dumps(module.Base.method)
        assert pickle.loads(pickle.dumps(module.Base().method))(1) == ("fake-fix", ("original", 1))
    finally:
        m.revert_all()
