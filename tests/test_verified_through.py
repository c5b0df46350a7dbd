"""Each open-ended record declares the newest release of its library that the matrix verifies it on."""

import re
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

import compat_patches

ROOT = Path(__file__).parent.parent


def _newest_in_matrix():
    """{distribution: newest release the version matrix (noxfile.py, the vllm-ascend source list) runs}."""
    noxfile = (ROOT / "noxfile.py").read_text()
    found = {}
    for dist, version in re.findall(r'"(transformers|peft)==([0-9][^"]*)"', noxfile):
        found.setdefault(dist, []).append(version)
    vllm = re.search(r"VLLM_RELEASES = \((.*?)\)", noxfile, re.S).group(1)
    found["vllm"] = re.findall(r'"([0-9][^"]*)"', vllm)
    ascend = (ROOT / "tests" / "patches" / "vllm_ascend" / "test_moe_layout.py").read_text()
    found["vllm-ascend"] = re.findall(r'^    "([0-9][^"]*)": \("(?:sdist|wheel)"', ascend, re.M)
    return {dist: str(max(map(Version, versions))) for dist, versions in found.items()}


def _open(spec):
    return not any(s.operator in ("<", "<=", "==", "~=", "===") for s in SpecifierSet(spec))


def test_open_ended_records_declare_the_newest_release_verified():
    newest = _newest_in_matrix()
    checked = []
    for name in compat_patches.patch_names():
        record = compat_patches.get_patch(name)
        if not _open(record.affected[record.primary]):
            continue
        assert record.primary in record.verified_through, f"{name}: open range, no verified_through"
        for dist, version in record.verified_through.items():
            if dist == record.primary:
                assert version == newest[dist], (name, dist, version, newest[dist])
        checked.append(name)
    assert len(checked) >= 6, checked
