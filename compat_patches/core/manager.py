"""The patch manager: gates, applies, defers, reverts and reports a set of patch records.

It knows no library: everything library-specific lives in the records. Its imports are the ones a
bare interpreter already has (``os``, ``sys``, ``_thread``): every process of a patched job pays
for importing it.

Holds: ``apply_all()`` is one hold on each patch, every ``patched()`` scope one more; a patch is
installed while any hold is on it. ``revert_all()`` reverts every patch now, cancelling the holds
of open scopes too: leaving such a scope afterwards changes nothing, and a scope entered after the
revert holds its patch as usual.
"""

import _thread
import os
import sys

from . import report as st
from .errors import (InvalidSettingError, PatchDriftError, PatchFailedError, PatchUnverifiedError,
                     UnknownPatchError)
from .install import TargetProblem, install, uninstall
from .log import ERROR, INFO, WARNING, log
from .report import PatchReport, Report
from .versions import in_range, installed_version, parse_version

ENV_DISABLE = "COMPAT_PATCHES_DISABLE"
ENV_ONLY = "COMPAT_PATCHES_ONLY"
ENV_STRICT = "COMPAT_PATCHES_STRICT"
ENV_REQUIRE_VERIFIED = "COMPAT_PATCHES_REQUIRE_VERIFIED"
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
FALSE_VALUES = frozenset({"0", "false", "no", "off"})
ALL_VALUES = TRUE_VALUES | {"all", "*"}  # COMPAT_PATCHES_DISABLE: every patch

_live_managers = []  # strong: a manager whose wrappers are installed must stay reachable


def live_managers():
    """Every PatchManager alive in this process (used by the test guard)."""
    return tuple(_live_managers)


def parse_flag(raw, variable):
    """A boolean setting: 1/true/yes/on, 0/false/no/off or empty; anything else raises."""
    value = (raw or "").strip().lower()
    if value in TRUE_VALUES:
        return True
    if not value or value in FALSE_VALUES:
        return False
    raise InvalidSettingError(
        f"{variable}={raw!r} is not a boolean: use 1, true, yes or on to turn it on, "
        "0, false, no, off or unset to turn it off"
    )


def env_strict(environ=None):
    environ = os.environ if environ is None else environ
    return parse_flag(environ.get(ENV_STRICT), ENV_STRICT)


def env_require_verified(environ=None):
    environ = os.environ if environ is None else environ
    return parse_flag(environ.get(ENV_REQUIRE_VERIFIED), ENV_REQUIRE_VERIFIED)


def unverified(patch, versions):
    """{distribution: verified-through release} for each installed release newer than the one the
    record declares it was verified on (local tags ignored)."""
    found = {}
    for dist, verified in patch.verified_through.items():
        installed = parse_version(versions.get(dist) or "")
        if installed is not None and parse_version(installed.public) > parse_version(verified):
            found[dist] = verified
    return found


def split_names(raw, source):
    """The names of a comma-separated list (empty items ignored); a list naming nothing raises."""
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        raise InvalidSettingError(
            f"{source}={raw!r} names no patch; expected patch names separated by commas "
            "(unset it to mean every patch)"
        )
    return items


def names_argument(value, what):
    """`only=` / `exclude=` as a tuple of names: a string is one name; None stays None."""
    if value is None or isinstance(value, str):
        return value if value is None else (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise TypeError(f"{what} must be a patch name or an iterable of names, "
                        f"got {type(value).__name__}") from None
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what} must hold patch names (str), got {name!r}")
    return names


class _State:
    """Mutable per-patch state; guarded by the manager's lock."""

    def __init__(self, patch):
        self.patch = patch
        self.holds = 0            # active scoped holds (patched()) ...
        self.global_hold = False  # ... plus the one apply_all() hold
        self.epoch = 0            # bumped by revert_all(): older scopes hold nothing any more
        self.installed = {}       # Target -> (module, handle, original)
        self.hooked = set()       # module names with a post-import hook or waiter registered
        self.last = None          # PatchReport of the last apply decision
        self.validated = False

    @property
    def active(self):
        return self.global_hold or self.holds > 0


def _initializing(module):
    """Whether `module` is in sys.modules but still executing (imported by some thread now)."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


class _Scope:
    """What patched() returns: applies on enter, releases its own holds on exit."""

    def __init__(self, manager, names, strict):
        self._manager, self._names, self._strict = manager, names, strict
        self._held = None

    def __enter__(self):
        if self._held is not None:
            raise RuntimeError("a patched() scope cannot be entered twice; call patched() again")
        report, self._held = self._manager._enter_scope(self._names, self._strict)
        return report

    def __exit__(self, *exc_info):
        self._manager._exit_scope(self._held)
        return False


class PatchManager:
    def __init__(self, patches, *, version_of=installed_version):
        self._states = {}
        for patch in patches:
            if patch.name in self._states:
                raise ValueError(f"two patch records are named {patch.name!r}")
            self._states[patch.name] = _State(patch)
        self._version_of = version_of
        self._lock = _thread.RLock()
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
        """Validate COMPAT_PATCHES_ONLY / _DISABLE / _STRICT of `environ` (default os.environ).

        Returns (why everything is off or None, disabled names, only names); raises
        UnknownPatchError or InvalidSettingError (both CompatPatchesError) on a bad value.
        """
        environ = os.environ if environ is None else environ
        env_strict(environ)
        env_require_verified(environ)
        disable_raw = environ.get(ENV_DISABLE, "")
        only_raw = environ.get(ENV_ONLY, "")
        only = self.check_names(split_names(only_raw, ENV_ONLY), ENV_ONLY) if only_raw.strip() else ()
        if not disable_raw.strip() or disable_raw.strip().lower() in FALSE_VALUES:
            return None, (), only
        if disable_raw.strip().lower() in ALL_VALUES:
            return f"{ENV_DISABLE}={disable_raw}", (), only
        disable = split_names(disable_raw, ENV_DISABLE)
        switches = [name for name in disable if name.lower() in ALL_VALUES | FALSE_VALUES]
        if switches:
            raise InvalidSettingError(
                f"{ENV_DISABLE}={disable_raw!r} mixes {switches[0]!r} (which switches every "
                "patch on or off) with patch names; use either alone"
            )
        return None, self.check_names(disable, ENV_DISABLE), only

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
    def _gate(self, state):
        """(status or None, reason, versions, targets): None status means in range."""
        patch = state.patch
        versions = {dist: self._version_of(dist) for dist in patch.affected}
        if not patch.targets:
            return st.DISABLED, "not implemented in this release of compat_patches", versions, ()
        for dist, version in versions.items():
            if version is None:
                return st.NOT_INSTALLED, f"{dist} is not installed", versions, ()
        if not state.validated:
            state.patch.validate()
            state.validated = True
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
        newer = unverified(patch, versions) if status in (st.APPLIED, st.DEFERRED, st.PENDING) else {}
        if newer:
            reason += "; unverified on " + ", ".join(
                f"{dist} {versions[dist]}: verified through {verified}" for dist, verified in newer.items())
        return PatchReport(
            name=patch.name, status=status, reason=reason, versions=versions,
            affected=patch.affected, summary=patch.summary, upstream=patch.upstream,
            fixed_in=patch.fixed_in, targets=tuple(t.path for t in targets), unverified=newer,
        )

    # ----- installing ---------------------------------------------------------------------
    def _install_ready(self, state, targets, finished=None):
        """Install every target whose module is fully imported (or is `finished`, the module
        whose post-import hook is running); raises TargetProblem."""
        for target in targets:
            if target in state.installed:
                continue
            module = sys.modules.get(target.module)
            if module is None or (_initializing(module) and target.module != finished):
                continue
            handle, original = install(module, target)
            state.installed[target] = (module, handle, original)

    def _register_hooks(self, state, targets):
        for target in targets:
            if target in state.installed or target.module in state.hooked:
                continue
            state.hooked.add(target.module)
            if target.module in sys.modules:  # another thread is importing it right now
                _thread.start_new_thread(self._wait_for_import, (state.patch.name, target.module))
                continue
            import wrapt  # lazy: wrapt 2.x imports asyncio, and most processes need no wrapper

            # A hook cannot be unregistered: it re-checks at fire time whether it is still wanted.
            wrapt.register_post_import_hook(self._hook_for(state.patch.name), target.module)

    def _hook_for(self, name):
        def on_import(module):
            try:
                self._on_import(name, module.__name__, finished=module.__name__)
            except (PatchDriftError, PatchFailedError):
                raise  # strict mode asked for it
            except Exception:  # never break the user's import
                log(ERROR, "%s: post-import hook for %s failed", name, module.__name__,
                    exc_info=True)
        return on_import

    def _wait_for_import(self, name, module_name):
        """Runs in its own thread: the import lock makes __import__ wait for the importing
        thread; then install, or hook the next import if that one failed."""
        try:
            __import__(module_name)
        except BaseException:  # the importer sees its own error; we only wait for the outcome
            pass
        try:
            self._on_import(name, module_name, strict=False)
        except Exception:
            log(ERROR, "%s: installing after the import of %s failed", name, module_name,
                exc_info=True)

    def _on_import(self, name, module_name, finished=None, strict=None):
        with self._lock:
            state = self._states[name]
            state.hooked.discard(module_name)  # wrapt drops a hook once it has fired
            if not state.active:
                return  # reverted before the import: the hook is disarmed
            self._activate(state, strict=env_strict() if strict is None else strict,
                           finished=finished)

    def _activate(self, state, *, strict, finished=None):
        """Bring an active patch's installation up to date; record and log the decision."""
        status, reason, versions, targets = self._gate(state)
        newer = unverified(state.patch, versions) if status is None else {}
        if newer and env_require_verified():
            self._remove_all(state)
            status = st.DISABLED
            reason = (f"{reason}, but " + ", ".join(f"{d} {versions[d]} is newer than the {v} it was verified "
                                                    f"through" for d, v in newer.items())
                      + f" and {ENV_REQUIRE_VERIFIED} is on")
        elif status is None:
            try:
                self._install_ready(state, targets, finished)
            except TargetProblem as problem:  # drifted, failed, or the fix is already there
                self._remove_all(state)  # all or nothing: never half a fix
                status, reason = problem.status, problem.reason
            else:
                pending = sorted({t.module for t in targets if t not in state.installed})
                if pending:
                    self._register_hooks(state, targets)
                    # a module not imported yet runs no code: what is imported is fixed now
                    status = st.APPLIED if state.installed else st.DEFERRED
                    installed = sorted({t.module for t in state.installed})
                    done = f"; applied in {', '.join(installed)}" if installed else ""
                    reason = f"{reason}{done}; waiting for import of {', '.join(pending)}"
                else:
                    status = st.APPLIED
                    if state.patch.fixed_in:
                        reason = f"{reason}; fixed upstream in {state.patch.fixed_in}: upgrade and drop it"
        entry = self._entry(state, status, reason, versions, targets)
        changed = state.last is None or (state.last.status, state.last.reason) != (status, reason)
        state.last = entry
        if changed:
            level = WARNING if status in (st.DRIFTED, st.FAILED) else INFO
            log(level, "%s: %s (%s)", entry.name, status, reason)
        if newer and status == st.DISABLED:
            raise PatchUnverifiedError(f"{entry.name}: {reason}")
        if strict and status == st.DRIFTED:
            raise PatchDriftError(f"{entry.name}: {reason}")
        if strict and status == st.FAILED:
            raise PatchFailedError(f"{entry.name}: {reason}")
        return entry

    def _remove_all(self, state):
        """Uninstall every target; returns the problems (each also leaves the report failed)."""
        problems = []
        for target, (module, handle, original) in list(state.installed.items()):
            try:
                uninstall(module, target, handle, original)
            except TargetProblem as problem:
                problems.append(problem.reason)
                if not problem.gone:
                    continue  # still ours, under a foreign wrapper: a later revert retries
            del state.installed[target]
        return problems

    # ----- holds --------------------------------------------------------------------------
    def _acquire(self, names, *, scoped, strict):
        """Take a hold on each name; returns (report entries, holds taken as (name, epoch))."""
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
                held.append((name, state.epoch))
                entry = self._activate(state, strict=strict)
                entries[name] = entry
                if not entry.active:  # nothing installed: the hold protects nothing
                    self._drop(state, scoped)
                    held.pop()
        except BaseException:
            self._release(held, scoped=scoped)
            raise
        return entries, held

    def _drop(self, state, scoped):
        if scoped:
            state.holds -= 1
        else:
            state.global_hold = False

    def _release(self, held, *, scoped):
        problems = []
        for name, epoch in held:
            state = self._states[name]
            if epoch != state.epoch:
                continue  # revert_all() already cancelled this hold
            self._drop(state, scoped)
            if not state.active:
                problems += self._deactivate(state)
        return problems

    def _deactivate(self, state):
        removing = bool(state.installed)
        problems = self._remove_all(state)
        if problems:
            _, _, versions, targets = self._gate(state)
            reason = "could not revert exactly: " + "; ".join(problems)
            state.last = self._entry(state, st.FAILED, reason, versions, targets)
            log(ERROR, "%s: %s", state.patch.name, reason)
        elif not removing and state.last is not None and state.last.status in st.FINDINGS:
            pass  # nothing was installed: what the attempt found (a strict-mode raise) stays
        else:
            if state.last is not None:
                log(INFO, "%s: reverted", state.patch.name)
            state.last = None
        return problems

    def _decided(self, state, status, reason):
        _, _, versions, _ = self._gate(state)
        entry = self._entry(state, status, reason, versions)
        log(INFO, "%s: %s (%s)", entry.name, status, reason)
        return entry

    # ----- public operations --------------------------------------------------------------
    def apply_all(self, *, only=None, exclude=None, strict=None):
        strict = env_strict() if strict is None else strict
        only = names_argument(only, "only")
        exclude = names_argument(exclude, "exclude") or ()
        self._validate((only or ()) + exclude, "argument")
        with self._lock:
            chosen = [n for n in self.names if (only is None or n in only) and n not in exclude]
            entries, _ = self._acquire(chosen, scoped=False, strict=strict)
            return self._report(entries)

    def revert_all(self):
        """Revert every patch now, the holds of open patched() scopes included."""
        with self._lock:
            problems = []
            for state in self._states.values():
                if state.installed or state.active:
                    state.holds, state.global_hold = 0, False
                    state.epoch += 1
                    problems += self._deactivate(state)
            if problems and env_strict():
                raise PatchFailedError("; ".join(problems))

    def patched(self, *names, strict=None):
        """A context manager applying `names` (all when none), reverted on exit."""
        self._validate(names, "argument")
        return _Scope(self, names or self.names, strict)

    def _enter_scope(self, names, strict):
        strict = env_strict() if strict is None else strict
        with self._lock:
            entries, held = self._acquire(names, scoped=True, strict=strict)
            return self._report(entries), held

    def _exit_scope(self, held):
        with self._lock:
            self._release(held, scoped=True)

    def report(self):
        with self._lock:
            return self._report({})

    def _snapshot(self, state):
        if state.active and state.last is not None:
            return state.last
        blocked = self._env_block(state.patch.name)
        if not blocked and state.last is not None and state.last.status in st.FINDINGS:
            return state.last  # what the last attempt found stays true until the next attempt
        if blocked:
            _, _, versions, _ = self._gate(state)
            return self._entry(state, st.DISABLED, blocked, versions)
        status, reason, versions, targets = self._gate(state)
        if status is None:
            status, reason = st.PENDING, f"{reason}; not applied in this process"
        return self._entry(state, status, reason, versions, targets)

    def _report(self, entries):
        return Report(entries.get(name) or self._snapshot(self._states[name]) for name in self.names)

    def in_range(self, name):
        """Whether the installed versions have the bug `name` fixes (the version gate only)."""
        self._validate([name], "argument")
        return self._gate(self._states[name])[0] is None

    def targets_for(self, name):
        """The Target records the version gate selects for `name` here; () when out of range."""
        self._validate([name], "argument")
        status, _, _, targets = self._gate(self._states[name])
        return targets if status is None else ()

    def active_names(self):
        with self._lock:
            return tuple(n for n, s in self._states.items() if s.active or s.installed)

    def import_targets(self):
        """Import the target modules of every in-range patch (the report command's check mode).

        Returns {module name: error text} for modules that failed to import here.
        """
        import importlib

        errors = {}
        for state in self._states.values():
            status, _, _, targets = self._gate(state)
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
