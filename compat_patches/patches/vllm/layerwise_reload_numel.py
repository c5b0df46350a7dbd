"""vllm-layerwise-reload-numel: layerwise reload no longer finalises a layer early.

The bug (read with ``ast`` in every vLLM wheel 0.11.0 - 0.33.0, run on CPU on 0.16.0 - 0.26.0; table
in docs/patches/vllm-layerwise-reload-numel.md): vLLM's layerwise weight reload
(``vllm/model_executor/model_loader/reload``, new in 0.16.0; used by ``reload_weights`` /
``start_/finish_weight_update`` and by RL frameworks that call ``initialize_layerwise_reload`` /
``model.load_weights`` / ``finalize_layerwise_reload`` themselves) counts, per layer, the elements
each weight loader copies (``get_numel_loaded``: a ``TorchDispatchMode`` counting ``aten.copy_``)
and processes the layer as soon as the count reaches the layer's size. ``composed_weight_loader`` copies
into its parameter twice (the load, then ``param.data.copy_(fn(param))``), so it counts double; a
layer whose other parameters are not all loaded yet is then materialised (``empty_strided``) and
processed early, and the parameters loaded after that are dropped ("excessive loading"): they keep
uninitialised memory. MambaMixer2 (NemotronH, Falcon-H1, Bamba, ... : ``A`` is loaded as
``-exp(A_log)`` through ``composed_weight_loader``, then ``D`` / ``dt_bias``) and PLaMo 2/3 are hit:
NaN/inf logits after a weight update. vLLM 0.24.0 caps the count at the destination parameter's
size (vllm#44814: ``numel = min(numel, param.numel())``).

Targets: ``reload.meta.get_numel_loaded`` and the name ``get_numel_loaded`` that
``reload/layerwise.py`` binds with ``from .meta import get_numel_loaded`` (the caller; wrapping the
``meta`` attribute alone would not reach it), both reached from the ``reload`` package, whose import
completes only after ``layerwise.py`` has bound the original (see ``_RELOAD``). The wrapper runs
the original and caps its count exactly as 0.24.0 does, so it is the upstream body applied to what
the original returns: the return value of the weight loader is passed through untouched, and nothing
else changes. Capping is idempotent, so a call reaching both wrappers (there is none in vLLM) would
still be right.

Two buggy bodies exist (0.16.0 - 0.18.1: ``MetaCopyCounter`` after an ``assert`` that the parameter
is on the meta device; 0.19.0 - 0.23.0: ``CopyCounter``); the ``check`` fingerprint accepts exactly
these two, so any other body is reported ``drifted``. A body that already caps with ``min(...)`` (a
source build after vllm#44814, a vendor backport) is reported ``not-needed`` (``fixed=``).
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces
from compat_patches.core.source import fingerprint

#: ``ast.unparse`` of the function body (docstring dropped) in the affected releases.
BUGGY_BODIES = {
    "0.16.0 - 0.18.1": """\
assert args.arguments['param'].device.type == 'meta'
with MetaCopyCounter() as counter:
    return_value = weight_loader(*args.args, **args.kwargs)
return (counter.copied_numel, return_value)""",
    "0.19.0 - 0.23.0": """\
with CopyCounter() as counter:
    return_value = weight_loader(*args.args, **args.kwargs)
return (counter.copied_numel, return_value)""",
}

PARAMS = ("weight_loader", "args")

def _caps_with_min(body):
    """Whether the body caps its count with ``min(...)`` (the vLLM 0.24.0 fix)."""
    import ast

    for node in ast.walk(ast.parse(body)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "min":
            return True
    return False


_ON_TOP = "our cap would sit on top of an unknown count"


def fixed_body(original):
    """Why `original` already carries the upstream fix, or None."""
    source, _ = fingerprint(original, _ON_TOP)
    if source is not None and source[1] not in BUGGY_BODIES.values() and _caps_with_min(source[1]):
        return "caps the copied count with min(...) already (vllm#44814, vLLM 0.24.0)"
    return None


def check_body(original):
    """Drift reason, or None when `original` is one of the two buggy bodies exactly."""
    source, reason = fingerprint(original, _ON_TOP)
    if reason is not None or source[1] in BUGGY_BODIES.values():
        return reason
    return "body differs from the vLLM 0.16.0 - 0.23.0 get_numel_loaded it was written for"


def _arguments(weight_loader, args):
    return args


def _capped_numel_loaded(wrapped, instance, args, kwargs):
    """vLLM 0.24.0's cap on what the original counted: at most the destination's size."""
    import torch

    numel, return_value = wrapped(*args, **kwargs)
    bound = _arguments(*args, **kwargs)
    param = bound.arguments.get("param", None)
    if isinstance(param, torch.Tensor):
        numel = min(numel, param.numel())
    return numel, return_value


#: Both names are reached from the package: its post-import hook runs after ``reload/__init__.py``
#: has imported ``layerwise`` (every release 0.16.0 - 0.23.0 does), so ``layerwise.py`` has bound
#: the original function by then. Hooking ``reload.meta`` itself would wrap the function before
#: ``layerwise.py`` imports it by name: ``layerwise`` would bind our wrapper and keep it after
#: revert.
_RELOAD = "vllm.model_executor.model_loader.reload:"

_REPLACES = Replaces(
    symbols=("vllm.model_executor.model_loader.reload.meta:get_numel_loaded",
             "vllm.model_executor.model_loader.reload.layerwise:get_numel_loaded"),
    copies=(
        Copy("NovaSky-AI/SkyRL", "skyrl/backends/skyrl_train/inference_servers/layerwise_reload.py",
             "patch_numel_loaded", commit="a9564572eb8e", inventory=28,
             what="rebinds `reload.meta.get_numel_loaded` and `reload.layerwise.get_numel_loaded` to a copy "
                  "of the 0.24.0 function; the copy imports `CopyCounter`, which 0.16.0 - 0.18.1 do not "
                  "have, so it also broke on those releases."),
        Copy("PrimeIntellect-ai/prime-rl", "src/prime_rl/inference/vllm/worker/nccl.py",
             "_restore_reload_corrupted_params",
             what="(PR 2714) re-copies every received `.mixer.D` after a reload; dropped by prime-rl "
                  "when it moved to vLLM 0.24."),
    ),
    note="Adopting this record: delete SkyRL's function, its `patch_numel_loaded()` call and the copied "
         "`get_numel_loaded` (if both are applied, this record sees their function, already capping, and "
         "reports `not-needed`); on 0.16 - 0.23, prime-rl's function and its call.",
)

PATCH = Patch(
    name="vllm-layerwise-reload-numel",
    summary="layerwise weight reload counts a composed_weight_loader parameter once, so a layer is "
            "not finalised early and its trailing parameters (MambaMixer2 D / dt_bias) are loaded "
            "instead of left as uninitialised memory",
    upstream="https://github.com/vllm-project/vllm/pull/44814",
    affected={"vllm": ">=0.16.0.dev0,<0.24.0"},
    fixed_in="vllm 0.24.0",
    targets=(
        Target(_RELOAD + "meta.get_numel_loaded", wrapper=_capped_numel_loaded, params=PARAMS,
               check=check_body, fixed=fixed_body),
        Target(_RELOAD + "layerwise.get_numel_loaded", wrapper=_capped_numel_loaded,
               params=PARAMS, check=check_body, fixed=fixed_body),
    ),
    upstream_tests=(
        "tests/upstream/vllm/test_reload.py::test_get_numel_loaded_caps_at_param_size",
        "tests/upstream/vllm/test_reload.py::"
        "test_layerwise_reload_composed_loader_does_not_drop_params",
    ),
    notes="Backports vllm#44814 (released in 0.24.0): the count returned by get_numel_loaded is "
          "capped at the destination parameter's numel(). Both the meta module's function and the "
          "name reload/layerwise.py imports from it are wrapped (layerwise.py is the caller).",
    replaces=_REPLACES,
)
