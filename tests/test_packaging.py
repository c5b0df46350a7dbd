"""The distributions: metadata (PEP 639 license, URLs, authors, classifiers, extras), a complete sdist,
and a test set run from the unpacked sdist.

Builds with setuptools' PEP 517 backend in a copy of the project (nothing is written into the
checkout), the way ``python -m build --no-isolation`` would; needs setuptools>=77 installed.
"""

import email.parser
import fnmatch
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import compat_patches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = compat_patches.__version__
# never shipped: build and tool state (what .gitignore lists, and git's own)
SKIP = (".git", ".nox", ".venv", ".ci-venv", "build", "dist", "*.egg-info", "__pycache__", "*.py[cod]",
        ".pytest_cache", ".hypothesis", ".benchmarks", ".gpu", "*.whl")
# the test set run from the unpacked sdist: the core, the report command's source check, the
# in-flight revert promise, and one that needs the docs pages
FROM_SDIST = ["tests/core", "tests/test_report_source.py", "tests/test_revert_in_flight.py",
              "tests/test_report_command.py::test_hand_patches_come_from_the_pages_replaces_section"]


def _setuptools_problem():
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    from packaging.version import Version

    if Version(setuptools.__version__) < Version("77"):
        return f"needs setuptools>=77 (PEP 639), found {setuptools.__version__}"
    return None


needs_setuptools = pytest.mark.skipif(_setuptools_problem() is not None, reason=str(_setuptools_problem()))


def _project_files():
    """The project's files as git knows them (tracked, and new ones not ignored); None without git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=ROOT, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return sorted(p for p in out.stdout.decode().split("\0") if p and os.path.exists(os.path.join(ROOT, p)))


def _ignored(name):
    return any(fnmatch.fnmatch(name, pattern) for pattern in SKIP)


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(sdist path, wheel path, copy of the project they were built from)."""
    base = tmp_path_factory.mktemp("dists")
    copy = base / "project"
    shutil.copytree(ROOT, copy, ignore=lambda directory, names: [n for n in names if _ignored(n)])
    out = base / "dist"
    code = ("import sys; from setuptools import build_meta as b; "
            f"s = b.build_sdist({str(out)!r}); w = b.build_wheel({str(out)!r}); print('DISTS', s, w)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sdist, wheel = next(line for line in proc.stdout.splitlines() if line.startswith("DISTS ")).split()[1:]
    return out / sdist, out / wheel, copy


def _metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        return email.parser.Parser().parsestr(
            archive.read(f"compat_patches-{VERSION}.dist-info/METADATA").decode())


@needs_setuptools
def test_metadata(dists):
    _, wheel, _ = dists
    meta = _metadata(wheel)
    assert meta["Name"] == "compat_patches" and meta["Version"] == VERSION
    assert meta["Metadata-Version"] >= "2.4"
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier")
    assert not [c for c in classifiers if c.startswith("License ::")], "PEP 639: no license classifiers"
    for python in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {python}" in classifiers
    assert "Typing :: Typed" in classifiers
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["Author"]
    # no Project-URL: the project has no public home recorded yet, and a guessed one would mislead
    assert not meta.get_all("Project-URL")
    requirements = meta.get_all("Requires-Dist")
    assert "wrapt>=2.4" in requirements and "packaging" in requirements
    assert set(meta.get_all("Provides-Extra")) == {"test", "dev"}
    test_extra = [r for r in requirements if 'extra == "test"' in r]
    assert test_extra and not [r for r in test_extra if r.startswith("nox")], "nox is not a user extra"
    assert [r for r in requirements if r.startswith("nox") and 'extra == "dev"' in r]


@needs_setuptools
def test_wheel_ships_the_package_typed_and_licensed(dists):
    _, wheel, _ = dists
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(f"compat_patches-{VERSION}.dist-info/entry_points.txt").decode()
    assert "compat_patches/py.typed" in names
    assert f"compat_patches-{VERSION}.dist-info/licenses/LICENSE" in names
    assert "compat_patches/_bootstrap/sitecustomize.py" in names
    assert not [n for n in names if n.startswith(("tests/", "docs/"))]
    for line in ("compat-patches-run = compat_patches.launcher:main",
                 "compat_patches = compat_patches.vllm_plugin:register",
                 "compat_patches = compat_patches.pytest_plugin"):
        assert line in entry_points


@needs_setuptools
def test_sdist_holds_every_project_file(dists):
    sdist, _, copy = dists
    with tarfile.open(sdist) as archive:
        shipped = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    expected = _project_files()
    if expected is None:  # not a git checkout (e.g. this very test run from an unpacked sdist)
        expected = sorted(os.path.relpath(os.path.join(d, f), copy) for d, _, files in os.walk(copy)
                          for f in files)
    missing = [path for path in expected if path not in shipped and not _ignored(os.path.basename(path))]
    assert not missing, f"the sdist lacks {missing}"
    for path in ("LICENSE", "CHANGELOG.md", "README.md", "noxfile.py", "tests/conftest.py", "docs/api.md",
                 "compat_patches/py.typed", ".ci/run"):
        assert path in shipped


@needs_setuptools
def test_a_test_set_runs_from_the_unpacked_sdist(dists, tmp_path):
    sdist, _, _ = dists
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, **({"filter": "data"} if sys.version_info >= (3, 12) else {}))
    tree = tmp_path / f"compat_patches-{VERSION}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPAT_PATCHES_")}
    env["PYTHONPATH"] = str(tree)
    where = subprocess.run([sys.executable, "-c", "import compat_patches; print(compat_patches.__file__)"],
                           cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(tree)), where.stdout + where.stderr  # not the checkout's
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FROM_SDIST],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]


def test_changelog_has_unreleased_on_top_and_the_released_version():
    """No build needed: Keep a Changelog's shape, the package version cut with a date (no compare
    links: the project has no public home recorded yet)."""
    import re

    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as file:
        text = file.read()
    sections = re.findall(r"^## (\S+)(.*)$", text, flags=re.M)
    assert sections[0] == ("Unreleased", "")
    assert sections[1][0] == VERSION and re.fullmatch(r" - \d{4}-\d{2}-\d{2}", sections[1][1])
    unreleased = text.split("## Unreleased", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^### (\w+)", unreleased, flags=re.M) == ["Added", "Changed", "Fixed"]