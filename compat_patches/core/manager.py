"""The patch manager: gates, applies, defers, reverts and reports a set of patch records.

It knows no library: everything library-specific lives in the records.
"""

import importlib
import logging
import os
import sys
import threading
from contextlib import contextmanager

from . import report as st
from .errors import PatchDriftError, PatchFailedError, UnknownPatchError
from .install import TargetProblem, install, uninstall
from .report import PatchReport, Report
from .versions import in_range, installed_version, parse_version

logger = logging.getLogger("compat_patches")

ENV_DISABLE = "COMPAT_PATCHES_DISABLE"
ENV_ONLY = "COMPAT_PATCHES_ONLY"
ENV_STRICT = "COMPAT_PATCHES_STRICT"
TRUE_VALUES = frozenset({"1", "true", "yes", "on", "all", "*"})

_live_managers = []  # strong: a manager whose wrappers are installed must stay reachable


def live_managers():
    """Every PatchManager alive in this process (used by the test guard)."""
    return tuple(_live_managers)


def _env_names(environ, variable):
    raw = environ.get(variable, "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def env_strict():
    return os.environ.get(ENV_STRICT, "").strip().lower() in TRUE_VALUES


class _State:
    """Mutable per-patch state; guarded by the manager's lock."""

    def __init__(self, patch):
        self.patch = patch
        self.holds = 0            # active scoped holds (patched()) ...
        self.global_hold = False  # ... plus the one apply_all() hold
        self.installed = {}       # Target -> (module, handle)
        self.hooked = set()       # module names with a post-import hook registered
        self.last = None          # PatchReport of the last apply decision

    @property
    def active(self):
        return self.global_hold or self.holds > 0


class PatchManager:
    def __init__(self, patches, *, version_of=installed_version):
        self._states = {}
        for patch in patches:
            if patch.name in self._states:
                raise ValueError(f"two patch records are named {patch.name!r}")
            self._states[patch.name] = _State(patch)
        self._version_of = version_of
        self._lock = threading.RLock()
        _live_managers.append(self)

    # ----- selection ---------------------------------------------------------------------
    @property
    def names(self):
        return tuple(self._states)

    def get(self, name):
        self._validate([name], "argument")
        return self._states[name].patch

    def _validate(self, names, source):
        unknown = [name for name in names if name not in self._states]
        if unknown:
            raise UnknownPatchError(unknown, self.names, source)

    def check_names(self, names, source="argument"):
        """`names` as a tuple; unknown ones raise UnknownPatchError listing the known names."""
        names = tuple(names)
        self._validate(names, source)
        return names

    def check_environment(self, environ=None):
        """Validate COMPAT_PATCHES_ONLY / _DISABLE of `environ` (default os.environ).

        Returns (why everything is off or None, disabled names, only names).
        """
        environ = os.environ if environ is None else environ
        disable = _env_names(environ, ENV_DISABLE)
        if any(value.lower() in TRUE_VALUES for value in disable):
            return f"{ENV_DISABLE}={environ[ENV_DISABLE]}", (), ()
        only = _env_names(environ, ENV_ONLY)
        return None, self.check_names(disable, ENV_DISABLE), self.check_names(only, ENV_ONLY)

    def _env_block(self, name):
        """Why the environment switches this patch off, or None."""
        all_off, disable, only = self.check_environment()
        if all_off:
            return all_off
        if name in disable:
            return f"listed in {ENV_DISABLE}"
        if only and name not in only:
            return f"not listed in {ENV_ONLY}={os.environ[ENV_ONLY]}"
        return None

    # ----- the version gate --------------------------------------------------------------
    def _gate(self, patch):
        """(status or None, reason, versions, targets): None status means in range."""
        versions = {dist: self._version_of(dist) for dist in patch.affected}
        if not patch.targets:
            return st.DISABLED, "not implemented in this release of compat_patches", versions, ()
        for dist, version in versions.items():
            if version is None:
                return st.NOT_INSTALLED, f"{dist} is not installed", versions, ()
        for dist, version in versions.items():
            parsed = parse_version(version)
            if parsed is None:
                return (st.DRIFTED, f"installed {dist} version {version!r} is not PEP 440; "
                        "cannot tell whether the bug exists", versions, ())
            if not in_range(parsed, patch.affected[dist]):
                fixed = f" (fixed upstream in {patch.fixed_in})" if patch.fixed_in else ""
                return (st.NOT_NEEDED, f"{dist} {version} is outside the affected range "
                        f"{patch.affected[dist]}{fixed}", versions, ())
        primary = parse_version(versions[patch.primary])
        targets = tuple(t for t in patch.targets if t.versions is None or in_range(primary, t.versions))
        if not targets:
            return (st.DRIFTED, f"no target of this patch covers {patch.primary} "
                    f"{versions[patch.primary]}", versions, ())
        in_range_text = ", ".join(f"{d} {v}" for d, v in versions.items())
        return None, f"{in_range_text} has the bug", versions, targets

    def _entry(self, state, status, reason, versions, targets=()):
        patch = state.patch
        return PatchReport(
            name=patch.name, status=status, reason=reason, versions=versions,
            affected=dict(patch.affected), summary=patch.summary, upstream=patch.upstream,
            fixed_in=patch.fixed_in, targets=tuple(t.path for t in targets),
        )

    # ----- installing ---------------------------------------------------------------------
    def _install_ready(self, state, targets):
        """Install every target whose module is imported; returns problems as TargetProblem."""
        for target in targets:
            if target in state.installed:
                continue
            module = sys.modules.get(target.module)
            if module is None:
                continue
            handle = install(module, target)
            state.installed[target] = (module, handle)

    def _register_hooks(self, state, targets):
        for target in targets:
            if target.module in sys.modules or target.module in state.hooked:
                continue
            state.hooked.add(target.module)
            import wrapt  # lazy: wrapt 2.x imports asyncio, and most processes need no wrapper

            # A hook cannot be unregistered: it re-checks at fire time whether it is still wanted.
            wrapt.register_post_import_hook(self._hook_for(state.patch.name), target.module)

    def _hook_for(self, name):
        def on_import(module):
            try:
                self._on_import(name, module.__name__)
            except (PatchDriftError, PatchFailedError):
                raise  # strict mode asked for it
            except Exception:  # never break the user's import
                logger.exception("%s: post-import hook for %s failed", name, module.__name__)
        return on_import

    def _on_import(self, name, module_name):
        with self._lock:
            state = self._states[name]
            state.hooked.discard(module_name)  # wrapt drops a hook once it has fired
            if not state.active:
                return  # reverted before the import: the hook is disarmed
            self._activate(state, strict=env_strict(), quiet=False)

    def _activate(self, state, *, strict, quiet=False):
        """Bring an active patch's installation up to date; record and log the decision."""
        status, reason, versions, targets = self._gate(state.patch)
        if status is None:
            try:
                self._install_ready(state, targets)
            except TargetProblem as problem:  # drifted, failed, or the fix is already there
                self._remove_all(state)  # all or nothing: never half a fix
                status, reason = problem.status, problem.reason
            else:
                pending = sorted({t.module for t in targets if t not in state.installed})
                if pending:
                    self._register_hooks(state, targets)
                    status = st.DEFERRED
                    reason = f"{reason}; waiting for import of {', '.join(pending)}"
                else:
                    status = st.APPLIED
                    if state.patch.fixed_in:
                        reason = f"{reason}; fixed upstream in {state.patch.fixed_in}: upgrade and drop it"
        entry = self._entry(state, status, reason, versions, targets)
        changed = state.last is None or (state.last.status, state.last.reason) != (status, reason)
        state.last = entry
        if changed and not quiet:
            level = logging.WARNING if status in (st.DRIFTED, st.FAILED) else logging.INFO
            logger.log(level, "%s: %s (%s)", entry.name, status, reason)
        if strict and status == st.DRIFTED:
            raise PatchDriftError(f"{entry.name}: {reason}")
        if strict and status == st.FAILED:
            raise PatchFailedError(f"{entry.name}: {reason}")
        return entry

    def _remove_all(self, state):
        problems = []
        for target, (module, handle) in list(state.installed.items()):
            try:
                uninstall(module, target, handle)
            except Exception as exc:  # e.g. a foreign non-wrapt wrapper sits on top of ours
                problems.append(f"{target.path}: {type(exc).__name__}: {exc}")
                continue
            del state.installed[target]
        return problems

    # ----- holds: apply_all is one global hold, each patched() scope one more ------------
    def _acquire(self, names, *, scoped, strict, source):
        """Take a hold on each name; returns (report entries, names actually held)."""
        entries, held = {}, []
        try:
            for name in names:
                state = self._states[name]
                blocked = self._env_block(name)
                if blocked:
                    entries[name] = self._decided(state, st.DISABLED, blocked)
                    continue
                if scoped:
                    state.holds += 1
                elif state.global_hold:
                    entries[name] = self._snapshot(state)
                    continue
                else:
                    state.global_hold = True
                held.append(name)
                entry = self._activate(state, strict=strict)
                entries[name] = entry
                if not entry.active:  # nothing installed: the hold protects nothing
                    self._drop(state, scoped)
                    held.remove(name)
        except BaseException:
            self._release(held, scoped=scoped)
            raise
        return entries, held

    def _drop(self, state, scoped):
        if scoped:
            state.holds -= 1
        else:
            state.global_hold = False

    def _release(self, names, *, scoped):
        problems = []
        for name in names:
            state = self._states[name]
            self._drop(state, scoped)
            if not state.active:
                problems += self._deactivate(state)
        return problems

    def _deactivate(self, state):
        problems = self._remove_all(state)
        status, reason, versions, targets = self._gate(state.patch)
        if problems:
            reason = "could not revert exactly: " + "; ".join(problems)
            state.last = self._entry(state, st.FAILED, reason, versions, targets)
            logger.error("%s: %s", state.patch.name, reason)
        else:
            state.last = None
            logger.info("%s: reverted", state.patch.name)
        return problems

    def _decided(self, state, status, reason):
        _, _, versions, _ = self._gate(state.patch)
        entry = self._entry(state, status, reason, versions)
        logger.info("%s: %s (%s)", entry.name, status, reason)
        return entry

    # ----- public operations --------------------------------------------------------------
    def apply_all(self, *, only=None, exclude=None, strict=None):
        strict = env_strict() if strict is None else strict
        only = list(only) if only is not None else None
        exclude = list(exclude or ())
        self._validate((only or []) + exclude, "argument")
        with self._lock:
            chosen = [n for n in self.names if (only is None or n in only) and n not in exclude]
            entries, _ = self._acquire(chosen, scoped=False, strict=strict, source="apply_all")
            return self._report(entries)

    def revert_all(self):
        with self._lock:
            problems = []
            for state in self._states.values():
                if state.installed or state.active:
                    state.holds, state.global_hold = 0, False
                    problems += self._deactivate(state)
            if problems and env_strict():
                raise PatchFailedError("; ".join(problems))

    @contextmanager
    def patched(self, *names, strict=None):
        strict = env_strict() if strict is None else strict
        self._validate(names, "argument")
        with self._lock:
            entries, held = self._acquire(names or self.names, scoped=True, strict=strict,
                                          source="patched")
            report = self._report(entries)
        try:
            yield report
        finally:
            with self._lock:
                self._release(held, scoped=True)

    def report(self):
        with self._lock:
            return self._report({})

    def _snapshot(self, state):
        if state.active and state.last is not None:
            return state.last
        blocked = self._env_block(state.patch.name)
        findings = (st.FAILED, st.DRIFTED, st.NOT_NEEDED)
        if not blocked and state.last is not None and state.last.status in findings:
            return state.last  # what the last attempt found stays true until the next attempt
        if blocked:
            _, _, versions, _ = self._gate(state.patch)
            return self._entry(state, st.DISABLED, blocked, versions)
        status, reason, versions, targets = self._gate(state.patch)
        if status is None:
            status, reason = st.PENDING, f"{reason}; not applied in this process"
        return self._entry(state, status, reason, versions, targets)

    def _report(self, entries):
        return Report(entries.get(name) or self._snapshot(self._states[name]) for name in self.names)

    def targets_for(self, name):
        """The Target records the version gate selects for `name` here; () when out of range."""
        self._validate([name], "argument")
        status, _, _, targets = self._gate(self._states[name].patch)
        return targets if status is None else ()

    def active_names(self):
        with self._lock:
            return tuple(n for n, s in self._states.items() if s.active or s.installed)

    def import_targets(self):
        """Import the target modules of every in-range patch (the report command's check mode).

        Returns {module name: error text} for modules that failed to import here.
        """
        errors = {}
        for state in self._states.values():
            status, _, _, targets = self._gate(state.patch)
            if status is not None:
                continue
            for target in targets:
                if target.module in sys.modules or target.module in errors:
                    continue
                try:
                    importlib.import_module(target.module)
                except Exception as exc:  # e.g. vllm_ascend without torch_npu
                    errors[target.module] = f"{type(exc).__name__}: {exc}"
        return errors
