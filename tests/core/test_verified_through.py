"""verified_through: a newer installed release still gets an open-ended patch, and the report says so."""

import json

import pytest

from compat_patches.core import InvalidSettingError, Patch, PatchUnverifiedError, Target

from .fakes import import_module, manager, tagging_wrapper


def _patch(module, verified="1.5.0"):
    return Patch(name="fake-fix", summary="", upstream="", affected={"fakelib": ">=1.0rc0"},
                 targets=[Target(f"{module.__name__}:Base.method", tagging_wrapper("fake-fix"))],
                 verified_through={"fakelib": verified})


@pytest.mark.parametrize("installed, expect", [
    ("1.5.0", False), ("1.4.9", False), ("1.5.0+cu128", False), ("1.5.1", True), ("1.6.0.dev0", True),
    ("2.0.0rc1", True),
])
def test_unverified_only_above_the_verified_release(tmp_path, monkeypatch, installed, expect):
    module = import_module(tmp_path, monkeypatch)
    m = manager(_patch(module), versions={"fakelib": installed})
    entry = m.apply_all()["fake-fix"]
    try:
        assert entry.status == "applied"
        assert module.Base().method(1) == ("fake-fix", ("original", 1))  # applied either way
        assert entry.unverified == ({"fakelib": "1.5.0"} if expect else {})
        assert (f"unverified on fakelib {installed}: verified through 1.5.0" in entry.reason) is expect
        assert json.loads(m.report().to_json())[0]["unverified"] == entry.unverified
    finally:
        m.revert_all()


def test_strict_does_not_fail_on_it_the_switch_does(tmp_path, monkeypatch):
    module = import_module(tmp_path, monkeypatch)
    m = manager(_patch(module), versions={"fakelib": "1.6.0"})
    monkeypatch.setenv("COMPAT_PATCHES_STRICT", "1")
    assert m.apply_all()["fake-fix"].status == "applied"
    m.revert_all()
    monkeypatch.setenv("COMPAT_PATCHES_REQUIRE_VERIFIED", "1")
    with pytest.raises(PatchUnverifiedError, match="fakelib 1.6.0 is newer than the 1.5.0"):
        m.apply_all()
    assert module.Base().method(1) == ("original", 1)  # nothing installed
    assert m.report()["fake-fix"].status == "disabled"
    m.revert_all()
    monkeypatch.setenv("COMPAT_PATCHES_REQUIRE_VERIFIED", "maybe")
    with pytest.raises(InvalidSettingError, match="COMPAT_PATCHES_REQUIRE_VERIFIED='maybe'"):
        m.check_environment()


def test_a_bad_declaration_is_refused():
    with pytest.raises(TypeError, match="verified_through must map distributions of `affected`"):
        Patch(name="fake-fix", summary="", upstream="", affected={"fakelib": ">=1"}, targets=(),
              verified_through={"otherlib": "1.0"})
    with pytest.raises(ValueError, match="is not PEP 440"):
        Patch(name="fake-fix", summary="", upstream="", affected={"fakelib": ">=1"}, targets=(),
              verified_through={"fakelib": "one"}).validate()
