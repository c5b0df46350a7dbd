"""Shared test machinery: the `requires` marker and a guard against patches left behind."""

import sys

import pytest

import compat_patches
from compat_patches.core import live_managers
from compat_patches.core.versions import in_range, installed_version

pytest_plugins = ["pytester"]


def requirement_problem(ranges):
    """Why `ranges` ({dist: specifier}) is not met here, or None."""
    for dist, spec in ranges.items():
        dist = dist.replace("_", "-")
        version = installed_version(dist)
        if version is None:
            return f"needs {dist}{spec}: not installed"
        if not in_range(version, spec):
            return f"needs {dist}{spec}: {version} is installed"
    return None


def pytest_addoption(parser):
    parser.addoption(
        "--contract-libraries", default=None, metavar="LIB[,LIB]",
        help="run the generated contract tests (tests/test_contract.py) only for records that fix these "
             "libraries (the first library of each record's `affected`); the matrix passes it where the "
             "other records' contracts already run in their own library's sets. Default: every record.")
    parser.addoption(
        "--contract-records", default=None, metavar="NAME[,NAME]|none",
        help="run the generated contract tests only for these records (`none`: for no record); the quick "
             "matrix runs each record's contract in one set. Default: every record.")


def _contract_name(item):
    spec = getattr(item, "callspec", None)
    in_contract = item.nodeid.split("::")[0].endswith("tests/test_contract.py")
    return spec.params.get("name") if spec is not None and in_contract else None


def _deselect(config, items, drop):
    if drop:
        config.hook.pytest_deselected(items=drop)
        dropped = {id(item) for item in drop}
        items[:] = [item for item in items if id(item) not in dropped]


def pytest_collection_modifyitems(config, items):
    manager = compat_patches._default_manager()
    option = config.getoption("--contract-libraries")
    if option is not None:
        libraries = {name.strip() for name in option.split(",")}
        library = {name: next(iter(manager.get(name).affected)) for name in compat_patches.patch_names()}
        known = set(library.values())
        if not libraries or not libraries <= known:
            raise pytest.UsageError(f"--contract-libraries={option!r}: expected a comma-separated subset of "
                                    f"{sorted(known)}")
        _deselect(config, items, [item for item in items
                                  if _contract_name(item) in library and library[_contract_name(item)] not in libraries])
    option = config.getoption("--contract-records")
    if option is not None:
        records = set() if option.strip() == "none" else {name.strip() for name in option.split(",")}
        unknown = records - set(compat_patches.patch_names())
        if not records and option.strip() != "none" or unknown:
            raise pytest.UsageError(f"--contract-records={option!r}: unknown {sorted(unknown)}; expected `none` or "
                                    f"a comma-separated subset of {compat_patches.patch_names()}")
        _deselect(config, items, [item for item in items if getattr(item, "originalname", None) == "test_contract"
                                  and _contract_name(item) not in records])


def pytest_runtest_setup(item):
    for marker in item.iter_markers("requires"):
        problem = requirement_problem(marker.kwargs)
        if problem:
            pytest.skip(problem)


def _statuses():
    return {entry.name: entry.status for entry in compat_patches.report()}


def _wrappers_left():
    """Targets of registered patches still carrying a wrapper of ours while nothing is active."""
    import wrapt

    left = []
    for manager in live_managers():
        if manager.active_names():
            continue
        for name in manager.names:
            for target in manager.get(name).targets:
                module = sys.modules.get(target.module)
                try:
                    current = wrapt.resolve_path(module, target.attribute)[2]
                except Exception:  # not imported, or not there in this release
                    continue
                if any(getattr(entry, "_self_wrapper", None) is target.wrapper
                       for entry in wrapt.wrapper_chain(current)):
                    left.append(target.path)
    return left


@pytest.fixture(autouse=True)
def _no_patch_left_applied():
    """Fails a test that leaves a patch applied, a wrapper of ours on a target, or the default
    manager's report changed (a finding such as `drifted` would otherwise mislead later tests)."""
    before = _statuses()
    yield
    problems = []
    leaked = sorted({n for m in live_managers() for n in m.active_names()})
    if leaked:
        for manager in live_managers():
            manager.revert_all()
        problems.append(f"test left patches applied: {leaked}")
    left = _wrappers_left()
    if left:
        problems.append(f"test left wrappers of ours on: {left}")
    after = _statuses()
    changed = {name: f"{before[name]} -> {after[name]}" for name in after if after[name] != before[name]}
    if changed:
        problems.append(f"test changed the default manager's report: {changed} (re-apply and "
                        "revert to clear a finding)")
    if problems:
        pytest.fail("; ".join(problems))
