"""Drift (renamed target, changed signature, fingerprint), strict mode, failure isolation."""

import pytest

from compat_patches.core import PatchDriftError, PatchFailedError

from .fakes import import_module, make_patch, manager


@pytest.fixture
def mod(tmp_path, monkeypatch):
    return import_module(tmp_path, monkeypatch)


def test_renamed_target_is_drift_naming_target_and_version(mod):
    m = manager(make_patch(mod.__name__, attribute="Base.renamed_method"))
    entry = m.apply_all()["fake-fix"]
    assert entry.status == "drifted"
    assert f"{mod.__name__}:Base.renamed_method is missing" in entry.reason
    assert entry.versions == {"fakelib": "1.5.0"}
    assert m.active_names() == ()
    assert m.report()["fake-fix"].status == "drifted"  # the finding stays visible


def test_changed_signature_is_drift_and_touches_nothing(mod):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__, params=("self", "x", "scale", "new_arg")))
    entry = m.apply_all()["fake-fix"]
    assert entry.status == "drifted"
    assert "expected parameters ('self', 'x', 'scale', 'new_arg'), found ('self', 'x', 'scale')" \
        in entry.reason
    assert vars(mod.Base)["method"] is original


def test_matching_signature_applies(mod):
    m = manager(make_patch(mod.__name__, params=("self", "x", "scale")))
    with m.patched() as report:
        assert report["fake-fix"].status == "applied"


def test_fingerprint_check_reports_drift(mod):
    m = manager(make_patch(mod.__name__, check=lambda fn: "source lacks 'x * scale'"))
    assert "source lacks 'x * scale'" in m.apply_all()["fake-fix"].reason


def test_a_backported_fix_is_not_needed_not_drift(mod):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__, fixed=lambda fn: "calls unfuse_moe_params"))
    entry = m.apply_all(strict=True)["fake-fix"]  # strict: not-needed is no error
    assert entry.status == "not-needed"
    assert "already carries the upstream fix: calls unfuse_moe_params" in entry.reason
    assert vars(mod.Base)["method"] is original and m.active_names() == ()
    assert m.report()["fake-fix"].status == "not-needed"  # the finding stays visible


def test_fingerprint_that_raises_is_drift_not_a_crash(mod):
    m = manager(make_patch(mod.__name__, check=lambda fn: 1 / 0))
    entry = m.apply_all()["fake-fix"]
    assert entry.status == "drifted" and "ZeroDivisionError" in entry.reason


def test_strict_drift_raises_and_leaves_nothing_applied(mod):
    good = make_patch(mod.__name__, name="good", attribute="function")
    bad = make_patch(mod.__name__, name="bad", attribute="Base.gone")
    m = manager(good, bad)
    original = mod.function
    with pytest.raises(PatchDriftError, match="bad: target .*Base.gone is missing"):
        m.apply_all(strict=True)
    assert mod.function is original and m.active_names() == ()
    with pytest.raises(PatchDriftError):
        with m.patched(strict=True):
            pass
    assert m.active_names() == ()


def test_strict_from_environment(mod, monkeypatch):
    monkeypatch.setenv("COMPAT_PATCHES_STRICT", "1")
    m = manager(make_patch(mod.__name__, attribute="Base.gone"))
    with pytest.raises(PatchDriftError):
        m.apply_all()


def test_a_failing_install_is_isolated(mod):
    mod.Frozen = int  # setattr on a builtin type raises: the wrapper cannot be installed
    failing = make_patch(mod.__name__, name="failing", attribute="Frozen.bit_length")
    good = make_patch(mod.__name__, name="good")
    m = manager(failing, good)
    report = m.apply_all()
    assert report["failing"].status == "failed"
    assert "wrapping" in report["failing"].reason and "Frozen.bit_length" in report["failing"].reason
    assert report["good"].status == "applied"
    assert mod.Base().method(1)[0] == "good"
    with pytest.raises(PatchFailedError, match="failing"):
        m.apply_all(strict=True, only=["failing"])
    m.revert_all()


def test_drifted_multi_target_patch_is_all_or_nothing(mod):
    from compat_patches.core import Patch, Target
    from .fakes import tagging_wrapper

    original = mod.function
    patch = Patch(name="two", summary="s", upstream="u", affected={"fakelib": "<2"}, targets=(
        Target(f"{mod.__name__}:function", tagging_wrapper("t")),
        Target(f"{mod.__name__}:Base.gone", tagging_wrapper("t")),
    ))
    m = manager(patch)
    assert m.apply_all()["two"].status == "drifted"
    assert mod.function is original
