"""The public surface: names, lazy imports, the report command, the vLLM entry point, the guard."""

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest

import compat_patches
from compat_patches.core import STATUSES, UnknownPatchError

NAMES = ("transformers-rope-ignore-keys", "peft-moe-regex-targets", "vllm-ascend-moe-layout",
         "fsdp-packed-experts", "vllm-fused-expert-kwargs", "transformers-byte-level-tokenizer",
         "transformers-missing-weights-init", "transformers-vl-processor-ragged-batch",
         "transformers-gpt-oss-num-experts", "transformers-gdn-packed-samples",
         "transformers-mamba2-packed-samples", "transformers-stale-loss-kwargs",
         "transformers-trainer-token-count", "peft-hybrid-cache-import", "peft-shared-expert-targets",
         "vllm-layerwise-reload-numel", "vllm-hybrid-fp8-kv-wake", "vllm-moe-reprocess-storage",
         "vllm-flashinfer-moe-layout", "vllm-hyv4-fused-expert-kwargs",
         "vllm-stateless-pg-ipv6", "transformers-qwen3-5-moe-fused-save",
         "transformers-zero3-dropped-keys")
HEAVY = ("torch", "transformers", "peft", "vllm", "vllm_ascend", "verl", "numpy")


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=120)


def test_stable_names():
    assert compat_patches.patch_names() == NAMES
    for name in NAMES:
        assert compat_patches.get_patch(name).name == name


@pytest.mark.parametrize("name", NAMES)
def test_every_record_has_valid_ranges(name):
    compat_patches.get_patch(name).validate()  # ranges are parsed lazily at run time


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownPatchError) as info:
        with compat_patches.patched("transformers-rope"):
            pass
    assert "'transformers-rope'" in str(info.value)
    for name in NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("code", [
    "import compat_patches",
    "import compat_patches; compat_patches.apply_all(); compat_patches.report()",
    "import compat_patches.auto",
    "import compat_patches.vllm_plugin as p; p.register()",
])
def test_imports_nothing_heavy(code):
    proc = run_python(f"{code}\nimport sys, json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def _modules_after(code):
    proc = run_python(f"{code}\nimport sys; print(' '.join(sorted(sys.modules)))")
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split("\n")[-2].split())


@pytest.mark.parametrize("code", [
    "import compat_patches",
    "import compat_patches; compat_patches.apply_all(); compat_patches.report()",
    "import compat_patches.auto",
])
def test_import_and_apply_pull_in_only_our_own_modules(code):
    """Every process of a job pays for this (the launcher's sitecustomize): no logging, no
    importlib.metadata, no dataclasses, no wrapt; packaging only where a patched library is
    installed (to compare its version), wrapt only where a patch is in range (to hook or wrap its
    target). benchmarks/bench_import.py measures the time."""
    from compat_patches.core.versions import installed_version

    bare = _modules_after("pass")
    allowed = {"__future__"}
    if any(installed_version(dist) for name in NAMES for dist in compat_patches.get_patch(name).affected):
        allowed |= _modules_after("import packaging.version, packaging.specifiers") - bare
    if any(compat_patches._default_manager().in_range(name) for name in NAMES):
        allowed |= _modules_after("import wrapt") - bare  # a post-import hook to register
    extra = {m for m in _modules_after(code) - bare if not m.startswith("compat_patches")}
    assert extra <= allowed, sorted(extra - allowed)


def test_plain_import_does_not_pay_for_wrapt_or_asyncio():
    proc = run_python("import compat_patches, sys; print(sorted(m for m in ('wrapt', 'asyncio') if m in sys.modules))")
    assert proc.stdout.split()[-1] == "[]", proc.stdout + proc.stderr


def test_report_command_json_lists_every_patch():
    proc = subprocess.run([sys.executable, "-m", "compat_patches", "--json"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    assert [e["name"] for e in entries] == list(NAMES)
    for entry in entries:
        assert entry["status"] in STATUSES
        assert entry["reason"]
        assert set(entry["versions"]) == set(compat_patches.get_patch(entry["name"]).affected)


def test_report_command_table():
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # piped: whole lines
    proc = subprocess.run([sys.executable, "-m", "compat_patches", "--lazy"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"compat_patches {compat_patches.__version__} on Python ")
    assert ["patch", "finding", "reason"] in [line.split() for line in lines]
    for name in NAMES:
        assert name in proc.stdout


def test_report_command_honours_disable():
    proc = subprocess.run([sys.executable, "-m", "compat_patches", "--json", "--lazy"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COMPAT_PATCHES_DISABLE="1"))
    assert {e["status"] for e in json.loads(proc.stdout)} == {"disabled"}


def test_vllm_entry_point_is_declared_and_applies():
    points = [ep for ep in metadata.entry_points(group="vllm.general_plugins")
              if ep.name == "compat_patches"]
    assert len(points) == 1 and points[0].value == "compat_patches.vllm_plugin:register"
    code = ("from importlib import metadata\n"
            "ep = [e for e in metadata.entry_points(group='vllm.general_plugins') if e.name == 'compat_patches'][0]\n"
            "report = ep.load()()\n"
            "import compat_patches\n"
            "print(compat_patches.report().to_json())")
    for env, allowed in (({}, None), ({"COMPAT_PATCHES_DISABLE": "1"}, {"disabled"})):
        proc = run_python(code, **env)
        assert proc.returncode == 0, proc.stderr
        statuses = {e["status"] for e in json.loads(proc.stdout.splitlines()[-1])}
        if allowed:
            assert statuses == allowed
        else:
            assert "pending" not in statuses  # every in-range patch was applied or deferred


def test_vllm_entry_point_rejects_a_misspelt_name():
    proc = run_python("import compat_patches.vllm_plugin as p; p.register()",
                      COMPAT_PATCHES_ONLY="rope-typo")
    assert proc.returncode != 0
    assert "unknown patch name(s) 'rope-typo' in COMPAT_PATCHES_ONLY" in proc.stderr


def test_guard_fails_a_test_that_leaves_a_patch_applied(pytester, monkeypatch):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    pytester.makeconftest("from tests.conftest import _no_patch_left_applied\n")
    pytester.makepyfile(test_leaky="""
        from tests.core.fakes import make_patch, manager
        import types, sys
        mod = types.ModuleType("leaky_target")
        exec("def function(a, b):\\n    return a + b", mod.__dict__)
        sys.modules["leaky_target"] = mod

        def test_leaks():
            manager(make_patch("leaky_target", attribute="function")).apply_all()
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                           f"--rootdir={pytester.path}")
    result.stdout.fnmatch_lines(["*Failed: test left patches applied: *fake-fix*"])
    result.assert_outcomes(passed=1, errors=1)


@pytest.mark.parametrize("leak, message", [
    # a wrapper of a record put on its target behind the manager's back (the manager is idle)
    ("import wrapt\n"
     "            patch = make_patch('leaky_target', attribute='function')\n"
     "            m = manager(patch)\n"
     "            wrapt.wrap_function_wrapper(mod, 'function', patch.targets[0].wrapper)",
     "*Failed: test left wrappers of ours on: *leaky_target:function*"),
    # a finding left in the default manager's report misleads every later test of that patch
    ("import compat_patches\n"
     "            state = compat_patches._default_manager()._states['transformers-rope-ignore-keys']\n"
     "            state.last = compat_patches.report()['transformers-rope-ignore-keys'].__class__(\n"
     "                'transformers-rope-ignore-keys', 'drifted', 'left by a test', {}, {})",
     "*Failed: test changed the default manager's report: *-> drifted*"),
])
def test_guard_fails_a_test_that_leaves_a_wrapper_or_a_finding(pytester, monkeypatch, leak, message):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    pytester.makeconftest("from tests.conftest import _no_patch_left_applied\n")
    pytester.makepyfile(test_leaky=f"""
        from tests.core.fakes import make_patch, manager
        import types, sys
        mod = types.ModuleType("leaky_target")
        exec("def function(a, b):\\n    return a + b", mod.__dict__)
        sys.modules["leaky_target"] = mod

        def test_leaks():
            {leak}
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--rootdir={pytester.path}")
    result.stdout.fnmatch_lines([message])
    result.assert_outcomes(passed=1, errors=1)
