"""The version matrix: one session per set of library versions, all sharing one CPU torch.

    nox -t quick            # what .ci/run runs (under 20 minutes on 2 cores)
    nox -t full             # every set, by hand
    nox -s "matrix(set='transformers-5.3.0')"

Torch is installed once (pip --target) into .nox/_shared/torch and put on every session's path
with a .pth file, so a session only installs the pure-Python libraries it tests.
"""

import os
import sys
from pathlib import Path

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
SHARED_TORCH = Path(os.environ.get("COMPAT_PATCHES_SHARED_TORCH", ROOT / ".nox" / "_shared" / "torch"))
REPORTS = ROOT / ".nox" / "_reports"
TEST_DEPS = ["pytest>=8", "hypothesis"]

# set id -> (requirements, needs torch, tags). Each set is one venv; tests declare what they need
# with @pytest.mark.requires(...) and skip (with the reason) in the sets that lack it.
VERSION_SETS = {
    "core": ([], False, ["quick", "full"]),
    "wrapt-2.4.0": (["wrapt==2.4.0"], False, ["quick", "full"]),  # the floor setup.cfg declares
    "torch": ([], True, ["quick", "full"]),
    "distributed": (["ray==2.60.0"], True, ["quick", "full"]),  # Ray workers, torchrun, launcher  # pure tensor helpers; vllm-ascend sources read with ast
}


def _shared_torch(session):
    if not (SHARED_TORCH / "torch" / "__init__.py").exists():
        session.run(sys.executable, "-m", "pip", "install", "--quiet", "--target", str(SHARED_TORCH),
                    TORCH, external=True)
    purelib = session.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                          silent=True).strip().splitlines()[-1]
    Path(purelib, "_compat_patches_shared_torch.pth").write_text(f"{SHARED_TORCH}\n")


@nox.session
@nox.parametrize("set", [nox.param(name, tags=tags) for name, (_, _, tags) in VERSION_SETS.items()])
def matrix(session, set):
    requirements, needs_torch, _ = VERSION_SETS[set]
    if needs_torch:
        _shared_torch(session)
    session.install(*TEST_DEPS)
    if requirements:
        session.install(*requirements)
    session.install("-e", ".")
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    REPORTS.mkdir(parents=True, exist_ok=True)
    # pytest's exit 5 (no test collected) is a failure here, as any code but 0.
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={REPORTS / set}.xml",
                *session.posargs)


@nox.session
def bench(session):
    """Import + apply overhead (no libraries needed)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/bench_import.py")
