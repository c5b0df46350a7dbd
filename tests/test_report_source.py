"""The report command's default check, read from the installed source (core/source_check.py).

Each case is a small fake library written for the purpose and a fake record; the source check must
import nothing and give the status ``--deep`` gives (import, apply, revert) for the same record, or
say what it could not check.
"""

import importlib
import sys
import textwrap
import uuid

import pytest

from compat_patches import __main__ as command
from compat_patches.core import Patch, Target
from compat_patches.core.source_check import SourceIndex, check_target, run_fingerprint

from .core.fakes import manager

CORE = '''
import functools


def wraps_it(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)
    return wrapper


def hides_it(function):
    def wrapper(self, *args, **kwargs):
        return function(self, *args, **kwargs)
    return wrapper


def describes_it(function):
    function.__doc__ = "described"
    return function


def adds_things(cls):
    cls.added = lambda self: None
    return cls


class Base:
    attribute_map = {"num_experts": "num_local_experts"}

    def method(self, x: "Undefined" = UNDEFINED_DEFAULT if False else 1, *, scale=1):
        return ("original", x * scale)

    @staticmethod
    def static(a, b):
        return a + b

    @classmethod
    def build(cls, value):
        return cls()

    class Inner:
        def deep(self, y):
            return y
'''

MODELS = '''
from .core import Base, adds_things, describes_it, hides_it, wraps_it
from .impl import helper as exported


class Model(Base):
    def forward(self, input_ids, attention_mask=None):
        """docstring"""
        return "FORWARD-BODY"

    @wraps_it
    def wrapped_forward(self, input_ids):
        return input_ids

    @hides_it
    def hidden_forward(self, input_ids):
        return input_ids

    @describes_it
    def described_forward(self, input_ids):
        return input_ids


@adds_things
class Decorated(Base):
    pass
'''

COMPUTED = '''
from .core import Base


def make_base():
    return Base


class Unknowable(make_base()):
    pass
'''

IMPL = '''
def helper(a, b):
    return a * b
'''

STAR = '''
from .core import *


class FromStar(Base):
    pass
'''


@pytest.fixture
def lib(tmp_path, monkeypatch):
    name = f"fakesrc_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, source in (("core", CORE), ("models", MODELS), ("impl", IMPL), ("star", STAR),
                           ("computed", COMPUTED)):
        (package / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name
    _forget(name)


def record(path, params=None, check=None, fixed=None, name="fake-fix"):
    return Patch(name=name, summary="fake", upstream="https://example.invalid/fix",
                 affected={"fakelib": ">=1.0rc0,<2"},
                 targets=(Target(path, lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs),
                                 params=params, check=check, fixed=fixed),))


def both(lib, *patches):
    """(source findings, deep findings) of a fake manager: the source check first, nothing imported."""
    m = manager(*patches)
    source = command.source_findings(m)
    assert not [mod for mod in sys.modules if mod.startswith(lib)], "the source check imported the library"
    deep, _ = command._deep(m)
    _forget(lib)
    return source, deep


def _forget(lib):
    for module in [m for m in sys.modules if m == lib or m.startswith(lib + ".")]:
        del sys.modules[module]


def assert_same(lib, patch, status, *, unchecked=False):
    source, deep = both(lib, patch)
    assert deep[0].entry.status == status, deep[0].entry.reason
    assert source[0].entry.status == status, (source[0].entry.reason, source[0].unchecked)
    assert bool(source[0].unchecked) is unchecked, source[0].unchecked
    return source[0], deep[0]


def reads_source(needle, reason):
    def fingerprint(original):
        import inspect

        return reason if needle in inspect.getsource(original) else None
    return fingerprint


# ----- agreeing with --deep ---------------------------------------------------------------------------

def test_a_method_that_matches(lib):
    found, _ = assert_same(lib, record(f"{lib}.core:Base.method", params=("self", "x", "scale")), "applied")
    assert found.check == "source"


def test_a_changed_signature_is_drift(lib):
    found, deep = assert_same(lib, record(f"{lib}.core:Base.method", params=("self", "x")), "drifted")
    assert "signature changed" in found.entry.reason and "signature changed" in deep.entry.reason


def test_a_missing_attribute_is_drift(lib):
    found, _ = assert_same(lib, record(f"{lib}.models:Model.nothing_here"), "drifted")
    assert "is missing" in found.entry.reason


def test_fixed_and_check_fingerprints_read_the_source(lib):
    assert_same(lib, record(f"{lib}.models:Model.forward", fixed=reads_source("FORWARD-BODY", "has the fix")),
                "not-needed")
    assert_same(lib, record(f"{lib}.models:Model.forward", check=reads_source("FORWARD-BODY", "changed")),
                "drifted")
    assert_same(lib, record(f"{lib}.models:Model.forward", check=reads_source("not in there", "changed")),
                "applied")


def test_inherited_static_class_and_nested_attributes(lib):
    assert_same(lib, record(f"{lib}.models:Model.method", params=("self", "x", "scale")), "applied")
    assert_same(lib, record(f"{lib}.models:Model.static", params=("a", "b")), "applied")
    assert_same(lib, record(f"{lib}.models:Model.build", params=("cls", "value")), "applied")
    assert_same(lib, record(f"{lib}.core:Base.Inner.deep", params=("self", "y")), "applied")
    assert_same(lib, record(f"{lib}.models:exported", params=("a", "b")), "applied")  # a re-export


def test_decorators(lib):
    # functools.wraps: the signature is the inner one and the object carries __wrapped__, as live
    carries = lambda original: "wrapped" if hasattr(original, "__wrapped__") else None  # noqa: E731
    assert_same(lib, record(f"{lib}.models:Model.wrapped_forward", params=("self", "input_ids"),
                            check=carries), "drifted")
    assert_same(lib, record(f"{lib}.models:Model.described_forward", params=("self", "input_ids"),
                            check=carries), "applied")
    # a wrapper without functools.wraps hides the signature: not checked from source (live: its own)
    assert_same(lib, record(f"{lib}.models:Model.hidden_forward", params=("self", "args", "kwargs")),
                "applied", unchecked=True)


def test_what_the_source_cannot_say_is_not_checked(lib):
    # a class decorator that sets attributes, a base computed at run time, a star import
    assert_same(lib, record(f"{lib}.models:Decorated.added"), "applied", unchecked=True)
    m = manager(record(f"{lib}.computed:Unknowable.method"), record(f"{lib}.star:FromStar.method", name="fake-two"))
    findings = command.source_findings(m)
    assert [f.entry.status for f in findings] == ["applied", "applied"]
    assert all(f.unchecked and f.check == "source-partly" for f in findings)


def test_a_fingerprint_that_asks_the_live_library_is_not_run_from_source(lib):
    def live(original):
        module = sys.modules.get(original.__module__)
        return None if module is not None else "module is not imported"

    def raises(original):
        raise RuntimeError("needs a live object")

    found, _ = assert_same(lib, record(f"{lib}.core:Base.method", check=live), "applied", unchecked=True)
    assert "not run from source: it reads sys.modules" in found.unchecked[0]
    # raising on the stand-in may be the stand-in's limit: not a finding (--deep says `drifted`)
    source, deep = both(lib, record(f"{lib}.core:Base.method", check=raises))
    assert deep[0].entry.status == "drifted"
    assert source[0].entry.status == "applied" and "it raised RuntimeError" in source[0].unchecked[0]


def test_a_module_no_file_defines_waits_for_its_import(lib):
    assert_same(lib, record(f"{lib}.absent:Thing.method"), "deferred")


def test_nothing_is_imported_and_the_stand_in_answers_like_the_live_function(lib):
    import inspect

    index = SourceIndex()
    target = Target(f"{lib}.core:Base.method", lambda *a: None)
    seen = {}

    def fingerprint(original):
        seen.update(source=inspect.getsource(original), qualname=original.__qualname__,
                    module=original.__module__, names=original.__code__.co_names,
                    parameters=tuple(inspect.signature(original).parameters))
        return None

    assert run_fingerprint(index, lambda o: None, None)[0] == "done"
    result = check_target(index, Target(target.path, target.wrapper, check=fingerprint))
    assert result.status is None and not result.unchecked
    live = importlib.import_module(f"{lib}.core").Base.method
    assert seen == dict(source=inspect.getsource(live), qualname=live.__qualname__, module=live.__module__,
                        names=live.__code__.co_names, parameters=tuple(inspect.signature(live).parameters))


def test_an_active_profiler_is_left_alone(lib):
    calls = []

    def profiler(frame, event, arg):
        calls.append(event)

    sys.setprofile(profiler)
    try:
        outcome, why = run_fingerprint(SourceIndex(), lambda original: None, None)
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    assert outcome == "unchecked" and "profiler" in why


def test_a_fingerprint_can_ask_for_another_object_live_or_from_source(lib):
    """source_object / defines: what a record's fingerprint uses instead of sys.modules, so that it
    runs from source too (the record changes proposed with issue 28)."""
    from compat_patches.core.source_check import defines, source_object

    def aliased(original):
        mapping = source_object(f"{lib}.core:Base.attribute_map")
        return "already aliased" if mapping.get("num_experts") == "num_local_experts" else None

    def sibling_reads(original):
        import inspect

        if "FORWARD-BODY" in inspect.getsource(source_object(f"{lib}.models:Model.forward")):
            return None
        return "the sibling changed"

    def exists(original):
        if not defines(f"{lib}.core:Base.Inner.deep") or defines(f"{lib}.core:Base.nothing"):
            return "wrong answer"
        return None

    assert_same(lib, record(f"{lib}.core:Base.method", fixed=aliased), "not-needed")
    assert_same(lib, record(f"{lib}.core:Base.method", check=sibling_reads), "applied")
    assert_same(lib, record(f"{lib}.core:Base.method", check=exists), "applied")
