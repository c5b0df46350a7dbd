"""A patch whose targets span several modules is applied where they are imported, waiting for the rest."""

import importlib

import pytest

from compat_patches.core import Patch, Target

from .fakes import drop_module, manager, write_module


def _wrapper(wrapped, instance, args, kwargs):
    return ("fake-fix", wrapped(*args, **kwargs))


@pytest.fixture
def two(tmp_path, monkeypatch):
    names = [write_module(tmp_path, monkeypatch, name=f"fake_partial_{i}") for i in range(2)]
    yield names
    for name in names:
        drop_module(name)


def test_applied_in_the_imported_module_waiting_for_the_other(two):
    first, second = two
    patch = Patch(name="fake-fix", summary="", upstream="", affected={"fakelib": ">=1.0rc0,<2"},
                  targets=[Target(f"{n}:Base.method", wrapper=_wrapper) for n in two])
    a = importlib.import_module(first)
    m = manager(patch)
    entry = m.apply_all()["fake-fix"]
    assert entry.status == "applied" and entry.active
    assert f"applied in {first}" in entry.reason and f"waiting for import of {second}" in entry.reason
    assert a.Base().method(1) == ("fake-fix", ("original", 1))
    b = importlib.import_module(second)
    assert b.Base().method(1) == ("fake-fix", ("original", 1))
    assert "waiting" not in m.report()["fake-fix"].reason
    m.revert_all()
    assert a.Base().method(1) == ("original", 1) and b.Base().method(1) == ("original", 1)
