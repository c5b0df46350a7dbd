"""conftest.py of the tree run.py assembles (copied there as ``conftest.py``; not collected here).

After collection (the family's modeling module is imported by then) it writes to
$COMPAT_MODELING_COMMON_STATE which targets of the packed-samples records are wrapped right now, so
that run.py can tell a [patched] run that really ran the wrappers from one that patched nothing (a
family the record does not cover on this release).
"""

import json
import os
import sys

RECORDS = ("transformers-gdn-packed-samples", "transformers-mamba2-packed-samples")


def _wrapped_targets():
    try:
        import compat_patches
        import wrapt
    except ImportError:
        return {}, {}
    statuses, wrapped = {}, {}
    proxies = tuple(t for t in (getattr(wrapt, "BaseObjectProxy", None), getattr(wrapt, "ObjectProxy", None)) if t)
    for entry in compat_patches.report():
        if entry.name in RECORDS:
            statuses[entry.name] = f"{entry.status}: {entry.reason}" if entry.reason else entry.status
    for name in RECORDS:
        try:
            record = compat_patches.get_patch(name)
        except Exception:  # not registered in this checkout
            continue
        for target in record.targets:
            module = sys.modules.get(target.module)
            if module is None:
                continue
            try:
                current = wrapt.resolve_path(module, target.attribute)[2]
            except Exception:
                continue
            if isinstance(current, proxies):  # our wrappers are wrapt FunctionWrapper subclasses
                wrapped.setdefault(target.module.rsplit(".", 1)[-1], set()).add(target.attribute)
    return statuses, {module: sorted(attrs) for module, attrs in wrapped.items()}


def pytest_collection_finish(session):
    path = os.environ.get("COMPAT_MODELING_COMMON_STATE")
    if not path:
        return
    import transformers

    statuses, wrapped = _wrapped_targets()
    with open(path, "w") as out:
        json.dump({"transformers": transformers.__version__, "records": statuses, "wrapped": wrapped,
                   "collected": len(session.items)}, out, indent=1)
