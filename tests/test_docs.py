"""README.md and docs/ against the registry.

- README's compatibility table is the one `python -m compat_patches --markdown` generates;
- every registered patch has its page docs/patches/<name>.md, and every page belongs to a patch;
- each page has the evidence sections, in order;
- every ```python block of README.md and docs/ compiles, and imports or defines each name it uses
  as `X.` or `X(`; relative links point at files that exist.
"""

import ast
import builtins
import difflib
import pathlib
import re

import pytest

import compat_patches
from compat_patches.core.table import END, REGENERATE, START, extract_block, markdown_table
from compat_patches.patches import ALL_PATCHES

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = DOCS / "patches"
SECTIONS = ("## Use", "## Measured", "## Verified how", "## Needs hardware we lack", "## Replaces")
MARKDOWN = [README, *sorted(DOCS.rglob("*.md"))]


def rel(path):
    return path.relative_to(ROOT).as_posix()


# -- the generated compatibility table ------------------------------------------------------------

def test_readme_compatibility_table_is_generated_from_the_records():
    text = README.read_text(encoding="utf-8")
    block = extract_block(text)
    assert block is not None, (f"README.md needs exactly one {START} line and one {END} line "
                               f"after it; then run: {REGENERATE}")
    generated = markdown_table(ALL_PATCHES)
    if block != generated:
        diff = "\n".join(difflib.unified_diff(
            block.splitlines(), generated.splitlines(), "README.md (compat-table block)",
            "python -m compat_patches --markdown", lineterm=""))
        pytest.fail(f"README.md's compatibility table is out of date; regenerate it with\n\n"
                    f"    {REGENERATE}\n\n{diff}", pytrace=False)


def test_readme_table_shows_no_machine_dependent_status():
    header = extract_block(README.read_text(encoding="utf-8")).splitlines()[0].lower()
    assert "status" not in header


# -- one page per patch ---------------------------------------------------------------------------

def test_every_registered_patch_has_a_page():
    missing = [name for name in compat_patches.patch_names()
               if not (PAGES / f"{name}.md").is_file()]
    assert not missing, (f"no page for {missing}: write docs/patches/<name>.md "
                         f"(see docs/writing-a-patch.md)")


def test_every_page_belongs_to_a_registered_patch():
    names = set(compat_patches.patch_names())
    strays = sorted(p.name for p in PAGES.iterdir() if p.suffix != ".md" or p.stem not in names)
    assert not strays, f"docs/patches/ holds pages of no registered patch: {strays}"


@pytest.mark.parametrize("name", compat_patches.patch_names())
def test_page_has_the_evidence_sections_in_order(name):
    page = PAGES / f"{name}.md"
    if not page.is_file():
        pytest.skip("no page (reported by test_every_registered_patch_has_a_page)")
    lines = page.read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"# {name}", f"{rel(page)} must start with '# {name}'"
    headings = [line.rstrip() for line in lines if line.startswith("## ")]
    assert [h for h in headings if h in SECTIONS] == list(SECTIONS), (
        f"{rel(page)}: sections {headings}, want {list(SECTIONS)} in this order")
    use = lines.index("## Use")
    summary = "\n".join(lines[1:use]).strip()
    assert summary, f"{rel(page)}: the summary goes between the title and '## Use'"
    example = lines[use:lines.index("## Measured")]
    assert "```python" in example, f"{rel(page)}: '## Use' needs a ```python example"


# -- Python snippets ------------------------------------------------------------------------------

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks():
    for path in MARKDOWN:
        text = path.read_text(encoding="utf-8")
        for number, match in enumerate(_FENCE.finditer(text), 1):
            line = text.count("\n", 0, match.start()) + 2  # first line of code, 1-based
            yield pytest.param(path, line, match.group(1), id=f"{rel(path)}:{line}")


def undefined_names(source):
    """Names used as `X.` or `X(` that the snippet neither imports nor defines (nor are builtins)."""
    tree = ast.parse(source)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return []  # cannot tell what a star import brings
                defined.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            used.add(node.value.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            used.add(node.func.id)
    return sorted(used - defined)


def test_snippet_checker_catches_a_missing_import():
    assert undefined_names("with x.patched('a'):\n    llm = vllm.LLM(...)\n    LLM()\n") == [
        "LLM", "vllm", "x"]
    assert undefined_names("import a.b\nfrom c import d as e\nimport f.g as h\n"
                           "a.x(); e(); h.y()\nclass K: pass\nK()\n"
                           "def t(p):\n    p.q()\n") == []


@pytest.mark.parametrize("path, line, source", list(python_blocks()))
def test_python_snippet_is_self_contained(path, line, source):
    where = f"{rel(path)}, the ```python block at line {line}"
    try:
        compile(source, where, "exec")
    except SyntaxError as exc:
        pytest.fail(f"{where} does not compile: {exc}", pytrace=False)
    missing = undefined_names(source)
    assert not missing, f"{where} uses {missing} without importing or defining them"


# -- relative links -------------------------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_relative_links_point_at_files(path):
    broken = []
    for target in _LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in this page
        if not (path.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{rel(path)}: links to missing files: {broken}"


@pytest.mark.parametrize("record", [r for r in ALL_PATCHES if r.upstream_tests or r.differences],
                         ids=lambda record: record.name)
def test_page_names_the_upstream_tests_and_the_differences(record):
    text = " ".join((PAGES / f"{record.name}.md").read_text(encoding="utf-8").split())
    assert "## Faithful to the upstream fix" in text
    for node_id in record.upstream_tests:
        assert f"`{node_id}`" in text, f"{record.name}: page does not name {node_id}"
    assert " ".join(record.differences.split()) in text, f"{record.name}: page lacks `differences`"
