"""transformers' own common model tests, unpatched and patched, on every family the packed-samples
records wrap: proof that the records keep every behaviour of the unpatched models (issue 24, item 4).

    python tests/upstream/transformers/modeling_common/run.py              # every family, full mixin
    python tests/upstream/transformers/modeling_common/run.py --quick      # the cheap selection
    python tests/upstream/transformers/modeling_common/run.py --families granitemoehybrid -k checkpointing
    python tests/upstream/transformers/modeling_common/run.py --fetch-only # setup: fill the cache, then offline

Run it with the python of the environment under test (transformers, torch, accelerate, compat_patches,
plus `parameterized` and `pytest-timeout`, which the mixin and the per-test timeout need).

What runs. The installed release's sdist (from PyPI once, sha256-checked, cached by tests/artifacts.py)
supplies `tests/test_modeling_common.py`, ModelTesterMixin verbatim. The sdists do not ship
`tests/models/`, `tests/causal_lm_tester.py`, `tests/generation/` or `tests/exporters/`: the tree
assembled here stubs `GenerationTesterMixin` / `ExportTesterMixin` (empty mixins: no generate / export
tests) and runs the mixin on our own tiny testers (testers.py, one per family, upstream's shapes).
With ``--upstream-tests DIR`` (a transformers checkout at the installed release's tag) the tree is
DIR/tests instead and each family runs upstream's own tests/models/<model>/test_modeling_<model>.py;
its test_modeling_common.py must equal the sdist's byte for byte.

Each family's file runs twice in a fresh pytest process: [unpatched] (the compat_patches plugin
inert) and [patched] (``--compat-patches=<both records>``, applied before collection). Tests that fail
or error unpatched are excluded with their reason; a test that passes unpatched and fails, errors
or times out patched is a finding (exit status 1). Offline: HF_HUB_OFFLINE=1, an empty HF_HOME,
RUN_SLOW unset (transformers' @slow tests skip), no CUDA device; one file at a time, a per-test
timeout (pytest-timeout), `-p no:cacheprovider`.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
MODULE = {"qwen3_5_vl": "qwen3_5", "qwen3_5_moe_vl": "qwen3_5_moe"}  # family -> transformers.models.<module>
RECORDS = ("transformers-gdn-packed-samples", "transformers-mamba2-packed-samples")
FAMILIES = ("qwen3_next", "qwen3_5", "qwen3_5_vl", "qwen3_5_moe", "qwen3_5_moe_vl", "olmo_hybrid", "lara_mini",
            "nemotron_h", "bamba", "granitemoehybrid", "falcon_h1")
SDIST_MEMBERS = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")
# --quick: what the records can change (a wrapped layer's forward / backward, checkpointing, output
# capture, save / load, dtype, batching, padding, embeddings); the rest of the mixin (hub, offload,
# tp plans, resize, init) does not run a forward through the wrapped layers or is covered here.
QUICK = ("gradient_checkpointing or test_training or attention_outputs or hidden_states_output or "
         "retain_grad or test_save_load or torch_save_load or determinism or batching_equivalence or "
         "model_outputs_equivalence or inputs_embeds or bc_torch_dtype or keep_in_fp32 or "
         "capture_outputs or can_capture_specific_layers or eager_matches_sdpa_inference_00_fp32")
STUBS = {
    "tests/__init__.py": "",
    "tests/models/__init__.py": "",
    "tests/generation/__init__.py": "",
    "tests/generation/test_utils.py":
        '"""Stub: the sdist lacks tests/generation; no generate tests run here."""\n\n\n'
        "class GenerationTesterMixin:\n    pass\n",
    "tests/exporters/__init__.py": "",
    "tests/exporters/test_export.py":
        '"""Stub: the sdist lacks tests/exporters; no torch.export tests run here."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n",
    "tests/utils/__init__.py": "",
    "tests/utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}
FAMILY_MODULE = ('"""ModelTesterMixin on {family} (tiny tester: tests/compat_testers.py)."""\n\n'
                 "from ...compat_testers import build\n\n_case = build({family!r})\n"
                 "globals()[_case.__name__] = _case  # e.g. GraniteMoeHybridModelTest\ndel _case\n")
INI = """[pytest]
markers =
    all_flash_attn_test: transformers marker
    flash_attn_4_test: transformers marker
    flash_attn_3_test: transformers marker
    flash_attn_test: transformers marker
    bitsandbytes: transformers marker
    generate: transformers marker
    is_training_test: transformers marker
    is_tensor_parallel_test: transformers marker
    is_expert_parallel_test: transformers marker
    is_fsdp_test: transformers marker
    torch_compile_test: transformers marker
    torch_export_test: transformers marker
    compat_patches: compat_patches marker
"""
OUTCOMES = ("passed", "failed", "error", "skipped", "timeout")
_SEVERITY = {"skipped": 0, "passed": 1, "failed": 2, "error": 2, "timeout": 2}


def _version():
    return importlib.metadata.version("transformers")


def fetch_sdist_tests(version):
    """The directory holding the sdist's members (downloaded once; see tests/artifacts.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.artifacts import artifact_dir

    try:
        return artifact_dir("transformers", version, "sdist", SDIST_MEMBERS)
    except BaseException as exc:  # pytest.skip / pytest.fail outside pytest: Skipped / Failed
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise SystemExit(f"cannot get the transformers {version} sdist tests: {exc}") from None


def assemble(tree, version, upstream=None):
    """Lay out the test tree in `tree`; return {family: path of its test file relative to `tree`}."""
    cached = fetch_sdist_tests(version)
    common = (cached / "tests/test_modeling_common.py").read_bytes()
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "pytest.ini").write_text(INI)
    shutil.copy(HERE / "tree_conftest.py", tree / "conftest.py")
    files = {}
    if upstream is not None:
        source = Path(upstream) / "tests"
        if (source / "test_modeling_common.py").read_bytes() != common:
            raise SystemExit(f"{source}/test_modeling_common.py is not the transformers {version} sdist's")
        shutil.copytree(source, tree / "tests", dirs_exist_ok=True)
        for family in FAMILIES:
            path = Path("tests/models") / family / f"test_modeling_{family}.py"
            if (tree / path).exists():
                files[family] = path
        return files
    for rel, text in STUBS.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    for rel in SDIST_MEMBERS:
        if (cached / rel).exists():
            shutil.copy(cached / rel, tree / rel)
    shutil.copy(HERE / "testers.py", tree / "tests/compat_testers.py")
    for family in FAMILIES:
        path = Path("tests/models") / family / f"test_modeling_{family}.py"
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path.parent / "__init__.py").write_text("")
        (tree / path).write_text(FAMILY_MODULE.format(family=family))
        files[family] = path
    return files


def child_env(work, threads):
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("RUN_")]:  # RUN_SLOW and friends
        del env[key]
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HOME=str(work / "hf_home"), CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED="0")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def run_file(tree, path, mode, work, args):
    """One pytest process on one family file; returns (results, wall seconds, state, tail)."""
    tag = f"{path.parent.name}-{mode}"
    junit, state = work / f"{tag}.xml", work / f"{tag}.state.json"
    command = [sys.executable, "-m", "pytest", "-c", str(tree / "pytest.ini"), "--rootdir", str(tree),
               "-q", "-p", "no:cacheprovider", "-p", "no:randomly", f"--timeout={args.timeout}",
               "-o", "junit_family=xunit1", f"--junitxml={junit}", "-rN", str(path)]
    if mode == "patched":
        command.append(f"--compat-patches={','.join(RECORDS)}")
    if args.k:
        command += ["-k", args.k]
    env = child_env(work, args.threads)
    env["COMPAT_MODELING_COMMON_STATE"] = str(state)
    start = time.monotonic()
    proc = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    wall = time.monotonic() - start
    (work / f"{tag}.log").write_text(proc.stdout)
    results = parse_junit(junit) if junit.exists() else {}
    info = json.loads(state.read_text()) if state.exists() else {}
    return results, wall, info, proc.returncode, proc.stdout


def parse_junit(path):
    """{test id: (outcome, message, text)}; a test id is `Class::test` (subtests fold into it)."""
    results = {}
    for case in ET.parse(path).iter("testcase"):
        test = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        outcome, message, text = "passed", "", ""
        for child in case:
            if child.tag in ("failure", "error"):
                message, text = child.get("message", ""), child.text or ""
                outcome = "timeout" if "Timeout" in message else ("failed" if child.tag == "failure" else "error")
                break
            if child.tag == "skipped":
                outcome, message = "skipped", child.get("message", "")
        prior = results.get(test)
        # a test with failing subtests shows up more than once: the worst outcome wins
        if prior is None or _SEVERITY[outcome] > _SEVERITY[prior[0]]:
            results[test] = (outcome, message, text)
    return results


def key_lines(text, limit=14):
    lines = [line for line in text.splitlines() if line.startswith("E ") or ".py:" in line]
    return "\n".join(lines[-limit:]) if lines else "\n".join(text.splitlines()[-limit:])


def compare(unpatched, patched):
    """(findings, excluded, only-patched-passes): findings pass unpatched and do not pass patched."""
    findings, excluded, fixed = [], {}, []
    for test in sorted(set(unpatched) | set(patched)):
        before = unpatched.get(test, ("missing", "", ""))
        after = patched.get(test, ("missing", "", ""))
        if before[0] in ("failed", "error", "timeout"):
            excluded[test] = (before[0], before[1].splitlines()[0][:200] if before[1] else "")
            if after[0] == "passed":
                fixed.append(test)
        elif before[0] == "passed" and after[0] != "passed":
            findings.append((test, after))
        elif before[0] == "skipped" and after[0] not in ("skipped",):
            if after[0] != "passed":
                findings.append((test, after))
    return findings, excluded, fixed


def counts(results):
    return {outcome: sum(1 for r in results.values() if r[0] == outcome) for outcome in OUTCOMES}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of: "
                        + ", ".join(FAMILIES))
    parser.add_argument("--modes", default="unpatched,patched")
    parser.add_argument("--quick", action="store_true", help=f"-k {QUICK!r}")
    parser.add_argument("-k", default=None, help="pytest -k expression (overrides --quick)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per test (pytest-timeout)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", default=None, help="where logs, junit files and summary.json go")
    parser.add_argument("--upstream-tests", default=None, metavar="DIR",
                        help="a transformers checkout at the installed release's tag: run its own model tests")
    parser.add_argument("--fetch-only", action="store_true", help="download the sdist tests and stop")
    args = parser.parse_args(argv)
    version = _version()
    if args.fetch_only:
        print(f"transformers {version} sdist tests: {fetch_sdist_tests(version)}")
        return 0
    if args.k is None and args.quick:
        args.k = QUICK
    missing = [m for m in ("parameterized", "pytest_timeout") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"install {', '.join(m.replace('_', '-') for m in missing)} first "
                         "(the mixin imports parameterized; the per-test timeout is pytest-timeout)")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    modes = [m.strip() for m in args.modes.split(",")]
    work = Path(args.out or tempfile.mkdtemp(prefix=f"modeling-common-{version}-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "tree"
    files = assemble(tree, version, args.upstream_tests)
    print(f"transformers {version}; tree {tree}; -k {args.k!r}; timeout {args.timeout}s", flush=True)
    summary, all_findings, status = {"transformers": version, "k": args.k, "families": {}}, [], 0
    for family in families:
        if family not in files:
            print(f"{family}: no test file in the tree (upstream has none for this release)")
            continue
        row = summary["families"][family] = {}
        runs = {}
        for mode in modes:
            results, wall, info, rc, output = run_file(tree, files[family], mode, work, args)
            runs[mode] = results
            row[mode] = {"counts": counts(results), "wall_s": round(wall, 1), "rc": rc,
                         "records": info.get("records", {}), "wrapped": info.get("wrapped", {})}
            module = MODULE.get(family, family)
            wrapped = info.get("wrapped", {}).get(f"modeling_{module}", [])
            print(f"{family:17} {mode:9} {wall:7.1f}s rc={rc} " +
                  " ".join(f"{k}={v}" for k, v in counts(results).items()) +
                  (f"  wrapped: {', '.join(wrapped) or 'NOTHING'}" if mode == "patched" else ""), flush=True)
            if not results:
                print(output[-3000:])
                status = 2
            if mode == "patched" and not wrapped and family_present(info, results):
                print(f"  note: no target of the records is wrapped in modeling_{module}: "
                      "this [patched] run is the unpatched model")
        if set(modes) == {"unpatched", "patched"}:
            findings, excluded, fixed = compare(runs["unpatched"], runs["patched"])
            row["excluded"] = {t: list(v) for t, v in excluded.items()}
            row["patched_only_passes"] = fixed
            row["findings"] = [{"test": t, "outcome": r[0], "message": r[1], "key_lines": key_lines(r[2])}
                               for t, r in findings]
            for test, result in findings:
                all_findings.append((family, test, result))
                print(f"  FINDING {files[family]}::{test}: passes unpatched, {result[0]} patched\n"
                      + "    " + key_lines(result[2]).replace("\n", "\n    "))
            for test, (outcome, reason) in excluded.items():
                print(f"  excluded ({outcome} unpatched) {test}: {reason}")
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{len(all_findings)} finding(s); summary {work / 'summary.json'}")
    return 1 if all_findings else status


def family_present(info, results):
    return any(outcome != "skipped" for outcome, _, _ in results.values())


if __name__ == "__main__":
    sys.exit(main())
