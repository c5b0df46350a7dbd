"""installed_version reads .dist-info names without importlib.metadata, with the same answers."""

import sys
from importlib import metadata

import pytest

from compat_patches.core import versions
from compat_patches.core.versions import installed_version


def test_same_answer_as_importlib_metadata_for_everything_installed_here():
    names = {dist.metadata["Name"] for dist in metadata.distributions()}
    assert names, "no distribution found at all"
    for name in sorted(names):
        assert installed_version(name) == metadata.version(name), name
    assert installed_version("surely-not-installed-dist") is None


@pytest.mark.parametrize("spelling", ["Fake-Dist", "fake_dist", "fake.dist", "FAKE--DIST"])
def test_names_are_matched_normalised(tmp_path, monkeypatch, spelling):
    (tmp_path / "fake_dist-1.2.0rc1.dist-info").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert installed_version(spelling) == "1.2.0rc1"


def _dist_info(path, name, version):
    info = path / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return info


def test_first_entry_on_sys_path_wins(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    _dist_info(first, "fake_dist", "2.0")
    _dist_info(second, "fake_dist", "1.0")
    monkeypatch.setattr(sys, "path", [str(first), str(second), *sys.path])
    assert installed_version("fake-dist") == metadata.version("fake-dist") == "2.0"


@pytest.mark.parametrize("layout", ["two versions in one directory", "egg-info", "no version in name"])
def test_what_names_cannot_tell_goes_to_importlib_metadata(tmp_path, monkeypatch, layout):
    if layout == "two versions in one directory":
        _dist_info(tmp_path, "fake_dist", "1.0")
        _dist_info(tmp_path, "fake_dist", "2.0")
    elif layout == "egg-info":
        egg = tmp_path / "fake_dist.egg-info"
        egg.mkdir()
        (egg / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: fake-dist\nVersion: 3.1\n")
    else:
        info = tmp_path / "fake_dist.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-dist\nVersion: 4.2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = []
    real = versions._from_metadata
    monkeypatch.setattr(versions, "_from_metadata", lambda name: calls.append(name) or real(name))
    assert installed_version("fake-dist") == metadata.version("fake-dist")
    assert calls == ["fake-dist"]


def test_a_new_install_is_seen_without_restarting(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    assert installed_version("fake-dist") is None
    _dist_info(tmp_path, "fake_dist", "1.0")
    assert installed_version("fake-dist") == "1.0"
