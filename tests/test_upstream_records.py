"""Every record's ``upstream_tests`` names tests that are really there (issue 13).

A record cannot name a test that does not exist: each node id must be a file under tests/upstream/
that declares ``PATCH = "<the record's name>"`` and defines the named test (class and function,
read with ``ast``, so this runs without any of the libraries installed); at least one of a record's
tests carries ``@pytest.mark.upstream_regression`` (the one that must fail unpatched on an affected
release); and every copied upstream module belongs to a record that names it.
"""

import ast
import pathlib
import types

import pytest

from compat_patches.patches import ALL_PATCHES

ROOT = pathlib.Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "tests" / "upstream"
MARKER = "upstream_regression"


def _declared_patch(tree):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PATCH" for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    return None


def _find(body, names):
    """The def/class node at the dotted path `names` inside `body`, or None."""
    head, rest = names[0], names[1:]
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == head:
            if not rest:
                return node
            return _find(node.body, rest) if isinstance(node, ast.ClassDef) else None
    return None


def _is_marked(node, source):
    return any(MARKER in (ast.get_source_segment(source, d) or "") for d in node.decorator_list)


def upstream_test_problems(record, root=ROOT):
    """What is wrong with `record.upstream_tests` (a list of sentences; empty when all is well)."""
    problems, marked = [], 0
    for node_id in record.upstream_tests:
        path, sep, qualname = node_id.partition("::")
        if not sep or not qualname or "[" in node_id:
            problems.append(f"{node_id!r}: not a 'path.py::[Class::]test_function' node id")
            continue
        file = root / path
        if not file.is_file():
            problems.append(f"{node_id!r}: {path} does not exist")
            continue
        if not pathlib.PurePosixPath(path).is_relative_to("tests/upstream") or not file.name.startswith("test_"):
            problems.append(f"{node_id!r}: copied upstream tests live in tests/upstream/<library>/test_*.py")
        source = file.read_text()
        tree = ast.parse(source)
        declared = _declared_patch(tree)
        if declared != record.name:
            problems.append(f"{node_id!r}: {path} declares PATCH = {declared!r}, not {record.name!r}")
        differs = any(isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DIFFERS"
                                                        for t in n.targets) for n in tree.body)
        if differs and not getattr(record, "differences", ""):
            problems.append(f"{node_id!r}: {path} declares DIFFERS but {record.name} has no `differences`")
        names = qualname.split("::")
        node = _find(tree.body, names)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not names[-1].startswith("test"):
            problems.append(f"{node_id!r}: no test function {qualname} in {path}")
            continue
        if len(names) > 1 and not names[0].startswith("Test"):
            problems.append(f"{node_id!r}: pytest does not collect class {names[0]} (not Test*)")
        marked += _is_marked(node, source)
    if record.upstream_tests and not marked:
        problems.append(f"{record.name}: none of its upstream_tests is marked @pytest.mark.{MARKER}")
    return problems


@pytest.mark.parametrize("record", ALL_PATCHES, ids=lambda r: r.name)
def test_record_upstream_tests_exist_and_are_collected(record):
    assert upstream_test_problems(record) == []


def test_every_copied_upstream_module_belongs_to_a_record():
    named = {node_id.partition("::")[0] for record in ALL_PATCHES for node_id in record.upstream_tests}
    records = {record.name for record in ALL_PATCHES}
    modules = sorted(UPSTREAM.rglob("test_*.py"))
    assert modules, "tests/upstream holds no copied test"
    for file in modules:
        rel = file.relative_to(ROOT).as_posix()
        declared = _declared_patch(ast.parse(file.read_text()))
        assert declared in records, f"{rel}: PATCH = {declared!r} names no record"
        assert rel in named, f"{rel}: no record lists it in upstream_tests"


def test_the_records_of_issue_13_name_their_upstream_tests():
    by_name = {record.name: record for record in ALL_PATCHES}
    assert by_name["transformers-rope-ignore-keys"].upstream_tests
    assert by_name["fsdp-packed-experts"].upstream_tests


@pytest.mark.parametrize("node_id, expected", [
    ("tests/upstream/transformers/test_nothing_here.py::test_x", "does not exist"),
    ("tests/upstream/transformers/test_modeling_rope_utils.py::TestRope::test_not_defined", "no test function"),
    ("tests/upstream/transformers/test_modeling_rope_utils.py::test_convert_rope_params_to_dict_with_list_ignore_keys",
     "no test function"),  # defined in the class, not at module level
    ("tests/upstream/transformers/test_modeling_rope_utils.py::TestRope::get_config_with_rope_parameters",
     "no test function"),
    ("tests/upstream/transformers/test_modeling_rope_utils.py", "not a 'path.py::"),
    ("tests/upstream/transformers/test_modeling_rope_utils.py::TestRope::test_rope_validation[patched-True-True]",
     "not a 'path.py::"),
    ("tests/patches/transformers/test_rope_ignore_keys.py::test_gate", "live in tests/upstream"),
])
def test_the_check_fails_on_a_record_naming_what_is_not_there(node_id, expected):
    record = types.SimpleNamespace(name="transformers-rope-ignore-keys", upstream_tests=(node_id,))
    problems = upstream_test_problems(record)
    assert any(expected in p for p in problems), problems


def test_the_check_fails_on_a_module_of_another_record_and_on_no_marked_test():
    node_id = ("tests/upstream/transformers/test_modeling_rope_utils.py::TestRope::"
               "test_convert_rope_params_to_dict_with_list_ignore_keys")
    other = types.SimpleNamespace(name="fsdp-packed-experts", upstream_tests=(node_id,))
    assert any("declares PATCH" in p for p in upstream_test_problems(other))
    unmarked = types.SimpleNamespace(name="transformers-rope-ignore-keys", upstream_tests=(
        "tests/upstream/transformers/test_modeling_rope_utils.py::TestRope::test_rope_bad_layer_types",))
    assert any("none of its upstream_tests is marked" in p for p in upstream_test_problems(unmarked))
    undocumented = types.SimpleNamespace(name="transformers-rope-ignore-keys", upstream_tests=(node_id,),
                                         differences="")
    assert any("declares DIFFERS" in p for p in upstream_test_problems(undocumented))


@pytest.mark.parametrize("record", [r for r in ALL_PATCHES if r.upstream_tests], ids=lambda r: r.name)
def test_the_two_modes_fail_what_they_must(pytester, record):
    """tests/upstream/conftest.py run on a module of tests that must trip it, against whatever
    release of the record's libraries is installed here (affected, fixed or absent)."""
    from tests.upstream.conftest import not_affected_because

    pytester.makeconftest((UPSTREAM / "conftest.py").read_text())
    pytester.makepyfile(test_fake=f"""
        import pytest

        PATCH = {record.name!r}

        @pytest.mark.upstream_regression
        def test_passes_without_the_fix():
            pass

        @pytest.mark.upstream_regression
        def test_fails_even_with_the_fix():
            assert False

        @pytest.mark.upstream_regression
        def test_fails_for_another_reason():
            raise ImportError("not the bug")

        def test_around_that_fails():
            assert False
    """)
    # a fresh interpreter: in-process, pytester drops the modules a run imported, and the next
    # record's run would import transformers (and numpy) a second time in this process
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    if not_affected_because(record)[0] is None:
        # [unpatched]: a regression test that passes is an XPASS(strict) failure, one failing with
        # the wrong exception fails; only the AssertionError one is the expected failure
        assert (outcomes.get("passed"), outcomes.get("failed"), outcomes.get("xfailed")) == (1, 6, 1), outcomes
        result.stdout.fnmatch_lines(["*test_passes_without_the_fix?unpatched?*XPASS(strict)*"])
    else:  # fixed or absent: both modes run plainly, the patch reports not-needed / not-installed
        assert (outcomes.get("passed"), outcomes.get("failed"), outcomes.get("xfailed")) == (2, 6, None), outcomes
