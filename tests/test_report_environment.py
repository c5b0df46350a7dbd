"""The environment and the per-process breadcrumb (docs/api.md, "Environment" and "Log lines").

- COMPAT_PATCHES_LOG_LEVEL and COMPAT_PATCHES_LOG_FORMAT are validated like the other variables;
- ``import compat_patches.auto`` with a bad value: one line naming the variable, the value and the
  valid ones, exit status 2, nothing applied; the ``sitecustomize`` bootstrap: one line, the process
  goes on unpatched (strict mode: it stops);
- a process that activates logs one INFO line with what is active, one WARNING line when something
  drifted or failed, once per process; ``COMPAT_PATCHES_LOG_FORMAT=json`` makes them JSON objects.
"""

import json
import logging
import os
import subprocess
import sys

import pytest

import compat_patches
from compat_patches import activation
from compat_patches.core import InvalidSettingError, UnknownPatchError

from .core.fakes import import_module, make_patch, manager

BOOTSTRAP = os.path.join(os.path.dirname(compat_patches.__file__), "_bootstrap")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPAT_PATCHES_")}
    env.update(extra)
    return env


def python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(**env), timeout=300)


@pytest.mark.parametrize("variable, value, accepted", [
    ("COMPAT_PATCHES_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ("COMPAT_PATCHES_LOG_FORMAT", "xml", "text or json"),
    ("COMPAT_PATCHES_STRICT", "maybe", "1, true, yes or on"),
    ("COMPAT_PATCHES_ONLY", "typo-name", "known names: transformers-rope-ignore-keys"),
])
def test_validate_environment_names_the_variable_the_value_and_what_is_accepted(variable, value, accepted):
    with pytest.raises((InvalidSettingError, UnknownPatchError)) as caught:
        activation.validate_environment({variable: value})
    assert variable in str(caught.value) and repr(value) in str(caught.value) and accepted in str(caught.value)


@pytest.mark.parametrize("value", ["", "info", " WARNING ", "Debug", "error", "CRITICAL"])
def test_log_levels_accepted(value):
    activation.validate_environment({"COMPAT_PATCHES_LOG_LEVEL": value, "COMPAT_PATCHES_LOG_FORMAT": "JSON"})


@pytest.mark.parametrize("variable, value", [("COMPAT_PATCHES_ONLY", "typo-name"),
                                             ("COMPAT_PATCHES_LOG_LEVEL", "LOUD"),
                                             ("COMPAT_PATCHES_STRICT", "maybe")])
def test_auto_with_a_bad_value_is_one_line_and_exit_2(variable, value):
    proc = python("import compat_patches.auto\nprint('user code ran')", **{variable: value})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("compat_patches: error: ") and variable in lines[0] and repr(value) in lines[0]


@pytest.mark.parametrize("strict", [False, True])
def test_sitecustomize_with_a_bad_value_is_one_line(strict):
    env = {"PYTHONPATH": BOOTSTRAP, "COMPAT_PATCHES_ONLY": "typo-name"}
    if strict:
        env["COMPAT_PATCHES_STRICT"] = "1"
    proc = python("print('user code ran')", **env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "'typo-name'" in lines[0] and "COMPAT_PATCHES_ONLY" in lines[0]
    if strict:
        assert proc.returncode == 1 and proc.stdout == ""
    else:
        assert proc.returncode == 0 and proc.stdout == "user code ran\n"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    mod = import_module(tmp_path, monkeypatch)
    m = manager(make_patch(mod.__name__, name="fake-fix"),
                make_patch(mod.__name__, name="fake-drifted", attribute="function", params=("x",)),
                make_patch(mod.__name__, name="fake-not-needed", affected={"fakelib": "<1"}))
    monkeypatch.setattr(compat_patches, "_manager", m)
    for variable in ("COMPAT_PATCHES_ONLY", "COMPAT_PATCHES_DISABLE", "COMPAT_PATCHES_STRICT",
                     "COMPAT_PATCHES_LOG_FORMAT", "COMPAT_PATCHES_LOG_LEVEL"):
        monkeypatch.delenv(variable, raising=False)
    try:
        yield m
    finally:
        m.revert_all()


def _breadcrumbs(caplog):
    return [r for r in caplog.records if f"in pid {os.getpid()} via " in r.getMessage()]


def test_one_info_line_with_what_is_active_and_one_warning_line_once_per_process(fake, caplog):
    with caplog.at_level(logging.INFO, logger="compat_patches"):
        first = activation.activate("test-entry")
        again = activation.activate("test-entry")  # nothing changed: nothing logged again
    assert not first.ok and again.report["fake-fix"].status == "applied"
    lines = _breadcrumbs(caplog)
    assert [r.levelname for r in lines] == ["INFO", "WARNING"], [r.getMessage() for r in lines]
    info, warning = (r.getMessage() for r in lines)
    assert info == (f"compat_patches {compat_patches.__version__} in pid {os.getpid()} via test-entry: "
                    "active: fake-fix; 1 of 3 records (1 drifted, 1 not-needed)")
    assert warning.startswith(f"compat_patches {compat_patches.__version__} in pid {os.getpid()} via "
                              "test-entry: fake-drifted drifted: target ")
    assert "signature changed" in warning


def test_json_log_format(fake, caplog, monkeypatch):
    monkeypatch.setenv("COMPAT_PATCHES_LOG_FORMAT", "json")
    with caplog.at_level(logging.INFO, logger="compat_patches"):
        activation.activate("test-json")
    objects = [json.loads(r.getMessage()) for r in caplog.records]  # every line is one JSON object
    events = {o.get("event"): o for o in objects if "event" in o}
    active, problems = events["compat_patches.active"], events["compat_patches.problems"]
    assert active["level"] == "INFO" and active["logger"] == "compat_patches"
    assert active["active"] == ["fake-fix"] and active["pid"] == os.getpid() and active["via"] == "test-json"
    assert active["version"] == compat_patches.__version__
    assert active["statuses"] == {"fake-fix": "applied", "fake-drifted": "drifted", "fake-not-needed": "not-needed"}
    assert active["versions"] == {"fakelib": "1.5.0"}
    assert problems["level"] == "WARNING" and list(problems["drifted"]) == ["fake-drifted"]


def test_a_bad_log_level_in_a_worker_is_reported_and_the_patches_still_apply(fake, caplog, monkeypatch):
    monkeypatch.setenv("COMPAT_PATCHES_LOG_LEVEL", "LOUD")
    with caplog.at_level(logging.INFO, logger="compat_patches"):
        result = activation.activate("test-loud")
    assert result.report["fake-fix"].status == "applied"
    assert "COMPAT_PATCHES_LOG_LEVEL='LOUD'" in result.error
    assert any("COMPAT_PATCHES_LOG_LEVEL='LOUD'" in r.getMessage() and r.levelname == "WARNING"
               for r in _breadcrumbs(caplog))


def test_the_vllm_plugin_raises_on_a_bad_value(fake, monkeypatch):
    """The docstring's promise: entry points that validate first do raise on a configuration error."""
    from compat_patches import vllm_plugin

    monkeypatch.setenv("COMPAT_PATCHES_ONLY", "typo-name")
    with pytest.raises(UnknownPatchError):
        vllm_plugin.register()
