"""The comparison logic of tests/upstream/transformers/modeling_common/run.py (no transformers needed):
junit parsing (subtests fold into their test, the worst outcome wins) and the patched-vs-unpatched
verdict (a test passing unpatched and not passing patched is a finding; unpatched failures are
excluded with their reason)."""

import importlib.util
from pathlib import Path

import pytest

RUN = Path(__file__).parent / "upstream" / "transformers" / "modeling_common" / "run.py"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("_modeling_common_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.models.bamba.test_modeling_bamba.BambaModelTest" name="test_a"/>
<testcase classname="tests.models.bamba.test_modeling_bamba.BambaModelTest" name="test_b">
  <failure message="AssertionError: 0 not greater than 1">E   AssertionError: 0 not greater than 1
tests/test_modeling_common.py:1809: AssertionError</failure></testcase>
<testcase classname="tests.models.bamba.test_modeling_bamba.BambaModelTest" name="test_b"/>
<testcase classname="tests.models.bamba.test_modeling_bamba.BambaModelTest" name="test_c">
  <skipped message="test requires accelerator"/></testcase>
<testcase classname="tests.models.bamba.test_modeling_bamba.BambaModelTest" name="test_d">
  <failure message="Failed: Timeout &gt;300.0s">+++ Timeout +++</failure></testcase>
<testcase classname="tests.models.bamba.test_modeling_bamba.BambaModelTest" name="test_e">
  <error message="ImportError: no">E ImportError</error></testcase>
</testsuite></testsuites>"""


def test_parse_junit(run, tmp_path):
    path = tmp_path / "r.xml"
    path.write_text(JUNIT)
    results = run.parse_junit(path)
    assert {test: outcome for test, (outcome, _, _) in results.items()} == {
        "BambaModelTest::test_a": "passed", "BambaModelTest::test_b": "failed",
        "BambaModelTest::test_c": "skipped", "BambaModelTest::test_d": "timeout",
        "BambaModelTest::test_e": "error"}
    assert "0 not greater than 1" in run.key_lines(results["BambaModelTest::test_b"][2])


def test_compare(run):
    unpatched = {"t::ok": ("passed", "", ""), "t::regressed": ("passed", "", ""),
                 "t::broken": ("failed", "AssertionError: upstream\nmore", ""), "t::skip": ("skipped", "", ""),
                 "t::skip_then_fail": ("skipped", "", ""), "t::gone": ("passed", "", "")}
    patched = {"t::ok": ("passed", "", ""), "t::regressed": ("failed", "AssertionError", "E x"),
               "t::broken": ("passed", "", ""), "t::skip": ("skipped", "", ""),
               "t::skip_then_fail": ("error", "E", "")}
    findings, excluded, fixed = run.compare(unpatched, patched)
    assert [test for test, _ in findings] == ["t::gone", "t::regressed", "t::skip_then_fail"]
    assert excluded == {"t::broken": ("failed", "AssertionError: upstream")}
    assert fixed == ["t::broken"]


# ----- the harness itself, one test per family: runs where its dependencies are installed ---------

def _have(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


FAMILIES = ("qwen3_next", "qwen3_5", "qwen3_5_vl", "qwen3_5_moe", "qwen3_5_moe_vl", "olmo_hybrid", "lara_mini",
            "nemotron_h", "bamba", "granitemoehybrid", "falcon_h1")
HARNESS_DEPS = ("transformers", "torch", "accelerate", "parameterized", "pytest_timeout")
# The quick matrix runs one family per record (GatedDeltaNet; Mamba2, where checkpointing once broke);
# the full-only modeling-common set runs them all (about 30 s each on 2 cores).
QUICK_FAMILIES = ("qwen3_5", "granitemoehybrid")


@pytest.fixture(scope="module")
def tree(run, tmp_path_factory):
    work = tmp_path_factory.mktemp("modeling-common")
    return work, run.assemble(work / "tree", run._version())


@pytest.mark.skipif(not _have(*HARNESS_DEPS), reason=f"needs {', '.join(HARNESS_DEPS)} (the modeling-common set)")
@pytest.mark.parametrize("family", [pytest.param(family, marks=() if family in QUICK_FAMILIES else pytest.mark.slow)
                                    for family in FAMILIES])
def test_records_keep_transformers_common_tests(run, tree, family):
    """transformers' ModelTesterMixin on `family`, unpatched then with both packed-samples records:
    nothing that passes unpatched may fail patched. COMPAT_PATCHES_MODELING_COMMON=full runs the whole
    mixin (default: run.py's --quick selection)."""
    import argparse
    import os

    assert tuple(run.FAMILIES) == FAMILIES
    work, files = tree
    full = os.environ.get("COMPAT_PATCHES_MODELING_COMMON", "quick") == "full"
    args = argparse.Namespace(timeout=300, threads=1, k=None if full else run.QUICK)
    results = {}
    for mode in ("unpatched", "patched"):
        results[mode], _, info, _, output = run.run_file(work / "tree", files[family], mode, work, args)
        assert results[mode], f"{family} [{mode}]: no result\n{output[-3000:]}"
    if all(outcome == "skipped" for outcome, _, _ in results["unpatched"].values()):
        pytest.skip(f"transformers {run._version()} has no {family}")
    module = run.MODULE.get(family, family)
    assert info.get("wrapped", {}).get(f"modeling_{module}"), \
        f"[patched]: no target of the records is wrapped in modeling_{module}: {info.get('records')}"
    findings, _, _ = run.compare(results["unpatched"], results["patched"])
    assert not findings, "\n".join(f"{test}: passes unpatched, {r[0]} patched\n{run.key_lines(r[2])}"
                                   for test, r in findings)
