"""The version matrix: one session per set of library versions, all sharing one CPU torch.

    nox -t quick            # what .ci/run runs (41 minutes on CI at stop 31, before the contract preload)
    nox -t full             # every set, by hand
    nox -t newest           # the newest releases on PyPI now: every record's tests and the audit
    nox -s "matrix(set='transformers-5.3.0')"

Torch is installed once (pip --target) into .nox/_shared/torch and put on every session's path
with a .pth file, so a session only installs the pure-Python libraries it tests.
"""

import os
import sys
from pathlib import Path
from typing import List, NamedTuple

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
SHARED_TORCH = Path(os.environ.get("COMPAT_PATCHES_SHARED_TORCH", ROOT / ".nox" / "_shared" / "torch"))
REPORTS = ROOT / ".nox" / "_reports"
TEST_DEPS = ["pytest>=8", "hypothesis", "pytest-xdist"]
# Quick sets run their tests in one worker per core (a file per worker: module fixtures are built
# once), except the sets that start process groups on fixed ports (Ray, torchrun, verl's engine).
SERIAL_SETS = ("distributed", "verl-")

# Each set is one venv. Tests declare what they need with @pytest.mark.requires(...) and skip, with
# the reason, where it is absent; a library set runs only the tests it exists for, plus the contract
# and public-API tests, which then see that library installed.
class VersionSet(NamedTuple):
    requirements: List[str]
    torch: bool
    tags: List[str]
    tests: List[str] = []  # empty: the whole suite
    no_deps: List[str] = []  # installed with --no-deps (their declared pins conflict with transformers 5)


QUICK, FULL = ["quick", "full"], ["full"]
COMMON = ["tests/test_contract.py", "tests/test_public_api.py", "tests/test_report_deep.py"]
UPSTREAM_RECORDS = "tests/test_upstream_records.py"  # every record's upstream_tests exist
# The generated contract is the costliest test (a fresh process per ordering); a library's sets prove
# its own records' contracts, the transformers sets every transformers record's.
# transformers-stale-loss-kwargs unwraps PEFT models as Trainer does: proved where peft is installed
STALE_LOSS_PEFT = ("tests/patches/transformers/test_stale_loss_kwargs.py"
                   "::test_a_peft_wrapped_model_is_unwrapped_as_trainer_does")
PEFT = ["tests/patches/peft", "tests/upstream/peft", STALE_LOSS_PEFT, *COMMON, "--contract-libraries=peft"]
# peft 0.16-0.17 cannot import under transformers 5 without the patch: PEFT's own tests cannot be
# collected (and transformers.trainer, which imports peft, cannot be imported by a contract child
# that applies only a transformers record: those run in the transformers sets).
PEFT_IMPORT = ["tests/patches/peft", *COMMON, "--contract-libraries=peft"]
TRANSFORMERS = ["tests/patches/transformers", "tests/upstream/transformers", UPSTREAM_RECORDS, *COMMON]
TF, TF_UPSTREAM = "tests/patches/transformers/", "tests/upstream/transformers/"
# each transformers record's own test files (a quick set runs those of the shapes it proves)
RECORD_TESTS = {
    "transformers-rope-ignore-keys": [TF + "test_rope_ignore_keys.py", TF + "test_patched_callables_serialise.py",
                                      TF_UPSTREAM + "test_modeling_rope_utils.py"],
    "transformers-byte-level-tokenizer": [TF + "test_byte_level_tokenizer.py"],
    "transformers-missing-weights-init": [TF + "test_missing_weights_init.py"],
    "transformers-vl-processor-ragged-batch": [TF + "test_vl_processor_ragged_batch.py"],
    "transformers-gpt-oss-num-experts": [TF + "test_gpt_oss_num_experts.py"],
    "transformers-gdn-packed-samples": [TF + "test_gdn_packed_samples.py"],
    "transformers-mamba2-packed-samples": [TF + "test_mamba2_packed_samples.py"],
    "transformers-stale-loss-kwargs": [TF + "test_stale_loss_kwargs.py", TF + "test_trainer_loss_overrides.py",
                                       TF_UPSTREAM + "test_trainer_gradient_accumulation.py"],
    "transformers-trainer-token-count": [TF + "test_trainer_token_count.py", TF_UPSTREAM + "test_trainer_token_count.py"],
    "transformers-qwen3-5-moe-fused-save": [TF + "test_qwen3_5_moe_fused_save.py"],
    "transformers-zero3-dropped-keys": [TF + "test_zero3_dropped_keys.py"],
}
FSDP = ["tests/patches/verl", "tests/moe/test_packed_experts.py", "tests/upstream/verl",
        UPSTREAM_RECORDS, *COMMON, "--contract-libraries=verl"]
LIBRARY_TESTS = ["tests/moe", "tests/patches", "tests/upstream", "tests/test_packed_samples.py", UPSTREAM_RECORDS,
                 "tests/test_distributed_sync.py", "tests/core/test_compile.py", "tests/test_audit.py", *COMMON]
# transformers' own common model tests (ModelTesterMixin from the release's sdist) against every model
# the packed-samples records wrap, patched and unpatched
MODELING_COMMON = ["tests/test_modeling_common_harness.py"]
MODELING_COMMON_DEPS = ["parameterized", "pytest-timeout"]
# the report command with transformers but no torch (its banner must stay off stdout)
REPORT_COMMAND = "tests/test_report_command.py"
# What verl's modules import (its declared requirements pull wandb, tensorboard, full Ray, torchdata).
VERL_IMPORTS = ["ray==2.60.0", "msgpack", "protobuf", "requests", "jsonschema", "tensordict==0.10.0",
                "pyvers", "cloudpickle", "omegaconf", "peft", "accelerate", "datasets", "pandas",
                "pyarrow", "pillow", "codetiming", "orjson"]


def trl_requirements(version):
    return [f"trl=={version}", "datasets", "requests"]


# the Trainer-loss records under trl's trainers: trl 0.29.0 is the oldest trl that imports under
# transformers 5 (the newest, 1.16.0, runs in the transformers-5.25.0 set)
TRL = ["tests/patches/transformers/test_trainer_loss_trl.py", "tests/patches/transformers/test_stale_loss_kwargs.py",
       "tests/patches/transformers/test_trainer_loss_overrides.py"]


VLLM = ["tests/patches/vllm", "tests/upstream/vllm", "tests/test_vllm_plugin.py", *COMMON,
        "--contract-libraries=vllm"]
# affected (and vLLM's own plugin loader); newest (V1 runner gone): each with the records whose
# generated contract it runs
VLLM_QUICK = {
    "0.18.0": ("vllm-fused-expert-kwargs", "vllm-layerwise-reload-numel", "vllm-hybrid-fp8-kv-wake",
               "vllm-moe-reprocess-storage"),
    "0.34.0": ("vllm-flashinfer-moe-layout", "vllm-hyv4-fused-expert-kwargs", "vllm-stateless-pg-ipv6"),
}
VLLM_RELEASES = ("0.18.0", "0.18.1", "0.19.0", "0.19.1", "0.20.0", "0.20.1", "0.20.2", "0.21.0",
                 "0.22.0", "0.22.1", "0.23.0", "0.24.0", "0.25.0", "0.25.1", "0.26.0", "0.27.0",
                 "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0", "0.33.0", "0.34.0")
# PyPI torchvision links CUDA libtorch; this shim lets its Python part import beside the CPU torch
# (vLLM's Qwen-VL modules import transformers' video processors, which import torchvision).
TORCHVISION_SHIM = ROOT / ".ci" / "vllm_cpu_torchvision.py"


# DeepSpeed (an sdist): its build imports torch, so it builds against the shared CPU torch without
# isolation; no ops are compiled (DeepSpeed's default), its CPU accelerator runs ZeRO-3 on gloo.
DEEPSPEED_BUILD = ["setuptools", "wheel", "hjson", "ninja", "numpy", "psutil", "py-cpuinfo", "pydantic", "msgpack",
                   "einops", "nvidia-ml-py"]
DEEPSPEED = ["--no-build-isolation", "deepspeed==0.19.8"]


def transformers(version, tags, torch=True, extra=(), records=(), contracts=(), deepspeed=False):
    """Every transformers record's tests on one release (a full set), or, in a quick set, the tests
    of `records` (the shapes this release is the quick proof of) and the generated contracts of
    `contracts` (each record's contract runs in one quick set; full sets run every one). With torch
    (shared, cheap) unless the set exists to prove something without it: a test that needs torch
    must not skip where its patch is in range. Pillow: the VL processors' image path; accelerate:
    Trainer (gradient-accumulation records)."""
    if "quick" in tags:
        tests = [file for record in records for file in RECORD_TESTS[record]]
        tests += [UPSTREAM_RECORDS, *COMMON, f"--contract-records={','.join(contracts) or 'none'}"]
    else:
        tests = TRANSFORMERS
    return VersionSet([f"transformers=={version}", "pillow", *(["accelerate"] if torch else []),
                       *(DEEPSPEED_BUILD if deepspeed else [])], torch, tags, [*tests, *extra],
                      DEEPSPEED if deepspeed else [])


def verl(version, transformers, tags):
    return VersionSet([f"transformers=={transformers}", *VERL_IMPORTS], True, tags, FSDP,
                      [f"verl=={version}"])


def vllm(version):
    """vLLM's declared requirements pull CUDA builds; the file pins vllm and what importing its
    model modules needs on CPU (see .ci/requirements/). A quick set runs the contracts of
    VLLM_QUICK[version] (each vLLM record's in one quick set), a full set every vLLM record's."""
    quick = version in VLLM_QUICK
    contracts = [f"--contract-records={','.join(VLLM_QUICK[version])}"] if quick else []
    return VersionSet([], True, QUICK if quick else FULL, [*VLLM, *contracts],
                      ["-r", f".ci/requirements/vllm-{version}.txt"])

VERSION_SETS = {
    "core": VersionSet([], False, QUICK),
    "wrapt-2.4.0": VersionSet(["wrapt==2.4.0"], False, QUICK, ["tests/core", *COMMON]),  # setup.cfg's floor
    # newest transformers: oracles of the tensor helpers, not-needed checks, vllm-ascend sources (ast),
    # the audit of uncovered classes (tools/audit.py)
    # the Trainer-loss records under the newest trl's trainers, and transformers' own common model tests
    # for one family per packed-samples record (the full-only modeling-common set: every family)
    "transformers-5.25.0": VersionSet(["transformers==5.25.0", "accelerate", "pillow", *MODELING_COMMON_DEPS,
                                       *trl_requirements("1.16.0")], True, QUICK, [*LIBRARY_TESTS, *MODELING_COMMON]),
    "transformers-5.25.0-modeling-common": VersionSet(
        ["transformers==5.25.0", "accelerate", *MODELING_COMMON_DEPS], True, FULL, MODELING_COMMON),
    # transformers records, each range measured on every 5.x release (docs/patches/transformers-*):
    # rope = rope-ignore-keys, tok = byte-level-tokenizer, init = missing-weights-init,
    # vl = vl-processor-ragged-batch, gpt = gpt-oss-num-experts
    # vl (only affected release); the <5.4 shapes: rope keyword, gpt own __setattr__, Qwen3.5 GDN;
    # token count with accelerate's second division
    # The quick sets split the records' shapes between them (docs/matrix.md); the 5.25.0 set runs
    # every record's tests and the contract of every record in range there.
    "transformers-5.3.0": transformers("5.3.0", QUICK, records=(
        "transformers-rope-ignore-keys", "transformers-gpt-oss-num-experts", "transformers-gdn-packed-samples",
        "transformers-vl-processor-ragged-batch", "transformers-byte-level-tokenizer",
        "transformers-trainer-token-count", "transformers-qwen3-5-moe-fused-save"),
        contracts=("transformers-trainer-token-count",)),
    "transformers-5.2.0": transformers("5.2.0", FULL),  # Qwen3.5's first release
    "transformers-5.4.0": transformers("5.4.0", QUICK, records=(  # rope attribute shape; gpt strict shape
        "transformers-rope-ignore-keys", "transformers-gpt-oss-num-experts", "transformers-gdn-packed-samples",
        "transformers-mamba2-packed-samples", "transformers-trainer-token-count",
        "transformers-qwen3-5-moe-fused-save", "transformers-zero3-dropped-keys"),
        contracts=("transformers-rope-ignore-keys", "transformers-gpt-oss-num-experts",
                   "transformers-zero3-dropped-keys"), deepspeed=True),  # a real ZeRO-3 from_pretrained
    "transformers-5.8.1": transformers("5.8.1", QUICK, records=(  # init (with 5.8.0 the only affected)
        "transformers-missing-weights-init", "transformers-stale-loss-kwargs", "transformers-trainer-token-count"),
        contracts=("transformers-missing-weights-init",)),
    # rope last affected, first fixed of init; no torch: the report command keeps its banner off stdout
    "transformers-5.9.0": transformers("5.9.0", QUICK, torch=False, extra=[REPORT_COMMAND], records=(
        "transformers-rope-ignore-keys", "transformers-missing-weights-init", "transformers-byte-level-tokenizer",
        "transformers-vl-processor-ragged-batch"),
        contracts=("transformers-byte-level-tokenizer",)),
    # a real ZeRO-3 load of a per-expert MoE checkpoint (zero3-dropped-keys' 5.0 and 5.1 causes)
    **{f"transformers-{v}": transformers(v, FULL, deepspeed=True) for v in ("5.0.0", "5.1.0")},
    **{f"transformers-{v}": transformers(v, FULL)
       for v in ("5.0.0rc0", "5.0.0rc3", "5.5.0", "5.5.3", "5.5.4", "5.6.0", "5.7.0", "5.8.0",
                 "5.10.0", "5.10.1", "5.14.1", "5.15.0", "5.16.1", "5.17.0", "5.20.0", "5.21.1", "5.22.0",
                 "5.23.0", "5.24.0")},
    "trl-0.29.0": VersionSet(["transformers==5.24.0", "accelerate", "pillow", *trl_requirements("0.29.0")],
                             True, FULL, TRL),
    # fsdp-packed-experts: verl's real FSDP engine on CPU (gloo, world size 1)
    "verl-0.8.0": verl("0.8.0", "5.9.0", QUICK),  # packed keys streamed; the patch expands them
    "verl-0.9.1": verl("0.9.1", "5.9.0", FULL),   # fixed upstream: not-needed, same stream as ours
    "verl-0.7.1": verl("0.7.1", "5.9.0", FULL),
    "verl-0.6.0": verl("0.6.0", "5.0.0rc2", FULL),
    # vllm-fused-expert-kwargs and vLLM's own plugin loader, on CPU
    **{f"vllm-{v}": vllm(v) for v in VLLM_RELEASES},
    "distributed": VersionSet(["ray==2.60.0"], True, QUICK, [  # Ray workers, torchrun, launcher
        "tests/test_ray.py", "tests/test_torchrun.py", "tests/test_launcher.py"]),
    # peft-hybrid-cache-import: 0.16.0-0.17.1 need the alias from transformers 5.0.0rc3 on
    "peft-0.17.1": VersionSet(["peft==0.17.1", "transformers==5.24.0"], True, QUICK, PEFT_IMPORT),
    "peft-0.17.0": VersionSet(["peft==0.17.0", "transformers==5.0.0rc3"], True, FULL, PEFT_IMPORT),
    "peft-0.16.0": VersionSet(["peft==0.16.0", "transformers==5.0.0"], True, FULL, PEFT_IMPORT),
    "peft-0.17.1-transformers-4.57.6": VersionSet(["peft==0.17.1", "transformers==4.57.6"], True, FULL,
                                                  PEFT_IMPORT),
    # peft-moe-regex-targets, peft-shared-expert-targets: 0.18 has no conversion; 0.19.0-0.21.2 are wrong
    "peft-0.18.1": VersionSet(["peft==0.18.1", "transformers==5.17.0"], True, FULL, PEFT),
    "peft-0.19.0": VersionSet(["peft==0.19.0", "transformers==5.17.0"], True, FULL, PEFT),
    "peft-0.19.1": VersionSet(["peft==0.19.1", "transformers==5.17.0"], True, FULL, PEFT),
    "peft-0.20.0": VersionSet(["peft==0.20.0", "transformers==5.17.0"], True, FULL, PEFT),
    "peft-0.21.0": VersionSet(["peft==0.21.0", "transformers==5.17.0"], True, FULL, PEFT),
    "peft-0.21.1": VersionSet(["peft==0.21.1", "transformers==5.24.0"], True, FULL, PEFT),
    "peft-0.21.2": VersionSet(["peft==0.21.2", "transformers==5.24.0"], True, QUICK, PEFT),
}


def _site_packages(session):
    return session.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                       silent=True).strip().splitlines()[-1]


def _torchvision_shim(session):
    purelib = Path(_site_packages(session))
    (purelib / "_compat_patches_cpu_torchvision.py").write_text(TORCHVISION_SHIM.read_text())
    (purelib / "_compat_patches_cpu_torchvision.pth").write_text("import _compat_patches_cpu_torchvision\n")


def _shared_torch(session):
    if not (SHARED_TORCH / "torch" / "__init__.py").exists():
        session.run(sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target",
                    str(SHARED_TORCH), TORCH, external=True)
    Path(_site_packages(session), "_compat_patches_shared_torch.pth").write_text(f"{SHARED_TORCH}\n")


@nox.session
@nox.parametrize("set", [nox.param(name, tags=spec.tags) for name, spec in VERSION_SETS.items()])
def matrix(session, set):
    spec = VERSION_SETS[set]
    if spec.torch:
        _shared_torch(session)
    # --no-compile: byte-compiling every file of transformers / vLLM at install costs more than
    # compiling the modules the tests import
    session.install("--no-compile", *TEST_DEPS)
    if spec.requirements:
        session.install("--no-compile", *spec.requirements)
    if spec.no_deps:
        session.install("--no-compile", "--no-deps", *spec.no_deps)
    if set.startswith("vllm-"):
        _torchvision_shim(session)
    session.install("-e", ".")
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    REPORTS.mkdir(parents=True, exist_ok=True)
    # quick sets leave out the tests marked slow (inductor compiles): the full-only sets run them
    options = ["-m", "not slow"] if "quick" in spec.tags and not session.posargs else []
    if options and not set.startswith(SERIAL_SETS):
        options += ["-n", "auto", "--dist", "loadfile"]
        session.env["OMP_NUM_THREADS"] = "1"  # one torch thread per worker: the workers fill the cores
    # pytest's exit 5 (no test collected) is a failure here, as any code but 0.
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={REPORTS / set}.xml",
                *options, *(session.posargs or spec.tests))


def _newest_release(project):
    import json
    import urllib.request

    with urllib.request.urlopen(f"https://pypi.org/pypi/{project}/json", timeout=60) as response:
        return json.load(response)["info"]["version"]  # the newest final release


@nox.session(tags=["newest"])
def newest(session):
    """The newest transformers, peft, accelerate and trl on PyPI right now: every record's tests, the
    packed-samples records against transformers' own model tests, and the audit of what no record
    covers (`nox -t newest`; vLLM's sets need a pinned requirements file each, see docs/matrix.md)."""
    pins = [f"{project}=={_newest_release(project)}" for project in ("transformers", "peft", "accelerate", "trl")]
    session.log("newest: " + ", ".join(pins))
    _shared_torch(session)
    session.install(*TEST_DEPS, "pillow", *MODELING_COMMON_DEPS, "datasets", "requests", *pins)
    session.install("-e", ".")
    REPORTS.mkdir(parents=True, exist_ok=True)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={REPORTS / 'newest'}.xml",
                "-m", "not slow", *(session.posargs or LIBRARY_TESTS))
    if not session.posargs:  # every family the packed-samples records wrap
        session.run("python", "-m", "pytest", "-p", "no:cacheprovider",
                    f"--junitxml={REPORTS / 'newest-modeling-common'}.xml", *MODELING_COMMON)
    session.run("python", "tools/audit.py")


@nox.session(tags=["quick"])
def sdist(session):
    """The sdist is complete: built from the checkout, unpacked, a test set run from it
    (tests/test_packaging.py, with the wheel's metadata and the CHANGELOG's shape)."""
    session.install(*TEST_DEPS, "setuptools>=77")
    session.install("-e", ".")
    REPORTS.mkdir(parents=True, exist_ok=True)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={REPORTS / 'sdist'}.xml",
                "tests/test_packaging.py")


@nox.session
def bench(session):
    """Import + apply overhead (no libraries needed)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/bench_import.py")
