"""The pytest plugin (entry point pytest11 ``compat_patches``), run with ``pytester``.

The plugin works on compat_patches' default manager; these tests replace it, for the duration of
one outer test, by a PatchManager over fake records on a fake module already imported
(``monkeypatch.setattr(compat_patches, "_manager", ...)``), and run the inner pytest sessions
in-process so that they see it. The five real records are used only for the "inert" check.
"""

import pytest

import compat_patches
import compat_patches.activation

from .core.fakes import import_module, make_patch, manager


@pytest.fixture
def fake(tmp_path, monkeypatch, pytester):
    mod = import_module(tmp_path, monkeypatch)
    m = manager(make_patch(mod.__name__, name="fake-fix"),
                make_patch(mod.__name__, name="fake-other", attribute="function"))
    monkeypatch.setattr(compat_patches, "_manager", m)
    for variable in ("COMPAT_PATCHES_ONLY", "COMPAT_PATCHES_DISABLE", "COMPAT_PATCHES_STRICT"):
        monkeypatch.delenv(variable, raising=False)
    original = (vars(mod.Base)["method"], vars(mod)["function"])
    # the originals as imported, for identity checks inside the inner tests
    mod.ORIGINALS = {"method": original[0], "function": original[1]}
    pytester.makeconftest(f"""
        import pytest, {mod.__name__} as fakemod

        @pytest.fixture
        def mod():
            return fakemod

        @pytest.fixture
        def originals():
            return fakemod.ORIGINALS
    """)
    yield mod
    try:
        assert (vars(mod.Base)["method"], vars(mod)["function"]) == original
        assert vars(mod.Base)["method"] is original[0] and vars(mod)["function"] is original[1]
    finally:
        m.revert_all()


def test_plugin_is_registered_and_inert_by_default(pytester):
    """No option, no marker: nothing applied, nothing printed, in a suite using the real records."""
    pytester.makepyfile("""
        import compat_patches, compat_patches.activation

        def test_nothing_applied(request):
            assert request.config.pluginmanager.has_plugin("compat_patches")
            assert compat_patches._default_manager().active_names() == ()
    """)
    before = compat_patches.activation.history()
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert compat_patches.activation.history() == before, "the plugin activated something"
    assert not [line for line in result.outlines if line.startswith("compat_patches:")]


def test_marker_applies_around_the_test_and_reverts(fake, pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.fixture
        def built(mod):                        # a fixture of the marked test: patched too
            return mod.Base().method(1)

        @pytest.mark.compat_patches("fake-fix")
        def test_marked(mod, originals, built):
            assert built == ("fake-fix", ("original", 1))
            assert mod.Base().method(2) == ("fake-fix", ("original", 2))
            assert mod.function(1, 2) == 3                     # fake-other not asked for
            assert mod.Base.__dict__["method"] is not originals["method"]

        def test_after(mod, originals):
            assert mod.Base.__dict__["method"] is originals["method"]

        @pytest.mark.compat_patches
        class TestAll:
            def test_every_patch(self, mod):
                assert mod.function(1, 2) == ("fake-other", 3)
                assert mod.Base().method(1) == ("fake-fix", ("original", 1))

        def test_after_class(mod, originals):
            assert mod.function.__class__.__name__ == "function"
            assert mod.__dict__["function"] is originals["function"]
    """)
    pytester.runpytest().assert_outcomes(passed=4)


def test_fixtures_apply_and_revert(fake, pytester):
    pytester.makepyfile("""
        import pytest

        def test_applied_fixture(compat_patches_applied, mod):
            assert compat_patches_applied["fake-fix"].status == "applied"
            assert compat_patches_applied["fake-other"].status == "applied"
            assert mod.function(1, 2) == ("fake-other", 3)

        @pytest.mark.compat_patches("fake-other")
        def test_applied_fixture_follows_the_marker(compat_patches_applied, mod):
            assert compat_patches_applied["fake-other"].status == "applied"
            assert compat_patches_applied["fake-fix"].status == "pending"
            assert mod.Base().method(1) == ("original", 1)

        def test_factory(compat_patch, mod):
            assert mod.Base().method(1) == ("original", 1)
            report = compat_patch("fake-fix")
            assert report["fake-fix"].status == "applied"
            assert mod.Base().method(1) == ("fake-fix", ("original", 1))

        def test_after(mod, originals):
            assert mod.Base.__dict__["method"] is originals["method"]
            assert mod.__dict__["function"] is originals["function"]
    """)
    pytester.runpytest().assert_outcomes(passed=4)


def test_unknown_name_fails_the_test_with_the_known_names(fake, pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.compat_patches("fake-fix", "typo-fix")
        def test_marker():
            pass

        def test_factory(compat_patch):
            compat_patch("typo-fix")

        def test_still_runs(mod, originals):
            assert mod.Base.__dict__["method"] is originals["method"]
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*compat_patches: unknown patch name(s) 'typo-fix' in argument; "
        "known names: fake-fix, fake-other*",
    ])
    assert result.stdout.str().count("known names: fake-fix, fake-other") >= 2


def test_session_option_applies_for_the_session_and_header_shows_the_report(fake, pytester):
    pytester.makepyfile("""
        def test_one(mod):
            assert mod.Base().method(1) == ("fake-fix", ("original", 1))
            assert mod.function(1, 2) == 3

        def test_two(mod):
            assert mod.Base().method(1) == ("fake-fix", ("original", 1))
    """)
    result = pytester.runpytest("--compat-patches=fake-fix")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "compat_patches: --compat-patches=fake-fix: fake-fix=applied, fake-other=pending",
    ])


def test_session_option_all_verbose_header_is_a_table(fake, pytester):
    pytester.makepyfile("""
        def test_one(mod):
            assert mod.function(1, 2) == ("fake-other", 3)
    """)
    result = pytester.runpytest("--compat-patches=all", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "compat_patches: --compat-patches=all (pid *)",
        "patch*library*range*status*reason",
        "fake-fix*fakelib 1.5.0*applied*",
        "fake-other*fakelib 1.5.0*applied*",
    ])


def test_session_from_ini_and_marker_inside_a_session(fake, pytester):
    pytester.makeini("[pytest]\ncompat_patches = fake-other\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.compat_patches("fake-other")
        def test_marked(mod):
            assert mod.function(1, 2) == ("fake-other", 3)

        def test_session_patch_outlives_the_marker(mod):
            assert mod.function(1, 2) == ("fake-other", 3)   # the session hold is still there
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["compat_patches: --compat-patches=fake-other: *fake-other=applied"])


def test_session_option_unknown_name_is_a_usage_error(fake, pytester):
    pytester.makepyfile("def test_one():\n    pass\n")
    result = pytester.runpytest("--compat-patches=fake-fix,typo-fix")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*compat_patches: unknown patch name(s) 'typo-fix' in --compat-patches; "
        "known names: fake-fix, fake-other*",
    ])


def test_session_option_none_is_inert(fake, pytester):
    pytester.makepyfile("""
        def test_one(mod, originals):
            assert mod.Base.__dict__["method"] is originals["method"]
    """)
    result = pytester.runpytest("--compat-patches=none")
    result.assert_outcomes(passed=1)
    assert "compat_patches:" not in result.stdout.str()
