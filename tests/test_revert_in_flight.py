"""What calls in flight get when ``revert_all()`` runs in another thread (docs/api.md, "Reverting
while patched code runs"):

- a call that already entered our wrapper finishes in it (its result is the patched one);
- a call that looks the attribute up after the revert gets the original;
- so one call that spans the revert can mix both: a patched outer function whose inner patched
  function is reached after the revert runs that inner one unpatched;
- a reference taken while the patch was on (an alias, a bound method kept in a variable) is our
  wrapper: it keeps running the patch until it is dropped.
"""

import threading

from compat_patches.core import Patch, Target

from .core.fakes import import_module, manager

SOURCE = '''
class Layer:
    def method(self, x):
        return ("original", x)


def forward(x):
    return Layer().method(x)
'''

TIMEOUT = 30


def _tag(tag):
    def wrapper(wrapped, instance, args, kwargs):
        return (tag, wrapped(*args, **kwargs))
    return wrapper


def _blocking(tag, entered, go):
    def wrapper(wrapped, instance, args, kwargs):
        entered.set()
        assert go.wait(TIMEOUT), "the test never released the call"
        return (tag, wrapped(*args, **kwargs))
    return wrapper


def _record(module, targets):
    return Patch(name="fake-fix", summary="fake", upstream="https://example.invalid/fix",
                 affected={"fakelib": ">=1.0rc0,<2"},
                 targets=tuple(Target(f"{module}:{attribute}", wrapper) for attribute, wrapper in targets))


def _call_in_thread(function, *args):
    box = {}

    def run():
        try:
            box["result"] = function(*args)
        except BaseException as exc:  # reported by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_a_call_inside_the_wrapper_finishes_in_it_and_new_calls_get_the_original(tmp_path, monkeypatch):
    mod = import_module(tmp_path, monkeypatch, SOURCE)
    original = vars(mod.Layer)["method"]
    entered, go = threading.Event(), threading.Event()
    m = manager(_record(mod.__name__, [("Layer.method", _blocking("patched", entered, go))]))
    m.apply_all()
    try:
        thread, box = _call_in_thread(lambda x: mod.Layer().method(x), 1)
        assert entered.wait(TIMEOUT)
        m.revert_all()  # while the other thread is inside our wrapper
        assert vars(mod.Layer)["method"] is original
        assert mod.Layer().method(2) == ("original", 2)  # a new call: the original
    finally:
        go.set()
        m.revert_all()
    thread.join(TIMEOUT)
    assert "error" not in box, box
    assert box["result"] == ("patched", ("original", 1))  # the call in flight: finished patched


def test_a_call_spanning_the_revert_mixes_patched_and_unpatched_parts(tmp_path, monkeypatch):
    mod = import_module(tmp_path, monkeypatch, SOURCE)
    entered, go = threading.Event(), threading.Event()
    m = manager(_record(mod.__name__, [("forward", _blocking("outer", entered, go)),
                                       ("Layer.method", _tag("inner"))]))
    m.apply_all()
    try:
        go.set()  # first, without a revert: both parts patched
        assert mod.forward(0) == ("outer", ("inner", ("original", 0)))
        go.clear()
        entered.clear()
        thread, box = _call_in_thread(lambda x: mod.forward(x), 1)
        assert entered.wait(TIMEOUT)
        m.revert_all()
    finally:
        go.set()
        m.revert_all()
    thread.join(TIMEOUT)
    assert "error" not in box, box
    # the outer patched function finished patched; the layer it reached after the revert did not
    assert box["result"] == ("outer", ("original", 1))


def test_a_reference_taken_while_patched_keeps_the_patch(tmp_path, monkeypatch):
    mod = import_module(tmp_path, monkeypatch, SOURCE)
    m = manager(_record(mod.__name__, [("forward", _tag("patched")), ("Layer.method", _tag("inner"))]))
    m.apply_all()
    try:
        alias = mod.forward                 # e.g. `from module import forward` while patched
        bound = mod.Layer().method          # a bound method kept in a variable
    finally:
        m.revert_all()
    assert mod.forward(1) == ("original", 1)
    assert alias(1) == ("patched", ("original", 1))  # the alias is our wrapper; what it calls is not
    assert bound(2) == ("inner", ("original", 2))
