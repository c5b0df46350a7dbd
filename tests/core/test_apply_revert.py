"""Apply / revert identity, idempotence, nesting, stacked wrappers, subclass targets."""

import functools

import pytest
import wrapt

from compat_patches.core import PatchManager, UnknownPatchError

from .fakes import import_module, make_patch, manager, our_wrappers


@pytest.fixture
def mod(tmp_path, monkeypatch):
    return import_module(tmp_path, monkeypatch)


def test_apply_wraps_and_revert_restores_the_same_object(mod):
    original = vars(mod.Base)["method"]
    patch = make_patch(mod.__name__)
    m = manager(patch)
    report = m.apply_all()
    assert report["fake-fix"].status == "applied"
    assert vars(mod.Base)["method"] is not original
    assert mod.Base().method(2) == ("fake-fix", ("original", 2))
    m.revert_all()
    assert vars(mod.Base)["method"] is original
    assert mod.Base().method(2) == ("original", 2)


def test_apply_all_twice_wraps_once(mod):
    patch = make_patch(mod.__name__)
    m = manager(patch)
    m.apply_all()
    m.apply_all()
    with m.patched("fake-fix"):
        assert our_wrappers(vars(mod.Base)["method"], patch.targets[0].wrapper) == 1
    assert mod.Base().method(1) == ("fake-fix", ("original", 1))
    m.revert_all()
    assert mod.Base().method(1) == ("original", 1)


def test_nested_scopes_revert_only_when_the_outermost_exits(mod):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__))
    with m.patched("fake-fix") as outer:
        assert outer["fake-fix"].status == "applied"
        with m.patched("fake-fix"):
            assert mod.Base().method(1)[0] == "fake-fix"
        assert mod.Base().method(1)[0] == "fake-fix"
    assert vars(mod.Base)["method"] is original


def test_scope_reverts_on_exception(mod):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__))
    with pytest.raises(RuntimeError, match="boom"):
        with m.patched():
            assert vars(mod.Base)["method"] is not original
            raise RuntimeError("boom")
    assert vars(mod.Base)["method"] is original


def test_scope_inside_apply_all_keeps_the_global_hold(mod):
    m = manager(make_patch(mod.__name__))
    m.apply_all()
    with m.patched("fake-fix"):
        pass
    assert mod.Base().method(1)[0] == "fake-fix"
    m.revert_all()
    assert mod.Base().method(1) == ("original", 1)


def test_revert_under_a_stacked_wrapt_wrapper_splices_ours_out(mod):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__))
    m.apply_all()

    def theirs(wrapped, instance, args, kwargs):
        return ("theirs", wrapped(*args, **kwargs))

    their_handle = wrapt.wrap_function_wrapper(mod, "Base.method", theirs)
    assert mod.Base().method(1) == ("theirs", ("fake-fix", ("original", 1)))
    m.revert_all()
    assert mod.Base().method(1) == ("theirs", ("original", 1))
    wrapt.unwrap_object(mod, "Base.method", their_handle)
    assert vars(mod.Base)["method"] is original


def test_foreign_non_wrapt_wrapper_on_top_is_reported_not_silently_broken(mod):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__))
    m.apply_all()
    ours = vars(mod.Base)["method"]

    @functools.wraps(ours)
    def foreign(*args, **kwargs):
        return ours(*args, **kwargs)

    mod.Base.method = foreign
    m.revert_all()
    entry = m.report()["fake-fix"]
    assert entry.status == "failed"
    assert "could not revert exactly" in entry.reason and "Base.method" in entry.reason
    mod.Base.method = ours  # the foreign wrapper goes away; now revert can be exact
    m.revert_all()
    assert vars(mod.Base)["method"] is original
    assert m.report()["fake-fix"].status == "pending"


def test_subclass_target_leaves_no_shadowing_copy(mod):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__, attribute="Sub.method"))
    with m.patched():
        assert mod.Sub().method(3)[0] == "fake-fix"
    assert "method" not in vars(mod.Sub)
    assert vars(mod.Base)["method"] is original


def test_module_function_target(mod):
    original = mod.function
    m = manager(make_patch(mod.__name__, attribute="function", params=("a", "b")))
    with m.patched():
        assert mod.function(1, 2) == ("fake-fix", 3)
    assert mod.function is original


def test_wrapper_keeps_the_wrapped_signature(mod):
    import inspect

    m = manager(make_patch(mod.__name__))
    before = inspect.signature(mod.Base.method)
    with m.patched():
        assert inspect.signature(mod.Base.method) == before


def test_unknown_names_raise_listing_known_names(mod):
    m = manager(make_patch(mod.__name__))
    for call in (lambda: m.apply_all(only=["nope"]), lambda: m.apply_all(exclude=["nope"]),
                 lambda: m.patched("nope").__enter__(), lambda: m.get("nope")):
        with pytest.raises(UnknownPatchError, match=r"'nope'.*known names: fake-fix"):
            call()


def test_only_and_exclude_select_patches(mod):
    a = make_patch(mod.__name__, name="fix-a")
    b = make_patch(mod.__name__, name="fix-b", attribute="function")
    m = manager(a, b)
    report = m.apply_all(only=["fix-b"])
    assert report["fix-b"].status == "applied"
    assert report["fix-a"].status == "pending"
    m.revert_all()
    report = m.apply_all(exclude=["fix-b"])
    assert (report["fix-a"].status, report["fix-b"].status) == ("applied", "pending")
    m.revert_all()


def test_report_changes_nothing(mod):
    original = vars(mod.Base)["method"]
    m = manager(make_patch(mod.__name__))
    entry = m.report()["fake-fix"]
    assert entry.status == "pending"
    assert "has the bug" in entry.reason
    assert vars(mod.Base)["method"] is original


def test_duplicate_names_are_rejected(mod):
    with pytest.raises(ValueError, match="two patch records are named 'fake-fix'"):
        PatchManager([make_patch(mod.__name__), make_patch(mod.__name__)])
