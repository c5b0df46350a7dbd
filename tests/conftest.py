"""Shared test machinery: the `requires` marker and a guard against patches left applied."""

import pytest

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


def pytest_runtest_setup(item):
    for marker in item.iter_markers("requires"):
        problem = requirement_problem(marker.kwargs)
        if problem:
            pytest.skip(problem)


@pytest.fixture(autouse=True)
def _no_patch_left_applied():
    yield
    leaked = {id(m): m.active_names() for m in live_managers() if m.active_names()}
    if leaked:
        for manager in live_managers():
            manager.revert_all()
        pytest.fail(f"test left patches applied: {sorted(set().union(*leaked.values()))}")
