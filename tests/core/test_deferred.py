"""Patches on modules imported after apply: post-import hooks, disarmed by revert."""

import importlib
import sys

import pytest

from .fakes import drop_module, make_patch, manager, write_module


@pytest.fixture
def name(tmp_path, monkeypatch):
    module_name = write_module(tmp_path, monkeypatch)
    yield module_name
    drop_module(module_name)


def test_apply_before_import_defers_then_applies_on_import(name):
    m = manager(make_patch(name))
    entry = m.apply_all()["fake-fix"]
    assert entry.status == "deferred"
    assert f"waiting for import of {name}" in entry.reason
    assert name not in sys.modules  # we never import the target ourselves
    mod = importlib.import_module(name)
    assert mod.Base().method(1) == ("fake-fix", ("original", 1))
    assert m.report()["fake-fix"].status == "applied"
    m.revert_all()
    assert mod.Base().method(1) == ("original", 1)


def test_revert_before_import_cancels_the_hook(name):
    m = manager(make_patch(name))
    m.apply_all()
    m.revert_all()
    mod = importlib.import_module(name)
    assert mod.Base().method(1) == ("original", 1)
    assert m.report()["fake-fix"].status == "pending"


def test_reapply_after_a_cancelled_hook_applies_once(name):
    patch = make_patch(name)
    m = manager(patch)
    m.apply_all()
    m.revert_all()
    m.apply_all()
    mod = importlib.import_module(name)
    from .fakes import our_wrappers
    assert our_wrappers(vars(mod.Base)["method"], patch.targets[0].wrapper) == 1
    m.revert_all()


def test_scope_exit_before_import_cancels(name):
    m = manager(make_patch(name))
    with m.patched() as report:
        assert report["fake-fix"].status == "deferred"
    mod = importlib.import_module(name)
    assert mod.Base().method(1) == ("original", 1)


def test_drift_found_at_import_time_is_reported_not_raised(name, caplog):
    m = manager(make_patch(name, attribute="Base.gone"))
    m.apply_all()
    importlib.import_module(name)  # the user's import must not break
    entry = m.report()["fake-fix"]
    assert entry.status == "drifted" and "Base.gone is missing" in entry.reason
    assert any("drifted" in r.getMessage() for r in caplog.records)
    m.revert_all()


def test_module_reimported_after_revert_is_patched_again(name):
    m = manager(make_patch(name))
    m.apply_all()
    importlib.import_module(name)
    m.revert_all()
    drop_module(name)
    m.apply_all()
    mod = importlib.import_module(name)
    assert mod.Base().method(1)[0] == "fake-fix"
    m.revert_all()
