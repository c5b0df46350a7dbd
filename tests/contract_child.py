"""Child side of the contract test: run the steps, print what each target looks like after each."""

import importlib
import json
import sys

import wrapt

spec = json.loads(sys.argv[1])
module_name, _, attr = spec["manager"].partition(":")
manager = getattr(importlib.import_module(module_name), attr)()
patch = manager.get(spec["patch"])
first = manager.report()[spec["patch"]]
if first.status != "pending":
    print(json.dumps({"skip": f"{spec['patch']} is {first.status} here: {first.reason}"}))
    sys.exit(0)
targets = list(manager.targets_for(spec["patch"]))  # the shapes this version selects, not paths
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
                print(json.dumps({"skip": f"cannot import {target.module} here: {exc!r}"}))
                sys.exit(0)
            if manager.report()[spec["patch"]].status == "pending":  # imported before any apply
                originals[target.path] = wrapt.resolve_path(module, target.attribute)[2]
    elif step == "apply":
        manager.apply_all(only=[spec["patch"]])
    elif step == "revert":
        manager.revert_all()
    states.append(observe())
print(json.dumps({"states": states}))
