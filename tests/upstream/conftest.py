"""Every test under tests/upstream runs twice: ``[patched]`` and ``[unpatched]``.

A test module here is a copy of an upstream fix's own tests and declares ``PATCH = "<record name>"``,
the record that backports that fix. "Affected" below means: every distribution of the record's
``affected`` is installed and inside its range (what the record's version gate says).

``[patched]``: the test runs inside ``compat_patches.patched(PATCH)`` and must pass. Where affected,
the report must say ``applied``, or ``deferred`` and then ``applied`` once the targets' modules are
imported (the fixture imports them before the test), and still ``applied`` when the test ends: the
patch really was active. Where not affected it must say ``not-needed`` (``not-installed``) and the test
runs against the library as it is.

``[unpatched]``: no patch. Tests marked ``@pytest.mark.upstream_regression`` (the ones the upstream fix
made pass) must FAIL where affected: they get ``xfail(strict=True, raises=...)``, so an unexpected pass
fails the run, and so does a failure of another kind than the module's ``UNPATCHED_RAISES`` (default
``(AssertionError,)``; a module may widen it, e.g. with TypeError). Where not affected (the fixed
releases) they must pass. Unmarked tests (the "cases around" the regression test) must pass in both
modes everywhere.

Where a module's marked tests check an upstream fix that was released before the record's bug was fixed
(the record's range goes on for what upstream left wrong), ``UPSTREAM_HAS_FIX = {"<distribution>":
"<specifier>"}`` names the releases that carry it: there the marked tests must pass in ``[unpatched]``
mode too.

Where the patch deliberately differs from the upstream fix, the module says on which releases with
``DIFFERS = {"<distribution>": "<specifier>"}``; there the marked tests fail in ``[patched]`` mode too,
strictly (``xfail(strict=True)``, the record's ``differences`` as the reason, which must not be
empty): the day the patch starts passing them, the declaration has to go.
"""

import importlib

import pytest

import compat_patches
from compat_patches.core.versions import in_range, installed_version

MODES = ("patched", "unpatched")
MARKER = "upstream_regression"
ACTIVE = ("applied", "deferred")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f"{MARKER}: a test the upstream fix made pass; under tests/upstream it must fail without the "
        "patch on a release in the record's affected range (strict xfail) and pass with it",
    )


def record_of(module):
    """The patch record named by the test module's ``PATCH``."""
    name = getattr(module, "PATCH", None)
    if not isinstance(name, str):
        raise pytest.UsageError(f"{module.__name__}: a module under tests/upstream must declare "
                                "PATCH = '<record name>'")
    return compat_patches.get_patch(name)


def not_affected_because(record):
    """Why the record's bug is not here (and the status the report must give), or (None, None)."""
    for dist, spec in record.affected.items():
        version = installed_version(dist)
        if version is None:
            return f"{dist} is not installed", "not-installed"
    for dist, spec in record.affected.items():
        version = installed_version(dist)
        if not in_range(version, spec):
            return f"{dist} {version} is outside {spec}", "not-needed"
    return None, None


def _affected_text(record):
    return ", ".join(f"{dist} {installed_version(dist)} in {spec}" for dist, spec in record.affected.items())


def _target_modules(record):
    primary = installed_version(record.primary)
    return sorted({t.module for t in record.targets if t.versions is None or in_range(primary, t.versions)})


@pytest.fixture(autouse=True, params=MODES)
def upstream_mode(request):
    """[patched] / [unpatched]: see the module docstring."""
    record = record_of(request.module)
    why_not, expected = not_affected_because(record)
    if request.param == "unpatched":
        status = compat_patches.report()[record.name].status
        assert status not in ACTIVE, f"{record.name} is {status} in [unpatched] mode"
        yield request.param
        return
    with compat_patches.patched(record.name) as report:
        entry = report[record.name]
        if why_not is not None:
            assert entry.status == expected, f"{record.name}: {why_not}, but the report says {entry}"
        else:
            assert entry.status in ACTIVE, f"{record.name}: {_affected_text(record)}, but {entry}"
            if entry.status == "deferred":
                for module in _target_modules(record):
                    importlib.import_module(module)  # the post-import hook installs the wrappers
            status = compat_patches.report()[record.name].status
            assert status == "applied", f"{record.name} still {status} after importing its targets"
        yield request.param
        if why_not is None:
            status = compat_patches.report()[record.name].status
            assert status == "applied", f"{record.name} was {status} at the end of the test"


def upstream_has_fix_here(module):
    """Whether the installed releases are inside the module's UPSTREAM_HAS_FIX (all of them)."""
    has_fix = getattr(module, "UPSTREAM_HAS_FIX", None) or {}
    return bool(has_fix) and all(in_range(installed_version(d), s) if installed_version(d) else False
                                 for d, s in has_fix.items())


def differs_here(module):
    """The installed releases that the module's DIFFERS names, as text, or None."""
    differs = getattr(module, "DIFFERS", None) or {}
    hits = []
    for dist, spec in differs.items():
        version = installed_version(dist)
        if version is None or not in_range(version, spec):
            return None
        hits.append(f"{dist} {version} in {spec}")
    return ", ".join(hits) or None


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        mode = None if callspec is None else callspec.params.get("upstream_mode")
        if mode is None or item.get_closest_marker(MARKER) is None:
            continue
        record = record_of(item.module)
        why_not, _ = not_affected_because(record)
        if mode == "patched":
            where = differs_here(item.module)
            if where is not None and why_not is None:
                if not record.differences:
                    raise pytest.UsageError(f"{item.module.__name__} declares DIFFERS but the record "
                                            f"{record.name!r} has no `differences`")
                raises = getattr(item.module, "PATCHED_RAISES", (AssertionError,))
                item.add_marker(pytest.mark.xfail(
                    strict=True, raises=raises,
                    reason=f"{record.name} differs from the upstream fix on {where}: "
                           f"{record.differences.split('. ')[0]} (the record's `differences`)",
                ))
        elif why_not is None and not upstream_has_fix_here(item.module):
            raises = getattr(item.module, "UNPATCHED_RAISES", (AssertionError,))
            item.add_marker(pytest.mark.xfail(
                strict=True, raises=raises,
                reason=f"{record.name}: {_affected_text(record)}; without the patch the upstream "
                       "fix's regression test must fail",
            ))
