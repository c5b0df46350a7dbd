"""pytest plugin (entry point ``pytest11: compat_patches``): compat_patches in downstream test suites.

Inert unless asked: with the default ``--compat-patches=none`` it applies nothing, prints nothing and
imports only pytest until a test uses the marker or a fixture.

- ``--compat-patches=all|none|NAME,...`` (or ini ``compat_patches = ...``): apply those patches for
  the whole session, before collection (so test modules importing the libraries are patched), and
  revert them at the end; unknown names stop pytest with a usage error listing the known names.
- ``@pytest.mark.compat_patches("name", ..., strict=None)``: those patches (all when no name)
  applied around the test (its fixtures' setup and teardown included), reverted after it. Markers
  of a class/module and of the test add up.
- fixture ``compat_patches_applied``: all patches (or the marker's) applied for the test; the value
  is the Report.
- fixture ``compat_patch``: a function ``compat_patch(*names, strict=None) -> Report`` applying the
  named patches now, reverted after the test.
- the header line (``pytest_report_header``) tells what the session applied (a table with ``-v``).

A test naming an unknown patch fails (error in setup) with the message listing the known names.
"""

import contextlib

import pytest

_NONE = ("", "none", "no", "off", "0", "false")
_ALL = ("all", "*", "1", "true", "on", "yes")
_STATE_KEY = "_compat_patches_session"


def pytest_addoption(parser):
    group = parser.getgroup("compat_patches")
    group.addoption(
        "--compat-patches", dest="compat_patches", default=None, metavar="all|none|NAME,...",
        help="apply these compat_patches for the whole session (default: none; ini compat_patches)",
    )
    parser.addini("compat_patches", "patches to apply for the whole session: all, none or names",
                  default="none")


def _session_choice(config):
    value = config.getoption("compat_patches")
    if value is None:
        value = config.getini("compat_patches") or "none"
    value = str(value).strip()
    if value.lower() in _NONE:
        return None
    if value.lower() in _ALL:
        return ()
    return tuple(name.strip() for name in value.split(",") if name.strip())


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "compat_patches(*names, strict=None): apply these compat_patches (all when no name) "
        "around this test and revert them after it",
    )
    choice = _session_choice(config)
    if choice is None:
        return
    import compat_patches
    from compat_patches.activation import activate, validate_names

    try:
        validate_names(choice, "--compat-patches")
    except compat_patches.CompatPatchesError as exc:
        raise pytest.UsageError(f"compat_patches: {exc}") from None
    activation = activate("pytest", only=choice or None)
    setattr(config, _STATE_KEY, (choice, activation))


def pytest_unconfigure(config):
    state = getattr(config, _STATE_KEY, None)
    if state is None:
        return
    delattr(config, _STATE_KEY)
    import compat_patches

    compat_patches.revert_all()


def pytest_report_header(config):
    state = getattr(config, _STATE_KEY, None)
    if state is None:
        return None
    choice, activation = state
    asked = ",".join(choice) if choice else "all"
    if activation.report is not None and config.getoption("verbose") > 0:
        return [f"compat_patches: --compat-patches={asked} (pid {activation.pid})"] + \
            activation.report.table().splitlines()
    return f"compat_patches: --compat-patches={asked}: {activation.summary()}"


def _fail_unknown(exc):
    pytest.fail(f"compat_patches: {exc}", pytrace=False)


def _marker_request(node):
    """(names, strict) from the compat_patches markers on `node`, or None when there is none."""
    markers = list(node.iter_markers("compat_patches"))
    if not markers:
        return None
    names, everything, strict = [], False, None
    for marker in markers:
        if not marker.args:
            everything = True
        for name in marker.args:
            if name not in names:
                names.append(name)
        if strict is None and "strict" in marker.kwargs:
            strict = marker.kwargs["strict"]
    return (() if everything else tuple(names)), strict


@contextlib.contextmanager
def _applied(names, strict):
    import compat_patches

    with contextlib.ExitStack() as stack:
        try:
            report = stack.enter_context(compat_patches.patched(*names, strict=strict))
        except compat_patches.CompatPatchesError as exc:
            _fail_unknown(exc)
        yield report


@pytest.fixture(autouse=True)
def _compat_patches_marker(request):
    """Applies the patches named by @pytest.mark.compat_patches; nothing without the marker."""
    wanted = _marker_request(request.node)
    if wanted is None:
        yield None
        return
    with _applied(*wanted) as report:
        yield report


@pytest.fixture
def compat_patches_applied(request):
    """The patches of the test's compat_patches marker (all without one), applied for this test."""
    wanted = _marker_request(request.node) or ((), None)
    with _applied(*wanted) as report:
        yield report


@pytest.fixture
def compat_patch():
    """``compat_patch(*names, strict=None) -> Report``: apply now, reverted after the test."""
    with contextlib.ExitStack() as stack:
        def apply(*names, strict=None):
            return stack.enter_context(_applied(names, strict))

        yield apply
