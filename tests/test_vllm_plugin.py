"""The `vllm.general_plugins` entry point, loaded by vLLM's own plugin loader.

vLLM calls `vllm.plugins.load_general_plugins()` in every process it starts (engine core, workers),
before any model module is imported. Each case runs in a fresh interpreter (the loader runs once per
process) with vLLM and compat_patches installed, and reads `compat_patches.report()` afterwards.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from compat_patches.core.versions import in_range, installed_version

pytestmark = pytest.mark.requires(vllm=">=0.11.0")

NAME = "vllm-fused-expert-kwargs"
AFFECTED = ">=0.11.0.dev0,<0.22.0"

CHILD = textwrap.dedent(r'''
    import json, sys

    import vllm.plugins
    import compat_patches

    out = {"before": compat_patches.report()[NAME].status}
    vllm.plugins.load_general_plugins()
    entry = compat_patches.report()[NAME]
    out["after_plugins"] = entry.status
    out["reason"] = entry.reason
    out["vllm_models_imported_by_plugin_load"] = "vllm.model_executor.models.qwen3_vl_moe" in sys.modules

    if IMPORT_MODELS:
        import importlib
        module = importlib.import_module("vllm.model_executor.models.qwen3_vl_moe")
        cls = module.Qwen3MoeLLMModel
        out["after_import"] = compat_patches.report()[NAME].status
        out["targets"] = list(compat_patches.report()[NAME].targets)
        method = cls.__dict__.get("load_fused_expert_weights")
        out["wrapped"] = method is not None and hasattr(method, "__wrapped__")
        if method is not None:
            import torch
            calls = []
            def loader(param, w, name, *, shard_id, expert_id, return_success=False):
                calls.append([shard_id, expert_id])
                return True
            p = torch.nn.Parameter(torch.zeros(2, 3), requires_grad=False)
            p.weight_loader = loader
            try:
                ok = object.__new__(cls).load_fused_expert_weights("w", {"w": p}, torch.ones(2, 3), "w2", 2)
                out["load"] = [ok, calls]
            except TypeError as exc:
                out["load"] = "TypeError: " + str(exc)
    print("RESULT " + json.dumps(out))
''')


def run_child(import_models=True, **env):
    child_env = {k: v for k, v in os.environ.items()
                 if not k.startswith(("COMPAT_PATCHES_", "VLLM_PLUGINS"))}
    child_env.update(env)
    code = f"NAME = {NAME!r}\nIMPORT_MODELS = {import_models!r}\n" + CHILD
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=child_env, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT "):]), proc


def _affected_here():
    return in_range(installed_version("vllm"), AFFECTED)


def test_entry_point_is_registered_for_vllm():
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "compat_patches"]
    assert len(found) == 1, found
    assert found[0].value == "compat_patches.vllm_plugin:register"


def test_vllm_plugin_loader_applies_the_patches():
    out, _ = run_child()
    assert out["before"] in ("pending", "not-needed")
    assert not out["vllm_models_imported_by_plugin_load"]
    if _affected_here():
        # loaded before any model module, as in a vLLM worker: deferred, then applied on import
        assert out["after_plugins"] == "deferred", out
        assert out["after_import"] in ("applied", "deferred"), out  # other target modules pending
        assert out["wrapped"] is True
        assert out["load"] == [True, [["w2", 0], ["w2", 1]]], out
    else:
        assert out["after_plugins"] == "not-needed", out
        assert "0.22.0" in out["reason"]
        assert out["wrapped"] is False


@pytest.mark.parametrize("value", [NAME, "1"])
def test_vllm_plugin_loader_honours_disable(value):
    out, _ = run_child(COMPAT_PATCHES_DISABLE=value)
    assert out["after_plugins"] == "disabled", out
    assert "COMPAT_PATCHES_DISABLE" in out["reason"]
    assert out["wrapped"] is False
    if _affected_here():
        assert out["load"].startswith("TypeError"), out  # the bug is still there: nothing patched


def test_misspelt_disable_fails_loudly_in_the_plugin():
    code = "import vllm.plugins\nvllm.plugins.load_general_plugins()\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPAT_PATCHES_")}
    env["COMPAT_PATCHES_DISABLE"] = "vllm-fused-expert-kwarg"  # typo
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode != 0
    assert "vllm-fused-expert-kwarg" in proc.stderr


def test_vllm_plugins_allowlist_without_us_loads_nothing():
    out, _ = run_child(import_models=False, VLLM_PLUGINS="some_other_plugin")
    expected = "pending" if _affected_here() else "not-needed"
    assert out["after_plugins"] == expected, out
