"""compat-patches-run: the command, its multiprocessing (spawn) child and its subprocess child are
all patched at start-up; COMPAT_PATCHES_DISABLE turns that off everywhere; the user's own
sitecustomize still runs; bad names fail before the command starts.

Child processes use fake records (tests/process_fakes.py): the user's sitecustomize installs them,
so "applied" is observable without any ML library.
"""

import json
import os
import sys

import pytest

import compat_patches
import compat_patches.activation
from compat_patches import launcher
from .process_fakes import (PATCHED, UNPATCHED, clean_env, last_json, launcher_command, run,
                           write_fake_site)

TRAIN = '''
import json
import multiprocessing
import subprocess
import sys

import probe


def child(queue):
    queue.put(probe.state())


if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    spawned = queue.get(timeout=120)
    process.join(120)
    out = subprocess.run([sys.executable, "-c", "import json, probe; print(json.dumps(probe.state()))"],
                         stdout=subprocess.PIPE, text=True, check=True)  # stderr: the test's
    print(json.dumps({"main": probe.state(), "spawn": spawned,
                      "subprocess": json.loads(out.stdout.strip().splitlines()[-1])}))
'''


@pytest.fixture
def site(tmp_path):
    return write_fake_site(tmp_path / "user", extra={"train.py": TRAIN})


def _train(site, *launcher_args, **env):
    command = launcher_command() + list(launcher_args) + [sys.executable, "train.py"]
    result = run(command, clean_env(PYTHONPATH=site, **env), cwd=site)
    assert result.returncode == 0, result.stderr
    return last_json(result.stdout), result


def test_launcher_patches_the_process_and_its_spawn_and_subprocess_children(site):
    states, result = _train(site)
    pids = {state["pid"] for state in states.values()}
    assert len(pids) == 3, "three distinct processes"
    for where, state in states.items():
        assert state["via"] == "sitecustomize", where
        assert state["activations"] == 1, where          # once per process, never twice
        assert state["result"] == PATCHED, where         # deferred at start-up, applied on import
        assert state["statuses"] == {"fake-fix": "applied", "fake-drifted": "drifted",
                                     "fake-not-needed": "not-needed"}, where
        assert state["user_sitecustomize"], f"{where}: the user's sitecustomize did not run"
        assert state["heavy"] == [], where
    # the drifted fake patch is visible in each process's log (stderr), and nothing crashed
    assert result.stderr.count("fake-drifted: drifted") == 3


def test_without_launcher_nothing_is_patched(site):
    """The control: same script, same user sitecustomize, no launcher."""
    result = run([sys.executable, "train.py"], clean_env(PYTHONPATH=site), cwd=site)
    assert result.returncode == 0, result.stderr
    for where, state in last_json(result.stdout).items():
        assert state["via"] is None and state["result"] == UNPATCHED, where
        assert state["statuses"]["fake-fix"] == "pending", where
        assert state["user_sitecustomize"], where


@pytest.mark.parametrize("how", ["env", "flag"])
def test_disable_turns_it_off_in_every_process(site, how):
    if how == "env":
        states, _ = _train(site, COMPAT_PATCHES_DISABLE="1")
    else:
        states, _ = _train(site, "--disable", "all")
    for where, state in states.items():
        assert state["via"] == "sitecustomize", where    # it ran, and said why it did nothing
        assert state["result"] == UNPATCHED, where
        assert set(state["statuses"].values()) == {"disabled"}, where
        assert state["user_sitecustomize"], where


def test_only_flag_reaches_every_process(site):
    states, _ = _train(site, "--only", "fake-drifted")
    for where, state in states.items():
        assert state["result"] == UNPATCHED, where
        assert state["statuses"]["fake-fix"] == "disabled", where
        assert state["statuses"]["fake-drifted"] == "drifted", where


def test_verbose_prints_one_activation_line_per_process(site):
    """(Python helpers count too: spawn's resource tracker is a patched process of its own.)"""
    states, result = _train(site, "-v")
    lines = [line for line in result.stderr.splitlines() if " in pid " in line and " via " in line]
    for state in states.values():
        mine = [line for line in lines if f"in pid {state['pid']} via " in line]
        assert len(mine) == 1, result.stderr
        assert "via sitecustomize: active: fake-fix (deferred), fake-drifted (deferred)" in mine[0]


@pytest.mark.parametrize("args, env, message", [
    (["--only", "fake-fix,typo-fix"], {}, "'typo-fix' in --only"),
    (["--disable", "nope"], {}, "'nope' in --disable"),
    ([], {"COMPAT_PATCHES_ONLY": "typo-fix"}, "'typo-fix' in COMPAT_PATCHES_ONLY"),
])
def test_unknown_name_exits_2_before_the_command_runs(site, args, env, message):
    marker = site / "ran"
    command = launcher_command() + args + [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    result = run(command, clean_env(PYTHONPATH=site, **env), cwd=site)
    assert result.returncode == 2
    assert message in result.stderr
    assert "known names: fake-fix, fake-drifted, fake-not-needed" in result.stderr
    assert not marker.exists()


def test_strict_mode_stops_a_process_whose_patch_drifted_at_start(site):
    """Strict: a drift found at start-up exits with status 1 before user code runs."""
    (site / "sitecustomize.py").write_text(
        (site / "sitecustomize.py").read_text() + "\nimport fake_target\n")  # imported before us
    result = run(launcher_command() + ["--strict", sys.executable, "-c", "print('user code')"],
                 clean_env(PYTHONPATH=site), cwd=site)
    assert result.returncode == 1
    assert "user code" not in result.stdout
    assert "strict mode" in result.stderr and "fake-drifted" in result.stderr


def test_user_sitecustomize_error_is_reported_and_start_up_goes_on(site):
    (site / "sitecustomize.py").write_text(
        (site / "sitecustomize.py").read_text() + "\nraise RuntimeError('user bug')\n")
    result = run(launcher_command() + [sys.executable, "-c",
                                       "import compat_patches.activation as a; print(a.last().via)"],
                 clean_env(PYTHONPATH=site), cwd=site)
    assert result.returncode == 0, result.stderr
    assert "Error in sitecustomize" in result.stderr and "RuntimeError: user bug" in result.stderr
    assert result.stdout.strip() == "sitecustomize"


def test_no_command_and_missing_command():
    result = run(launcher_command(), clean_env(), cwd=None)
    assert result.returncode == 2 and "no command given" in result.stderr
    result = run(launcher_command() + ["no-such-command-xyz"], clean_env(), cwd=None)
    assert result.returncode == 127 and "command not found: no-such-command-xyz" in result.stderr


def test_print_pythonpath_and_existing_pythonpath_kept(tmp_path):
    result = run(launcher_command() + ["--print-pythonpath"],
                 clean_env(PYTHONPATH=os.pathsep.join(["/a", launcher.bootstrap_dir(), "/b"])),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().split(os.pathsep) == [launcher.bootstrap_dir(), "/a", "/b"]


def test_build_env_maps_flags_to_variables():
    env = launcher.build_env({"PYTHONPATH": ""}, only=["transformers-rope-ignore-keys"],
                             strict=True, log_level="INFO")
    assert env["COMPAT_PATCHES_ONLY"] == "transformers-rope-ignore-keys"
    assert env["COMPAT_PATCHES_STRICT"] == "1" and env["COMPAT_PATCHES_LOG_LEVEL"] == "INFO"
    assert env["PYTHONPATH"] == launcher.bootstrap_dir()
    with pytest.raises(compat_patches.UnknownPatchError, match="known names: transformers-rope"):
        launcher.build_env({}, disable="transformers-rope-ignore-keyz")


def test_bootstrap_alone_imports_no_ml_library(tmp_path):
    """The real registry, no fakes: start-up activation imports none of the ML libraries."""
    code = ("import sys, json, compat_patches.activation as a; "
            "print(json.dumps([a.last().via, sorted(m for m in ('torch', 'transformers', 'peft', "
            "'vllm', 'vllm_ascend', 'verl', 'ray', 'numpy') if m in sys.modules)]))")
    result = run(launcher_command() + [sys.executable, "-c", code], clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["sitecustomize", []]


def test_bootstrap_ships_in_the_package():
    """The bootstrap directory is a package, so setuptools' find: puts it in the wheel."""
    assert os.path.isfile(os.path.join(launcher.bootstrap_dir(), "sitecustomize.py"))
    assert os.path.isfile(os.path.join(launcher.bootstrap_dir(), "__init__.py"))
    before = compat_patches.activation.history()
    __import__("compat_patches._bootstrap")  # importing the package activates nothing
    assert compat_patches.activation.history() == before
