"""Ray: ``compat_patches.ray.runtime_env`` / ``compat_patches.ray.setup`` patch every worker process.

The merge helper and the hook are tested in-process with fake records; the real thing runs a REAL
local Ray cluster (``ray.init(num_cpus=2)``, CPU only) in a driver subprocess: actors report, from
inside their worker process, that the user's own setup hook ran, that the fake patch is applied
(the fake target returns the patched value), that a drifted patch is reported and did not stop the
worker, and that ``COMPAT_PATCHES_DISABLE`` in an actor's env_vars turns it off. The child processes
use the fake records of tests/process_fakes.py (installed by the user's hook).
"""

import os
import sys

import pytest

import compat_patches
import compat_patches.ray as cp_ray
from compat_patches.core import PatchDriftError, UnknownPatchError

from .core.fakes import import_module, make_patch, manager
from .process_fakes import (PATCHED, UNPATCHED, clean_env, last_json, launcher_command, run,
                            write_fake_site)

REAL = ("transformers-rope-ignore-keys", "peft-moe-regex-targets")

USER_HOOK = '''
import os
import sys


def setup():
    sys._cp_user_hook = os.getpid()
    import cp_fake_setup
    cp_fake_setup.install()
    import fake_target          # imported before compat_patches applies: patched in place
'''

DRIVER = '''
import json
import os
import sys
import time

import ray

import compat_patches.activation
import compat_patches.ray

mode, site = sys.argv[1], sys.argv[2]


def hook_defined_in_main():     # a callable hook: Ray pickles it by value
    import user_hook
    user_hook.setup()


if mode == "launcher":     # no hook: the driver runs under compat-patches-run
    env = None             # workers inherit PYTHONPATH (bootstrap first) from the driver
else:
    hook = "user_hook.setup" if mode == "string" else hook_defined_in_main
    # LOG_LEVEL=INFO: the breadcrumb's INFO line in the workers' logs (WARNING lines show regardless)
    env = compat_patches.ray.runtime_env({"worker_process_setup_hook": hook,
                                          "env_vars": {"PYTHONPATH": site, "COMPAT_PATCHES_LOG_LEVEL": "INFO"}})
started = time.time()
ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
         runtime_env=env, log_to_driver=False)


@ray.remote(num_cpus=0)
class Probe:
    def state(self):
        import probe
        return probe.state()


@ray.remote(num_cpus=0)
def task_state():
    import probe
    return probe.state()


out = {"driver_activation": compat_patches.activation.last() is not None}
out["actor"] = ray.get(Probe.remote().state.remote(), timeout=120)
if mode == "string":
    out["task"] = ray.get(task_state.remote(), timeout=120)
    disabled = Probe.options(runtime_env={"env_vars": {"COMPAT_PATCHES_DISABLE": "1"}}).remote()
    out["disabled"] = ray.get(disabled.state.remote(), timeout=120)
logs = ray._private.worker._global_node.get_logs_dir_path()   # each worker's stderr file
out["actor_log"] = "".join(open(os.path.join(logs, name)).read() for name in os.listdir(logs)
                           if name.endswith(f"-{out['actor']['pid']}.err"))
out["seconds"] = time.time() - started
ray.shutdown()
print(json.dumps(out))
'''


# ----- in-process: the merge helper ---------------------------------------------------------
def test_runtime_env_adds_our_hook_and_keeps_the_users_env():
    existing = {"env_vars": {"HF_HOME": "/data"}, "pip": ["x"]}
    env = cp_ray.runtime_env(existing, only=list(REAL), disable=[REAL[1]], strict=True)
    assert env["worker_process_setup_hook"] == "compat_patches.ray.setup"
    assert env["pip"] == ["x"]
    assert env["env_vars"] == {"HF_HOME": "/data", "COMPAT_PATCHES_ONLY": ",".join(REAL),
                               "COMPAT_PATCHES_DISABLE": REAL[1], "COMPAT_PATCHES_STRICT": "1"}
    assert existing == {"env_vars": {"HF_HOME": "/data"}, "pip": ["x"]}, "input not modified"
    assert cp_ray.runtime_env(env) == env, "merging twice changes nothing"
    for everything in (True, "all"):
        assert cp_ray.runtime_env(disable=everything)["env_vars"]["COMPAT_PATCHES_DISABLE"] == "1"


def test_runtime_env_chains_a_module_path_hook():
    env = cp_ray.runtime_env({"worker_process_setup_hook": "my_pkg.setup_logging"})
    assert env["worker_process_setup_hook"] == "compat_patches.ray.setup"
    assert env["env_vars"]["COMPAT_PATCHES_RAY_USER_HOOK"] == "my_pkg.setup_logging"
    assert cp_ray.runtime_env(env) == env
    with pytest.raises(ValueError, match="give one of them"):
        cp_ray.runtime_env({"worker_process_setup_hook": "other.hook", "env_vars": env["env_vars"]})


def test_runtime_env_chains_a_callable_hook_and_pickles():
    import pickle

    env = cp_ray.runtime_env({"worker_process_setup_hook": os.getcwd})
    hook = env["worker_process_setup_hook"]
    assert isinstance(hook, cp_ray.ChainedSetup) and hook.user_hook is os.getcwd
    assert hook.__name__ == "compat_patches_after_getcwd"
    assert pickle.loads(pickle.dumps(hook)) == hook
    assert cp_ray.runtime_env(env)["worker_process_setup_hook"] is hook


def test_runtime_env_passes_the_drivers_switches_on(monkeypatch):
    monkeypatch.setenv("COMPAT_PATCHES_DISABLE", REAL[0])
    assert cp_ray.runtime_env()["env_vars"] == {"COMPAT_PATCHES_DISABLE": REAL[0]}
    given = cp_ray.runtime_env({"env_vars": {"COMPAT_PATCHES_DISABLE": ""}})
    assert given["env_vars"] == {"COMPAT_PATCHES_DISABLE": ""}, "the runtime_env's own value wins"


@pytest.mark.parametrize("call, where", [
    (lambda: cp_ray.runtime_env(only=["typo-fix"]), "only=..."),
    (lambda: cp_ray.runtime_env(disable="typo-fix"), "disable=..."),
    (lambda: cp_ray.runtime_env({"env_vars": {"COMPAT_PATCHES_ONLY": "typo-fix"}}),
     "COMPAT_PATCHES_ONLY"),
])
def test_unknown_names_raise_in_the_driver(call, where):
    with pytest.raises(UnknownPatchError, match=r"'typo-fix' in .*") as info:
        call()
    assert where in str(info.value)
    assert "known names: transformers-rope-ignore-keys" in str(info.value)


def test_runtime_env_rejects_a_non_hook():
    with pytest.raises(TypeError, match="module path or a callable"):
        cp_ray.runtime_env({"worker_process_setup_hook": 42})


# ----- in-process: the hook, with fake records ------------------------------------------------
@pytest.fixture
def fake_default(tmp_path, monkeypatch):
    """compat_patches' default manager replaced by fake records on an imported fake module."""
    mod = import_module(tmp_path, monkeypatch)
    m = manager(make_patch(mod.__name__, name="fake-fix"),
                make_patch(mod.__name__, name="fake-drifted", attribute="function", params=("x",)))
    monkeypatch.setattr(compat_patches, "_manager", m)
    for variable in ("COMPAT_PATCHES_ONLY", "COMPAT_PATCHES_DISABLE", "COMPAT_PATCHES_STRICT",
                     cp_ray.ENV_USER_HOOK):
        monkeypatch.delenv(variable, raising=False)
    try:
        yield mod
    finally:
        m.revert_all()


def test_setup_applies_and_reports_a_drift_without_raising(fake_default, caplog):
    original = vars(fake_default.Base)["method"]
    with caplog.at_level("INFO", logger="compat_patches"):
        activation = cp_ray.setup()
    assert activation.via == "ray" and activation.pid == os.getpid()
    assert activation.report["fake-fix"].status == "applied"
    assert activation.report["fake-drifted"].status == "drifted"
    assert not activation.ok
    assert fake_default.Base().method(2) == ("fake-fix", ("original", 2))
    lines = [r for r in caplog.records if f"in pid {os.getpid()} via ray" in r.getMessage()]
    assert [r.levelname for r in lines] == ["INFO", "WARNING"]
    assert "via ray: active: fake-fix; 1 of 2 records (1 drifted)" in lines[0].getMessage()
    assert "via ray: fake-drifted drifted: target" in lines[1].getMessage()
    compat_patches.revert_all()
    assert vars(fake_default.Base)["method"] is original


def test_setup_in_strict_mode_raises(fake_default, monkeypatch):
    monkeypatch.setenv("COMPAT_PATCHES_STRICT", "1")
    with pytest.raises(PatchDriftError, match="fake-drifted"):
        cp_ray.setup()


def test_setup_with_a_misspelt_name_reports_and_goes_on(fake_default, monkeypatch):
    monkeypatch.setenv("COMPAT_PATCHES_DISABLE", "typo-fix")
    activation = cp_ray.setup()
    assert "UnknownPatchError" in activation.error and "'typo-fix'" in activation.error
    assert vars(fake_default.Base)["method"].__class__.__name__ == "function"  # nothing applied


def test_setup_runs_the_chained_user_hook_first(fake_default, monkeypatch, tmp_path):
    (tmp_path / "my_user_hook.py").write_text(
        "import compat_patches.activation as a\nCALLS = []\n"
        "def setup():\n    CALLS.append(a.last())\n")
    monkeypatch.setenv(cp_ray.ENV_USER_HOOK, "my_user_hook.setup")
    before = compat_patches.activation.last()
    activation = cp_ray.setup()
    import my_user_hook

    assert my_user_hook.CALLS == [before]        # ran once, before our activation
    assert compat_patches.activation.last() is activation
    compat_patches.revert_all()


def test_module_imports_nothing_heavy():
    code = ("import sys, compat_patches.ray; "
            "print(sorted(m for m in ('ray', 'torch', 'transformers', 'vllm') if m in sys.modules))")
    result = run([sys.executable, "-c", code], clean_env(), cwd=None)
    assert result.stdout.strip() == "[]", result.stderr


# ----- a real local Ray cluster ---------------------------------------------------------------
def _ray_driver(tmp_path, mode):
    pytest.importorskip("ray", reason="needs ray (pip install ray) for a local cluster")
    launched = mode == "launcher"
    site = write_fake_site(tmp_path / "site", user_sitecustomize=launched,
                           extra={"user_hook.py": USER_HOOK, "driver.py": DRIVER})
    env = clean_env(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                    PYTHONPATH=site if launched else None)
    command = [sys.executable, str(site / "driver.py"), mode, str(site)]
    result = run(launcher_command() + command if launched else command, env, cwd=tmp_path,
                 timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return last_json(result.stdout)


@pytest.fixture(scope="module")
def ray_string_hook(tmp_path_factory):
    return _ray_driver(tmp_path_factory.mktemp("ray"), "string")


def _assert_patched_worker(state):
    assert state["via"] == "ray" and state["activations"] == 1
    assert state["user_hook"], "the user's own setup hook ran in this worker"
    assert state["result"] == PATCHED
    assert state["activation_statuses"] == {"fake-fix": "applied", "fake-drifted": "drifted",
                                            "fake-not-needed": "not-needed"}
    assert state["statuses"]["fake-fix"] == "applied"
    assert state["heavy"] == []


@pytest.mark.requires(ray=">=2.9")
def test_ray_actor_and_task_workers_are_patched(ray_string_hook):
    out = ray_string_hook
    assert out["driver_activation"] is False, "the driver itself is not touched"
    _assert_patched_worker(out["actor"])
    _assert_patched_worker(out["task"])
    # the worker's own log has the drift and the one activation line, with its pid
    pid = out["actor"]["pid"]
    assert "fake-drifted: drifted (target fake_target:Base.method signature changed" in out["actor_log"]
    assert (f"compat_patches {compat_patches.__version__} in pid {pid} via ray: active: fake-fix; "
            "1 of 3 records (1 drifted, 1 not-needed)") in out["actor_log"], out["actor_log"][-2000:]
    assert (f"in pid {pid} via ray: fake-drifted drifted: target fake_target:Base.method signature "
            "changed") in out["actor_log"], out["actor_log"][-2000:]


@pytest.mark.requires(ray=">=2.9")
def test_ray_actor_with_disable_in_env_vars_is_not_patched(ray_string_hook):
    state = ray_string_hook["disabled"]
    assert state["via"] == "ray" and state["user_hook"]
    assert state["result"] == UNPATCHED
    assert set(state["activation_statuses"].values()) == {"disabled"}
    assert state["pid"] != ray_string_hook["actor"]["pid"]


@pytest.mark.requires(ray=">=2.9")
def test_ray_callable_user_hook_is_chained(tmp_path):
    out = _ray_driver(tmp_path, "callable")
    _assert_patched_worker(out["actor"])


@pytest.mark.requires(ray=">=2.9")
def test_ray_workers_of_a_driver_started_by_the_launcher_are_patched(tmp_path):
    """No runtime_env hook: the local cluster's workers inherit the launcher's PYTHONPATH."""
    out = _ray_driver(tmp_path, "launcher")
    assert out["driver_activation"] is True
    state = out["actor"]
    assert state["via"] == "sitecustomize" and state["activations"] == 1
    assert state["user_sitecustomize"] and state["result"] == PATCHED
    assert state["statuses"] == {"fake-fix": "applied", "fake-drifted": "drifted",
                                 "fake-not-needed": "not-needed"}
