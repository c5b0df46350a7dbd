"""Fake records and probes for tests that look into OTHER processes (launcher, Ray, torchrun).

The five real patches cannot prove "applied" in a child without their libraries, so the child's
default manager is replaced, at its start, by one over fake records on a fake module, the way a
test monkeypatches ``compat_patches._manager`` in-process:

- ``fake_target.py``: the module the fake records wrap (``function(a, b)``; ``Base.method``);
- ``cp_fake_setup.py``: ``install()`` sets ``compat_patches._manager`` to a PatchManager over
  ``fake-fix`` (in range: wraps ``fake_target:function`` so it returns ``("patched", a + b)``),
  ``fake-drifted`` (in range, but expects other parameter names: reports ``drifted``) and
  ``fake-not-needed`` (out of range); the fake distribution ``fakelib`` is "1.5.0";
- ``probe.py``: ``state()`` says, inside a process, how it was activated and what the fake
  target returns; printed as JSON by the test scripts.

A child process runs ``cp_fake_setup.install()`` from the user's own ``sitecustomize.py`` (launcher,
torchrun) or the user's own Ray setup hook, which also proves that those still run with ours.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

FAKE_TARGET = '''
def function(a, b):
    return a + b


class Base:
    def method(self, x):
        return x
'''

FAKE_SETUP = '''
"""Test-only: compat_patches' default manager over fake records (see tests/process_fakes.py)."""
import compat_patches
from compat_patches.core import Patch, PatchManager, Target


def _tag(wrapped, instance, args, kwargs):
    return ("patched", wrapped(*args, **kwargs))


PATCHES = (
    Patch(name="fake-fix", summary="fake fix of fake_target.function",
          upstream="https://example.invalid/fix", affected={"fakelib": ">=1.0rc0,<2"},
          fixed_in="fakelib 2.0",
          targets=(Target("fake_target:function", _tag, params=("a", "b")),)),
    Patch(name="fake-drifted", summary="fake fix whose target changed",
          upstream="https://example.invalid/drift", affected={"fakelib": ">=1.0rc0,<2"},
          targets=(Target("fake_target:Base.method", _tag, params=("self", "renamed")),)),
    Patch(name="fake-not-needed", summary="fake fix of a bug fixed here",
          upstream="https://example.invalid/old", affected={"fakelib": "<1"},
          targets=(Target("fake_target:function", _tag),)),
)
MANAGER = PatchManager(PATCHES, version_of={"fakelib": "1.5.0"}.get)


def install():
    compat_patches._manager = MANAGER
'''

PROBE = '''
import os
import sys


def state():
    import compat_patches
    import compat_patches.activation as activation
    import fake_target

    last = activation.last()
    return {
        "pid": os.getpid(),
        "via": last.via if last else None,
        "activations": len(activation.history()),
        "activation_error": last.error if last else None,
        "result": fake_target.function(1, 2),
        "statuses": {entry.name: entry.status for entry in compat_patches.report()},
        "activation_statuses": ({entry.name: entry.status for entry in last.report}
                                if last and last.report is not None else None),
        "user_sitecustomize": getattr(sys, "_cp_user_sitecustomize", None) == os.getpid(),
        "user_hook": getattr(sys, "_cp_user_hook", None) == os.getpid(),
        "auto": "compat_patches.auto" in sys.modules,
        "heavy": [m for m in ("transformers", "peft", "vllm", "vllm_ascend", "verl")
                  if m in sys.modules],
    }


if __name__ == "__main__":
    import json
    print(json.dumps(state()))
'''

USER_SITECUSTOMIZE = '''
import os
import sys

sys._cp_user_sitecustomize = os.getpid()
import cp_fake_setup

cp_fake_setup.install()
'''

PATCHED = ["patched", 3]   # fake_target.function(1, 2) with fake-fix applied (JSON)
UNPATCHED = 3


def write_fake_site(directory, *, user_sitecustomize=True, extra=None):
    """Write the fake modules (and the user's sitecustomize) into `directory`; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {"fake_target.py": FAKE_TARGET, "cp_fake_setup.py": FAKE_SETUP, "probe.py": PROBE}
    if user_sitecustomize:
        files["sitecustomize.py"] = USER_SITECUSTOMIZE
    files.update(extra or {})
    for name, source in files.items():
        (directory / name).write_text(textwrap.dedent(source))
    return directory


def clean_env(**overrides):
    """os.environ without COMPAT_PATCHES_* / PYTHONPATH, plus `overrides` (None removes)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COMPAT_PATCHES_") and k != "PYTHONPATH"}
    env.setdefault("OMP_NUM_THREADS", "1")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def launcher_command():
    """The installed console script, else ``python -m compat_patches.launcher``."""
    script = Path(sys.executable).with_name("compat-patches-run")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "compat_patches.launcher"]


def run(command, env, cwd, timeout=120):
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def last_json(stdout):
    """The last line of `stdout` that is a JSON object."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in output:\n{stdout}")
