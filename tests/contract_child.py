"""Child side of the contract test: run the steps, report what each target looks like after each.

Runs in a process forked from the contract fork server (tests/contract.py), which has imported
nothing but this module and the libraries no record patches (torch): the child checks that every
target module is still unimported when it starts.
"""

import importlib
import os
import sys
import traceback

import wrapt


def main(spec, environ, extra_path, connection):
    """Entry point in the forked child: `environ` replaces the environment, `extra_path` goes first
    on sys.path (as PYTHONPATH would), the result goes back through `connection`."""
    os.environ.clear()
    os.environ.update(environ)
    sys.path[:0] = extra_path
    try:
        result = run(spec)
    except BaseException:
        result = {"error": traceback.format_exc()}
    connection.send(result)
    connection.close()


def run(spec):
    module_name, _, attr = spec["manager"].partition(":")
    manager = getattr(importlib.import_module(module_name), attr)()
    first = manager.report()[spec["patch"]]
    if first.status != "pending":
        return {"skip": f"{spec['patch']} is {first.status} here: {first.reason}"}
    targets = list(manager.targets_for(spec["patch"]))  # the shapes this version selects, not paths
    preloaded = sorted({t.module for t in targets if t.module in sys.modules})
    if preloaded:
        return {"error": f"target modules imported before the first step: {preloaded} "
                         "(the fork server must not preload a patched library)"}
    originals = {}

    def observe():
        out = {}
        for target in targets:
            module = sys.modules.get(target.module)
            if module is None:
                out[target.path] = None
                continue
            _, _, current = wrapt.resolve_path(module, target.attribute)
            ours = sum(1 for e in wrapt.wrapper_chain(current)
                       if getattr(e, "_self_wrapper", None) is target.wrapper)
            known = target.path in originals
            out[target.path] = {"ours": ours, "original_known": known,
                                "is_original": known and current is originals[target.path]}
        return {"status": manager.report()[spec["patch"]].status, "targets": out}

    states = []
    for step in spec["steps"]:
        if step == "import":
            for target in targets:
                try:
                    module = importlib.import_module(target.module)
                except Exception as exc:  # e.g. vllm_ascend needs torch_npu
                    return {"skip": f"cannot import {target.module} here: {exc!r}"}
                if manager.report()[spec["patch"]].status == "pending":  # imported before any apply
                    originals[target.path] = wrapt.resolve_path(module, target.attribute)[2]
        elif step == "apply":
            manager.apply_all(only=[spec["patch"]])
        elif step == "revert":
            manager.revert_all()
        states.append(observe())
    return {"states": states}
