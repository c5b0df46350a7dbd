"""The contract every patch gets for free, generated from its record (ddtrace PatchTestCase model).

Each ordering of import / apply / apply again / revert runs in a fresh interpreter; after every step
the child reports, per target, how many of OUR wrappers sit on it and whether it is the very
original object. Expected: wrapped exactly once while applied and imported, never twice, and the
original object (`is`) once reverted.
"""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

ORDERINGS = sorted(set(itertools.permutations(("import", "apply", "apply", "revert"))))
ORDERINGS += [("apply", "revert", "apply", "import", "revert"), ("import", "apply", "revert", "apply", "revert")]

CHILD = Path(__file__).with_name("contract_child.py")


def ordering_id(ordering):
    return "-".join(ordering)


def run_ordering(patch_name, ordering, manager_factory="compat_patches:_default_manager",
                 extra_path=(), env=None):
    spec = {"patch": patch_name, "steps": list(ordering), "manager": manager_factory}
    child_env = dict(os.environ, **(env or {}))
    child_env["PYTHONPATH"] = os.pathsep.join([*extra_path, child_env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(CHILD), json.dumps(spec)], capture_output=True,
                          text=True, env=child_env, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"contract child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_ordering(result, ordering):
    """Assert the observed states against the model; returns a readable trace."""
    if result.get("skip"):
        return result
    applied = imported = False
    for step, observed in zip(ordering, result["states"]):
        if step == "apply":
            applied = True
        elif step == "revert":
            applied = False
        elif step == "import":
            imported = True
        where = f"after {step} in {ordering_id(ordering)}"
        expected_status = ("applied" if imported else "deferred") if applied else "pending"
        assert observed["status"] == expected_status, (where, observed)
        for path, target in observed["targets"].items():
            if not imported:
                assert target is None, (where, path)
                continue
            assert target["ours"] == (1 if applied else 0), (where, path, target)
            if not applied and target["original_known"]:
                assert target["is_original"], (where, path, "revert did not restore the original")
    return result
