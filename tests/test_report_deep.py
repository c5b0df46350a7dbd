"""``python -m compat_patches`` (read from the installed source, nothing imported) and
``python -m compat_patches --deep`` (imported and applied) find the same status for every record,
on whatever this version set installs. The matrix runs it in every quick set (noxfile COMMON).
"""

import json
import os
import subprocess
import sys

import compat_patches

# What importing the target libraries would load: the default report must load none of them.
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "vllm", "vllm_ascend", "verl", "torch_npu")

SOURCE_RUN = f"""
import io, json, sys, contextlib
from compat_patches.__main__ import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = main(["--json"])
loaded = sorted(m for m in {LIBRARIES!r} if m in sys.modules)
print(json.dumps({{"status": status, "report": json.loads(out.getvalue()), "loaded": loaded}}))
"""


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith("COMPAT_PATCHES_")}


def test_default_and_deep_find_the_same_status_for_every_record():
    source = subprocess.run([sys.executable, "-c", SOURCE_RUN], capture_output=True, text=True,
                            env=_env(), timeout=300)
    assert source.returncode == 0, source.stderr
    result = json.loads(source.stdout.splitlines()[-1])
    assert result["status"] == 0
    assert result["loaded"] == [], f"the default report imported {result['loaded']}"
    deep = subprocess.run([sys.executable, "-m", "compat_patches", "--deep", "--json"], capture_output=True,
                          text=True, env=_env(), timeout=600)
    assert deep.returncode == 0, deep.stderr
    by_source = {entry["name"]: entry for entry in result["report"]}
    by_import = {entry["name"]: entry for entry in json.loads(deep.stdout)}
    assert list(by_source) == list(by_import) == list(compat_patches.patch_names())
    differ = {name: (by_source[name]["status"], by_import[name]["status"], by_source[name]["reason"],
                     by_import[name]["reason"])
              for name in by_source if by_source[name]["status"] != by_import[name]["status"]}
    assert not differ, differ
    for name, entry in by_source.items():
        assert entry["finding"] == by_import[name]["finding"]
        assert entry["mode"] == "source" and by_import[name]["mode"] == "deep"
        assert entry["check"] in ("versions", "source", "source-partly")
        assert by_import[name]["check"] in ("versions", "import")
        assert (entry["check"] == "source-partly") == bool(entry["unchecked"])


def _newer_than_verified(tmp_path):
    """A directory whose dist-info says transformers is one minor release newer than the newest
    `verified_through` of the records (the installed source stays the real one), or None."""
    from compat_patches.core.versions import installed_version, parse_version

    verified = [parse_version(p.verified_through["transformers"]) for p in map(compat_patches.get_patch,
                compat_patches.patch_names()) if "transformers" in p.verified_through]
    if not verified or installed_version("transformers") is None or installed_version("torch") is None:
        return None
    newest = max(verified)
    if parse_version(installed_version("transformers")) < newest:
        return None  # the source would be older than what the records were verified on
    fake = f"{newest.major}.{newest.minor + 1}.0"
    info = tmp_path / f"transformers-{fake}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: transformers\nVersion: {fake}\n")
    return tmp_path


def test_both_modes_refuse_unverified_releases_alike(tmp_path):
    import pytest

    directory = _newer_than_verified(tmp_path)
    if directory is None:
        pytest.skip("needs transformers (at least the newest release a record was verified through) and torch")
    env = dict(_env(), COMPAT_PATCHES_REQUIRE_VERIFIED="1", PYTHONPATH=str(directory))
    runs = [subprocess.run([sys.executable, "-m", "compat_patches", "--json", *mode], capture_output=True,
                           text=True, env=env, timeout=600) for mode in ([], ["--deep"])]
    reports = []
    for proc in runs:
        assert proc.returncode == 1, proc.stderr
        assert "COMPAT_PATCHES_REQUIRE_VERIFIED is on" in proc.stderr
        reports.append({e["name"]: (e["status"], e["finding"]) for e in json.loads(proc.stdout)})
    assert reports[0] == reports[1]
    refused = [name for name, (status, _) in reports[0].items() if status == "disabled"]
    assert refused and all("transformers" in compat_patches.get_patch(n).verified_through for n in refused)
