"""Ray: apply the patches in every Ray worker process, before any task or actor code runs.

    import ray
    import compat_patches.ray

    ray.init(runtime_env=compat_patches.ray.runtime_env(
        {"env_vars": {"HF_HOME": "/data/hf"}},      # your runtime_env, if any (not modified)
        disable=["vllm-ascend-moe-layout"],          # optional: only= / disable= / strict=
    ))

`runtime_env()` puts ``"compat_patches.ray.setup"`` in ``worker_process_setup_hook`` (Ray runs it in
every worker process of the job) and our switches in ``env_vars``; a hook you already set is kept
and runs first (a module path string is passed on in ``COMPAT_PATCHES_RAY_USER_HOOK``, a callable
is wrapped in a picklable :class:`ChainedSetup`). Names are checked here, in the driver, before any
worker starts. In the worker, a patch problem is logged (``compat_patches`` logger, one line with
the pid) and reported by ``compat_patches.report()`` / ``compat_patches.activation.last()``; it
never stops the worker unless strict mode is on.

Ray reads ``worker_process_setup_hook`` from the JOB's runtime_env (``ray.init``) only; a task's or
actor's own ``runtime_env`` may change our ``env_vars`` (they are merged with the job's), e.g.
``{"env_vars": {"COMPAT_PATCHES_DISABLE": "1"}}`` for one actor.

This module imports neither ray nor any other heavy library.
"""

import importlib
import os

from .activation import ENV_LOG_LEVEL as _ENV_LOG_LEVEL
from .activation import activate, validate_environment, validate_names
from .core.manager import ENV_DISABLE as _ENV_DISABLE, ENV_ONLY as _ENV_ONLY, ENV_STRICT as _ENV_STRICT

HOOK = "compat_patches.ray.setup"
ENV_USER_HOOK = "COMPAT_PATCHES_RAY_USER_HOOK"
_HOOK_KEY = "worker_process_setup_hook"


def _load(path):
    """A ``package.module.function`` path, resolved as Ray resolves setup hook paths."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(f"setup hook {path!r} must look like 'package.module.function'")
    return getattr(importlib.import_module(module_name), attribute)


def setup():
    """Ray ``worker_process_setup_hook``: run the user's chained hook (if any), then apply.

    Returns the compat_patches.activation.Activation of this worker.
    """
    user_hook = os.environ.get(ENV_USER_HOOK)
    if user_hook:
        _load(user_hook)()  # the user's own hook: its errors are theirs, as without us
    return activate("ray")


class ChainedSetup:
    """A picklable setup hook: the user's callable hook, then :func:`setup`."""

    def __init__(self, user_hook):
        self.user_hook = user_hook
        # Ray names the hook after __name__ in its runtime_env (observability only).
        self.__name__ = f"compat_patches_after_{getattr(user_hook, '__name__', 'user_hook')}"

    def __call__(self):
        self.user_hook()
        return setup()

    def __eq__(self, other):
        return isinstance(other, ChainedSetup) and other.user_hook == self.user_hook

    def __hash__(self):
        return hash((ChainedSetup, self.user_hook))

    def __repr__(self):
        return f"ChainedSetup({self.user_hook!r})"


def _names_value(names, variable):
    if names is True or (isinstance(names, str) and names.strip().lower() in ("all", "1", "*")):
        return "1"
    return ",".join(validate_names(names, f"compat_patches.ray.runtime_env({variable}=...)"))


def runtime_env(existing=None, *, only=None, disable=None, strict=None):
    """A copy of the Ray runtime_env `existing` (dict or ray.runtime_env.RuntimeEnv, or None)
    with our setup hook and switches merged in; `existing` itself is not modified.

    - `only`: patch names to apply (COMPAT_PATCHES_ONLY in the workers);
    - `disable`: True or "all" (none at all) or patch names (COMPAT_PATCHES_DISABLE);
    - `strict`: True makes a drifted or failed patch stop the worker (COMPAT_PATCHES_STRICT);
    - COMPAT_PATCHES_ONLY / _DISABLE / _STRICT / _LOG_LEVEL set in this driver's environment are
      passed on to the workers unless given
      here or in `existing["env_vars"]` (workers on other nodes do not inherit the driver's env).

    Unknown names or bad values, here or in those variables, raise a CompatPatchesError now.
    Merging twice changes nothing.
    """
    env = dict(existing or {})
    env_vars = dict(env.get("env_vars") or {})
    if only is not None:
        env_vars[_ENV_ONLY] = _names_value(only, "only")
    if disable is not None and disable is not False:
        env_vars[_ENV_DISABLE] = _names_value(disable, "disable")
    if strict is not None:
        env_vars[_ENV_STRICT] = "1" if strict else "0"
    for variable in (_ENV_ONLY, _ENV_DISABLE, _ENV_STRICT, _ENV_LOG_LEVEL):
        if variable not in env_vars and os.environ.get(variable):
            env_vars[variable] = os.environ[variable]
    validate_environment({k: v for k, v in env_vars.items() if k in (_ENV_ONLY, _ENV_DISABLE, _ENV_STRICT)})

    hook = env.get(_HOOK_KEY)
    if hook is None or hook == HOOK or isinstance(hook, ChainedSetup):
        env[_HOOK_KEY] = hook or HOOK
    elif isinstance(hook, str):
        chained = env_vars.get(ENV_USER_HOOK)
        if chained is not None and chained != hook:
            raise ValueError(
                f"runtime_env chains setup hook {chained!r} in {ENV_USER_HOOK} but sets "
                f"worker_process_setup_hook={hook!r}; give one of them"
            )
        env_vars[ENV_USER_HOOK] = hook
        env[_HOOK_KEY] = HOOK
    elif callable(hook):
        env[_HOOK_KEY] = ChainedSetup(hook)
    else:
        raise TypeError(f"worker_process_setup_hook must be a module path or a callable, got {hook!r}")
    env["env_vars"] = env_vars
    return env
