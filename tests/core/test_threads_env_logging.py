"""Concurrency, environment variables and log lines."""

import logging
import threading

import pytest
from compat_patches.core import UnknownPatchError

from .fakes import import_module, make_patch, manager, our_wrappers


@pytest.fixture
def mod(tmp_path, monkeypatch):
    return import_module(tmp_path, monkeypatch)


def test_sixteen_threads_applying_and_reverting(mod):
    """apply_all/revert_all racing with scopes: never wrapped twice, exact at the end.

    (revert_all from one thread may end another thread's scope early: that is what it means.)
    """
    original = vars(mod.Base)["method"]
    patch = make_patch(mod.__name__)
    m = manager(patch)
    start = threading.Barrier(16)
    errors = []

    def worker(i):
        try:
            start.wait()
            for _ in range(50):
                if i % 2:
                    with m.patched("fake-fix"):
                        assert our_wrappers(vars(mod.Base)["method"], patch.targets[0].wrapper) <= 1
                else:
                    m.apply_all()
                    assert our_wrappers(vars(mod.Base)["method"], patch.targets[0].wrapper) <= 1
                    m.revert_all()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    m.revert_all()
    assert vars(mod.Base)["method"] is original


def test_sixteen_threads_of_scopes_only_never_lose_the_patch(mod):
    original = vars(mod.Base)["method"]
    patch = make_patch(mod.__name__)
    m = manager(patch)
    start = threading.Barrier(16)
    errors = []

    def worker():
        try:
            start.wait()
            for _ in range(100):
                with m.patched("fake-fix"):
                    assert mod.Base().method(1) == ("fake-fix", ("original", 1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert vars(mod.Base)["method"] is original


def test_disable_all(mod, monkeypatch):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__))
    for value in ("1", "all", "true"):
        monkeypatch.setenv("COMPAT_PATCHES_DISABLE", value)
        entry = m.apply_all()["fake-fix"]
        assert entry.status == "disabled" and "COMPAT_PATCHES_DISABLE" in entry.reason
        with m.patched("fake-fix") as report:
            assert report["fake-fix"].status == "disabled"
        assert vars(mod.Base)["method"] is original


def test_disable_by_name_and_only(mod, monkeypatch):
    a = make_patch(mod.__name__, name="fix-a")
    b = make_patch(mod.__name__, name="fix-b", attribute="function")
    m = manager(a, b)
    monkeypatch.setenv("COMPAT_PATCHES_DISABLE", "fix-a")
    report = m.apply_all()
    assert (report["fix-a"].status, report["fix-b"].status) == ("disabled", "applied")
    m.revert_all()
    monkeypatch.delenv("COMPAT_PATCHES_DISABLE")
    monkeypatch.setenv("COMPAT_PATCHES_ONLY", " fix-a , ")
    report = m.apply_all()
    assert (report["fix-a"].status, report["fix-b"].status) == ("applied", "disabled")
    assert "not listed in COMPAT_PATCHES_ONLY" in report["fix-b"].reason
    assert m.report()["fix-b"].status == "disabled"
    m.revert_all()


@pytest.mark.parametrize("variable", ["COMPAT_PATCHES_DISABLE", "COMPAT_PATCHES_ONLY"])
def test_unknown_name_in_environment_raises(mod, monkeypatch, variable):
    monkeypatch.setenv(variable, "fake-fix,typo-fix")
    m = manager(make_patch(mod.__name__))
    with pytest.raises(UnknownPatchError, match=rf"'typo-fix' in {variable}; known names: fake-fix"):
        m.apply_all()
    assert m.active_names() == ()


def test_one_log_line_per_decision(mod, caplog):
    m = manager(make_patch(mod.__name__, name="fix-a"),
                make_patch(mod.__name__, name="fix-b", affected={"fakelib": ">=3"}))
    with caplog.at_level(logging.INFO, logger="compat_patches"):
        m.apply_all()
        m.apply_all()  # nothing changed: nothing more to say
    lines = [r.getMessage() for r in caplog.records if r.name == "compat_patches"]
    assert lines == [
        "fix-a: applied (fakelib 1.5.0 has the bug; fixed upstream in fakelib 2.0: upgrade and drop it)",
        "fix-b: not-needed (fakelib 1.5.0 is outside the affected range >=3 (fixed upstream in fakelib 2.0))",
    ]
    m.revert_all()
