"""Input edges of ``python -m compat_patches``, each run in a fresh interpreter.

- a configuration error (unknown name in COMPAT_PATCHES_ONLY / _DISABLE, a bad COMPAT_PATCHES_STRICT,
  _LOG_LEVEL or _LOG_FORMAT) is one clean line, status 2;
- a reader that closes the pipe early ends the command quietly (status 141, nothing on stderr);
- stdout carries only the report, whatever the imported libraries print, log or warn, at import or
  at exit (transformers' "PyTorch was not found" banner, vLLM's log lines: ``--deep`` imports them);
- strict mode still prints the report, and exits 1 when a patch drifted (in both modes);
- the words: one finding per record, the same in the table and in ``--json``, a summary line and
  what to do next; ``--json`` keeps every key of PatchReport.to_dict and adds its own;
- the table fits $COLUMNS / the terminal, and has whole lines when piped;
- ``--version``;
- ``--markdown`` prints the registry's table, ``--update FILE`` rewrites it in place.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

import compat_patches
from compat_patches import __main__ as command
from compat_patches.core.report import FINDING_WORDS, PatchReport
from compat_patches.core.table import END, START, markdown_table
from compat_patches.core.versions import in_range, installed_version
from compat_patches.patches import ALL_PATCHES

PROG = "python -m compat_patches"
NAMES = compat_patches.patch_names()


def base_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPAT_PATCHES_") and k != "COLUMNS"}
    env.update(extra)
    return env


def with_path(env, directory):
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), env.get("PYTHONPATH")]))
    return env


def run(*args, env=None, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "compat_patches", *args], capture_output=True,
                          text=True, env=base_env() if env is None else env, timeout=timeout,
                          **kwargs)


def assert_clean_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{PROG}: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


HEADER = ["patch", "finding", "reason"]


def table_rows(stdout):
    """{patch: its row's first line} of the command's table; checks the header on the way."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == HEADER)
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        if not line.startswith(" "):
            rows[line.split()[0]] = line
    return rows


# -- configuration errors -----------------------------------------------------------------------

@pytest.mark.parametrize("args", [(), ("--json",), ("--lazy",), ("--deep",)])
@pytest.mark.parametrize("variable", ["COMPAT_PATCHES_ONLY", "COMPAT_PATCHES_DISABLE"])
def test_unknown_name_in_environment_is_one_clean_line(variable, args):
    proc = run(*args, env=base_env(**{variable: "rope"}))
    assert_clean_error(proc, "'rope'", variable, *NAMES)


def _setting_error(variable, value):
    """The configuration error the core raises for this setting, or None if it accepts it."""
    from compat_patches.core import env_strict

    try:
        compat_patches._default_manager().check_environment({variable: value})
        if variable == "COMPAT_PATCHES_STRICT":
            env_strict({variable: value})
    except compat_patches.CompatPatchesError as exc:
        return exc
    except TypeError:  # a core whose env_strict() reads only os.environ
        return None
    return None


@pytest.mark.parametrize("variable, value", [("COMPAT_PATCHES_STRICT", "maybe"),
                                             ("COMPAT_PATCHES_ONLY", ",")])
def test_bad_setting_is_one_clean_line(variable, value):
    if _setting_error(variable, value) is None:
        pytest.skip(f"this core accepts {variable}={value!r}")
    proc = run("--json", env=base_env(**{variable: value}))
    assert_clean_error(proc, variable)


@pytest.mark.parametrize("variable, value, accepted", [
    ("COMPAT_PATCHES_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ("COMPAT_PATCHES_LOG_FORMAT", "xml", "text or json"),
])
@pytest.mark.parametrize("args", [(), ("--json",)])
def test_bad_log_setting_is_one_clean_line(variable, value, accepted, args):
    proc = run(*args, env=base_env(**{variable: value}))
    assert_clean_error(proc, variable, repr(value), accepted)


def test_known_names_in_environment_still_report():
    proc = run("--json", "--lazy", env=base_env(COMPAT_PATCHES_ONLY=NAMES[0]))
    assert proc.returncode == 0, proc.stderr
    statuses = {e["name"]: e["status"] for e in json.loads(proc.stdout)}
    assert set(statuses) == set(NAMES)
    assert {statuses[n] for n in NAMES[1:]} == {"disabled"}


# -- a reader that closes the pipe early ----------------------------------------------------------

@pytest.mark.parametrize("args", [("--lazy",), ("--json", "--lazy"), ("--markdown",)])
def test_closed_pipe_exits_quietly(args):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte (`| head -0`, a closed socket)
    try:
        proc = subprocess.run([sys.executable, "-m", "compat_patches", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=base_env(), timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141


# -- stdout carries only the report ---------------------------------------------------------------

NOISY_MODULE = textwrap.dedent('''
    """Prints, logs and warns the way ML libraries do on import and at exit."""
    import atexit, logging, os, sys, warnings

    print("NOISE: print at import")
    os.write(1, b"NOISE: fd 1 at import\\n")
    _log = logging.getLogger("noisy")
    _log.setLevel(logging.INFO)
    _log.propagate = False
    _log.addHandler(logging.StreamHandler(sys.stdout))      # vLLM configures its logger so
    _log.addHandler(logging.StreamHandler(sys.__stdout__))
    _log.info("NOISE: log at import")
    logging.getLogger().warning("NOISE: root log at import")
    warnings.warn("NOISE: warning at import")

    def _at_exit():
        print("NOISE: print at exit")
        _log.info("NOISE: log at exit")
        os.write(1, b"NOISE: fd 1 at exit\\n")

    atexit.register(_at_exit)
''')


@pytest.fixture
def noisy_vllm(tmp_path):
    """A fake vLLM 0.11.0 (in range of vllm-fused-expert-kwargs) whose target module is noisy and
    lacks the target class, so the patch reports `drifted`."""
    (tmp_path / "vllm-0.11.0.dist-info").mkdir()
    (tmp_path / "vllm-0.11.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vllm\nVersion: 0.11.0\n")
    models = tmp_path / "vllm" / "model_executor" / "models"
    models.mkdir(parents=True)
    for package in (tmp_path / "vllm", models.parent, models):
        (package / "__init__.py").write_text("")
    (models / "qwen3_vl_moe.py").write_text(NOISY_MODULE)
    return tmp_path


@pytest.mark.parametrize("json_output", [False, True])
def test_import_noise_stays_off_stdout(noisy_vllm, json_output):
    args = ["--deep"] + (["--json"] if json_output else [])
    proc = run(*args, env=with_path(base_env(), noisy_vllm))
    assert proc.returncode == 0, proc.stderr
    assert "NOISE" not in proc.stdout
    for noise in ("print at import", "fd 1 at import", "log at import", "warning at import",
                  "print at exit", "log at exit", "fd 1 at exit"):
        assert f"NOISE: {noise}" in proc.stderr  # it happened, on stderr
    if json_output:
        statuses = {e["name"]: e["status"] for e in json.loads(proc.stdout)}
    else:
        statuses = table_rows(proc.stdout)
    assert set(statuses) == set(NAMES)
    assert "drifted" in statuses["vllm-fused-expert-kwargs"]


def test_the_default_report_reads_the_noisy_module_without_running_it(noisy_vllm):
    proc = run("--json", env=with_path(base_env(), noisy_vllm))
    assert proc.returncode == 0, proc.stderr
    assert "NOISE" not in proc.stdout + proc.stderr  # never executed
    entry = {e["name"]: e for e in json.loads(proc.stdout)}["vllm-fused-expert-kwargs"]
    assert entry["status"] == entry["finding"] == "drifted"
    assert "is missing" in entry["reason"]


@pytest.mark.parametrize("mode", [(), ("--deep",)], ids=["source", "deep"])
def test_strict_mode_prints_the_report_then_fails(noisy_vllm, mode):
    proc = run("--json", *mode, env=with_path(base_env(COMPAT_PATCHES_STRICT="1"), noisy_vllm))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    statuses = {e["name"]: e["status"] for e in json.loads(proc.stdout)}
    assert statuses["vllm-fused-expert-kwargs"] == "drifted"
    assert f"{PROG}: error: COMPAT_PATCHES_STRICT is on and vllm-fused-expert-kwargs" in proc.stderr


def _transformers_without_torch():
    return (installed_version("transformers") is not None
            and importlib.util.find_spec("transformers") is not None
            and importlib.util.find_spec("torch") is None)


@pytest.mark.skipif(not _transformers_without_torch(),
                    reason="needs transformers installed without torch (its 'PyTorch was not found' "
                           "banner)")
@pytest.mark.parametrize("json_output", [False, True])
@pytest.mark.parametrize("extra_env", [{}, {"CI": "1"}], ids=["default", "CI=1"])
def test_transformers_banner_stays_off_stdout(tmp_path, json_output, extra_env):
    env = base_env(**extra_env)
    rope = compat_patches.get_patch("transformers-rope-ignore-keys")
    if not in_range(installed_version("transformers"), rope.affected["transformers"]):
        # out of range, the command would not import transformers at all: let this interpreter
        # see an affected release number so that the real modules are imported (and checked)
        info = tmp_path / "transformers-5.9.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 5.9.0\n")
        with_path(env, tmp_path)
    proc = run("--deep", *(["--json"] if json_output else []), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "PyTorch was not found" in proc.stderr  # the banner was printed, on stderr
    assert "PyTorch" not in proc.stdout
    if json_output:
        assert [e["name"] for e in json.loads(proc.stdout)] == list(NAMES)
    else:
        assert set(table_rows(proc.stdout)) == set(NAMES)


# -- --markdown ----------------------------------------------------------------------------------

def test_markdown_prints_the_registry_table():
    proc = run("--markdown", env=base_env(COMPAT_PATCHES_DISABLE="1"))  # the environment is ignored
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == markdown_table(ALL_PATCHES) + "\n"
    assert "status" not in proc.stdout.splitlines()[0]


def test_markdown_update_rewrites_the_block_in_place(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{START}\n| stale |\n{END}\nafter\n")
    proc = run("--markdown", "--update", str(readme))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert readme.read_text() == (f"# title\n\nbefore\n{START}\n{markdown_table(ALL_PATCHES)}\n"
                                  f"{END}\nafter\n")
    again = run("--markdown", "--update", str(readme))
    assert again.returncode == 0 and "already up to date" in again.stderr


@pytest.mark.parametrize("content", ["no markers here\n", f"{START}\n{START}\n{END}\n",
                                     f"{END}\n{START}\n"])
def test_markdown_update_refuses_a_file_without_one_block(tmp_path, content):
    readme = tmp_path / "README.md"
    readme.write_text(content)
    proc = run("--markdown", "--update", str(readme))
    assert_clean_error(proc, "compat-table")
    assert readme.read_text() == content


def test_markdown_update_missing_file(tmp_path):
    assert_clean_error(run("--markdown", "--update", str(tmp_path / "nope.md")), "nope.md")


def test_update_needs_markdown():
    proc = run("--update", "README.md")
    assert proc.returncode == 2 and "--update needs --markdown" in proc.stderr


def test_package_import_does_not_load_the_command_or_the_table():
    code = ("import sys, compat_patches; "
            "print(sorted(m for m in ('compat_patches.core.table', 'compat_patches.__main__', "
            "'compat_patches.patches') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=base_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "[]"


# -- the words, the summary, the width, the version -----------------------------------------------

def test_version():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout == f"compat_patches {compat_patches.__version__}\n"


@pytest.mark.parametrize("mode", [(), ("--lazy",)], ids=["source", "lazy"])
def test_table_and_json_say_the_same_words(mode):
    table, data = run(*mode), run("--json", *mode)
    assert table.returncode == 0 and data.returncode == 0, table.stderr + data.stderr
    entries = json.loads(data.stdout)
    rows = table_rows(table.stdout)
    assert list(rows) == [e["name"] for e in entries] == list(NAMES)
    for entry in entries:
        assert entry["finding"] in FINDING_WORDS
        assert rows[entry["name"]].split()[1] == entry["finding"]
        # every key PatchReport.to_dict always had, with its meaning (status: what apply_all says)
        assert set(compat_patches.report()[entry["name"]].to_dict()) <= set(entry)
        assert entry["compat_patches"] == compat_patches.__version__
        assert entry["mode"] == ("lazy" if mode else "source")
    first = table.stdout.splitlines()[0]
    assert first.startswith(f"compat_patches {compat_patches.__version__} on Python ")
    needed = [e["name"] for e in entries if e["finding"] == "needed"]
    assert f"{len(needed)} of {len(NAMES)} records fix a bug in this environment" in table.stdout
    assert "Next: " in table.stdout


def test_the_table_fits_columns_and_is_whole_when_piped():
    for columns in (80, 100, 160):
        fitted = run(env=base_env(COLUMNS=str(columns)))
        assert fitted.returncode == 0, fitted.stderr
        assert max(len(line) for line in fitted.stdout.splitlines()) <= columns
        assert all(name in fitted.stdout for name in NAMES)
    piped = run()  # captured: not a terminal, no COLUMNS
    rows = table_rows(piped.stdout)
    table = piped.stdout.splitlines()
    start = table.index(next(line for line in table if line.split() == HEADER))
    body = table[start + 2:start + 2 + len(rows)]
    assert [line.split()[0] for line in body] == list(NAMES)  # one whole line per record


def _finding(name, status, reason, unchecked=(), hand=None, versions=None):
    entry = PatchReport(name=name, status=status, reason=reason, versions=versions or {"lib": "1.0"},
                        affected={"lib": ">=1"})
    return command.Finding(entry, "source-partly" if unchecked else "source", unchecked, hand)


def test_the_summary_says_what_to_do_next():
    findings = [
        _finding("needed-one", "applied", "lib 1.0 has the bug"),
        _finding("gone-one", "not-needed", "lib 1.0 is outside the affected range", hand="docs/patches/gone-one.md#replaces"),
        _finding("changed-one", "drifted", "target lib.m:f signature changed"),
        _finding("partly-one", "applied", "lib 1.0 has the bug", unchecked=["lib.m:g: it reads sys.modules"]),
        _finding("absent-one", "not-installed", "other is not installed", versions={"other": None}),
    ]
    text = command.render(findings, "source", width=100)
    assert "2 of 5 records fix a bug in this environment (needed-one, partly-one); 1 not-needed, " \
           "1 not-installed, 1 drifted." in " ".join(text.split())
    flat = " ".join(text.split())
    assert "import compat_patches.auto" in flat and "compat-patches-run python train.py" in flat
    assert "changed-one: the installed release has the bug but its code is not what the record was " \
           "written for, so the patch stays off" in flat
    assert "hand patches of these bugs that the pages list can go: gone-one (docs/patches/gone-one.md#replaces)" in flat
    assert "python -m compat_patches --deep" in flat
    assert "installed: lib 1.0; not installed: other" in flat
    assert max(len(line) for line in text.splitlines()) <= 100


PAGES = {
    "listed": "# x\n\n## Replaces\n\nHand patches of this bug found by the inventory:\n\n- **#1, tool** `a.py`: patches f.\n\n## Next\n",
    "generated": ("# x\n\n## Replaces\n\n<!-- replaces:start -->\nKnown hand patches and workarounds of this "
                  "bug:\n\n- **tool** `b.py`: wraps g.\n<!-- replaces:end -->\n"),
    "none-found": "# x\n\n## Replaces\n\nNo hand patch of this bug was found by the inventory: it lists\n\n- a thing\n",
    "none-known": "# x\n\n## Replaces\n\n<!-- replaces:start -->\nNo known hand patch.\n<!-- replaces:end -->\n",
    "no-section": "# x\n\n## Measured\n\n- a row\n",
    "no-bullets": "# x\n\n## Replaces\n\nHand patches: see the inventory.\n",
}


def test_hand_patches_come_from_the_pages_replaces_section(tmp_path):
    (tmp_path / "patches").mkdir()
    for name, text in PAGES.items():
        (tmp_path / "patches" / f"{name}.md").write_text(text)
    found = {name: command.hand_patches(name, docs=str(tmp_path)) for name in [*PAGES, "no-page"]}
    assert found == {"listed": "docs/patches/listed.md#replaces", "generated": "docs/patches/generated.md#replaces",
                     "none-found": None, "none-known": None, "no-section": None, "no-bullets": None,
                     "no-page": None}
    # the real pages, next to the package (a checkout or an unpacked sdist): ms-swift's RoPE hand patch
    assert command.hand_patches("transformers-rope-ignore-keys") == \
        "docs/patches/transformers-rope-ignore-keys.md#replaces"
