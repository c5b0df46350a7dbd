"""The contract every patch gets for free, generated from its record (ddtrace PatchTestCase model).

Each ordering of import / apply / apply again / revert runs in a fresh process (forked from a server
that has imported only libraries no record patches, so torch is imported once); after every step
the child reports, per target, how many of OUR wrappers sit on it and whether it is the very
original object. Expected: wrapped exactly once while applied and imported, never twice, and the
original object (`is`) once reverted.
"""

import importlib.util
import itertools
import multiprocessing
import os
import threading

from . import contract_child

ORDERINGS = sorted(set(itertools.permutations(("import", "apply", "apply", "revert"))))
ORDERINGS += [("apply", "revert", "apply", "import", "revert"), ("import", "apply", "revert", "apply", "revert")]

# Imported once by the fork server instead of by each of the 16 children of every patch: libraries
# no record patches (the child fails if a target module was imported before its first step).
# torch._dynamo and torch._inductor (imported by transformers' and vLLM's modules) cost a child
# more than torch itself.
PRELOAD = ("torch", "torch._dynamo", "torch._inductor.standalone_compile")
_server = None
_server_lock = threading.Lock()


def _importable(name):
    top = name.partition(".")[0]  # find_spec of a submodule imports its package: absent is not an error
    return importlib.util.find_spec(top) is not None and importlib.util.find_spec(name) is not None


def _fork_server():
    global _server
    with _server_lock:
        if _server is None:
            context = multiprocessing.get_context("forkserver")
            present = [name for name in PRELOAD if _importable(name)]
            context.set_forkserver_preload([contract_child.__name__, *present])
            _server = context
        return _server


def ordering_id(ordering):
    return "-".join(ordering)


def run_ordering(patch_name, ordering, manager_factory="compat_patches:_default_manager",
                 extra_path=(), env=None, timeout=300):
    """One ordering in a fresh process: forked from a server that imported nothing of compat_patches
    nor of any patched library; this process's environment (plus `env`) is the child's."""
    spec = {"patch": patch_name, "steps": list(ordering), "manager": manager_factory}
    context = _fork_server()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=contract_child.main,
                            args=(spec, dict(os.environ, **(env or {})), list(extra_path), send))
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise AssertionError(f"contract child for {patch_name} {ordering_id(ordering)} "
                                 f"gave no result in {timeout} s")
        result = receive.recv()
    except EOFError:
        result = {"error": f"contract child died without a result (exit code {child.exitcode})"}
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    if "error" in result:
        raise AssertionError(f"contract child failed:\n{result['error']}")
    return result


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
