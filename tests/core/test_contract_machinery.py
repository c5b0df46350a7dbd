"""The contract generator itself, on a fake record: every ordering passes, and a broken patch fails."""

from pathlib import Path

import pytest

from ..contract import ORDERINGS, check_ordering, ordering_id, run_ordering

SOURCE = """
class Base:
    def method(self, x):
        return x

def function(x):
    return x
"""


@pytest.fixture(scope="module")
def fake_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    (root / "fake_contract_target.py").write_text(SOURCE)
    return [str(root), str(Path(__file__).parent)]


@pytest.mark.parametrize("ordering", ORDERINGS, ids=ordering_id)
def test_fake_record_honours_the_contract(fake_path, ordering):
    result = run_ordering("fake-contract", ordering, "fake_records:make_manager", fake_path)
    assert "skip" not in result
    check_ordering(result, ordering)


def test_the_contract_catches_a_double_wrap(fake_path):
    ordering = ("import", "apply", "revert")
    result = run_ordering("fake-contract", ordering, "fake_records:make_manager", fake_path)
    result["states"][1]["targets"]["fake_contract_target:function"]["ours"] = 2  # what a bug looks like
    with pytest.raises(AssertionError):
        check_ordering(result, ordering)


def test_a_target_imported_before_the_first_step_fails_the_ordering(fake_path):
    with pytest.raises(AssertionError, match=r"target modules imported before the first step: \['traceback'\]"):
        run_ordering("fake-preloaded", ("apply", "import", "revert"), "fake_records:make_preloaded_manager",
                     fake_path)


def test_the_child_sees_this_process_environment(fake_path, monkeypatch):
    monkeypatch.setenv("COMPAT_PATCHES_DISABLE", "fake-contract")
    result = run_ordering("fake-contract", ("import", "apply"), "fake_records:make_manager", fake_path)
    assert result == {"skip": "fake-contract is disabled here: listed in COMPAT_PATCHES_DISABLE"}


def _collect(*options):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                           "tests/test_contract.py", *options], cwd=root, capture_output=True, text=True)


def test_contract_libraries_option_deselects_other_libraries_contracts():
    """The matrix's --contract-libraries: the contract tests of other libraries' records go, the
    records-independent ones stay."""
    import compat_patches

    every = _collect()
    only_vllm = _collect("--contract-libraries=vllm")
    assert every.returncode == only_vllm.returncode == 0, (every.stdout[-2000:], only_vllm.stdout[-2000:])
    ids = [line for line in only_vllm.stdout.splitlines() if "::" in line]
    per_record = [line for line in ids if "[" in line and any(name in line for name in compat_patches.patch_names())]
    assert per_record and all("[vllm-" in line or "-vllm-" in line for line in per_record), per_record
    assert not any("ascend" in line or "transformers-" in line or "peft-" in line for line in per_record)
    assert "deselected" in only_vllm.stdout
    assert len(ids) < len([line for line in every.stdout.splitlines() if "::" in line])


@pytest.mark.parametrize("value", ["", "vllm,typo", "transformer"])
def test_contract_libraries_option_rejects_unknown_libraries(value):
    result = _collect(f"--contract-libraries={value}")
    assert result.returncode == 4, result.stdout[-2000:]
    assert "--contract-libraries" in result.stdout + result.stderr
