"""The version gate: ranges with rc, dev and local versions, absent and unparsable versions."""

import pytest

from compat_patches.core import Patch, Target
from compat_patches.core.versions import in_range

from .fakes import make_patch, manager, tagging_wrapper

RANGE = ">=5.0.0rc0,<5.4"


@pytest.mark.parametrize("version, inside", [
    ("5.0.0rc0", True), ("5.0.0rc3", True), ("5.0.0", True), ("5.3.0", True),
    ("5.3.0+cu128", True), ("5.3.0.dev0", True), ("5.1.0.post1", True),
    ("4.57.6", False), ("5.0.0.dev0", False), ("5.4.0", False), ("5.4.0rc1", False),
    ("5.4.0.dev0", False), ("5.4.0+cu128", False), ("5.24.0", False),
])
def test_range_membership_counts_prereleases_and_local_tags(version, inside):
    assert in_range(version, RANGE) is inside


def gated(version):
    patch = make_patch("some_module_not_imported", affected={"fakelib": RANGE})
    return manager(patch, versions={"fakelib": version}).report()["fake-fix"]


def test_rc_dev_and_local_versions_are_gated_in():
    for version in ("5.0.0rc3", "5.3.0.dev0", "5.3.0+cu128"):
        assert gated(version).status == "pending", version


def test_outside_the_range_is_not_needed_and_says_where_it_was_fixed():
    entry = gated("5.24.0")
    assert entry.status == "not-needed"
    assert "5.24.0 is outside the affected range" in entry.reason
    assert "fixed upstream in fakelib 2.0" in entry.reason


def test_absent_distribution_is_not_installed():
    patch = make_patch("x", affected={"fakelib": RANGE})
    entry = manager(patch, versions={}).report()["fake-fix"]
    assert (entry.status, entry.reason) == ("not-installed", "fakelib is not installed")
    assert entry.versions == {"fakelib": None}


def test_unparsable_version_is_reported_not_guessed():
    entry = gated("banana")
    assert entry.status == "drifted"
    assert "'banana' is not PEP 440" in entry.reason


def test_every_listed_distribution_must_be_in_range():
    patch = make_patch("x", affected={"fakelib": RANGE, "otherlib": "<1"})
    m = manager(patch, versions={"fakelib": "5.1.0", "otherlib": "1.2"})
    assert m.report()["fake-fix"].status == "not-needed"


def test_target_shape_is_chosen_by_the_primary_version():
    old = Target("mod_old:f", tagging_wrapper("old"), versions="<5.4")
    new = Target("mod_new:f", tagging_wrapper("new"), versions=">=5.4")
    patch = Patch(name="shaped", summary="s", upstream="u", affected={"fakelib": "<6"},
                  targets=(old, new))
    assert manager(patch, versions={"fakelib": "5.3.0"}).report()["shaped"].targets == ("mod_old:f",)
    assert manager(patch, versions={"fakelib": "5.5.0"}).report()["shaped"].targets == ("mod_new:f",)


def test_two_shapes_on_one_path_are_told_apart_by_version():
    old = Target("mod:f", tagging_wrapper("old"), versions="<5.4")
    new = Target("mod:f", tagging_wrapper("new"), versions=">=5.4")
    patch = Patch(name="shaped", summary="s", upstream="u", affected={"fakelib": "<6"},
                  targets=(old, new))
    assert manager(patch, versions={"fakelib": "5.3.0"}).targets_for("shaped") == (old,)
    assert manager(patch, versions={"fakelib": "5.5.0"}).targets_for("shaped") == (new,)
    assert manager(patch, versions={"fakelib": "6.0"}).targets_for("shaped") == ()


def test_no_target_for_an_in_range_version_is_drift():
    target = Target("m:f", tagging_wrapper("t"), versions="<5.1")
    patch = Patch(name="gap", summary="s", upstream="u", affected={"fakelib": "<6"}, targets=(target,))
    entry = manager(patch, versions={"fakelib": "5.2.0"}).report()["gap"]
    assert entry.status == "drifted" and "no target of this patch covers fakelib 5.2.0" in entry.reason


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="Bad Name"), "lowercase words"),
    (dict(affected={}), "at least one distribution"),
])
def test_bad_records_fail_clearly(kwargs, message):
    fields = dict(name="ok", summary="s", upstream="u", affected={"fakelib": "<2"}, targets=())
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Patch(**fields)


def test_bad_version_range_fails_clearly_when_checked():
    """Ranges are parsed by validate() (packaging is imported only where a library is installed):
    the registry test validates every record, and the gate validates before comparing."""
    patch = Patch(name="ok", summary="s", upstream="u", affected={"fakelib": "~~1"}, targets=(
        Target("m:f", tagging_wrapper("t")),))
    with pytest.raises(ValueError, match="invalid version range '~~1'"):
        patch.validate()
    with pytest.raises(ValueError, match="patch 'ok', distribution 'fakelib': invalid version range"):
        manager(patch).apply_all()


def test_bad_target_path_fails_clearly():
    with pytest.raises(ValueError, match="must look like 'package.module:Class.attribute'"):
        Target("no_colon.attr", tagging_wrapper("t"))
