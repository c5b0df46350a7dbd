"""vllm-moe-reprocess-storage: re-running MoE post-load processing keeps the expert storage.

The bug (read from every vLLM wheel 0.15.0 - 0.21.0 and run on CPU, see the docs page):
RL frameworks (verl, ms-swift) push new weights with ``model.load_weights(...)`` and then run
``process_weights_after_loading`` (PWAL) again. For the unquantized fused MoE,
``UnquantizedFusedMoEMethod._setup_kernel(layer, w13, w2)`` then

* converts the weights to the kernel format again (FlashInfer CUTLASS: ``[w1; w3] -> [w3; w1]``,
  ROCm AITER: shuffle; both allocate new tensors),
* registers NEW ``w13_weight`` / ``w2_weight`` Parameters (``replace_parameter``): the Parameter
  objects change and, for those backends, so does the storage (``data_ptr``): CUDA graphs captured at
  engine start keep reading the old storage (gibberish output in the PR's RL run),
* and builds the MoE kernel again.

vLLM 0.21.0 (PR 40390) treats a call with a kernel already built as a weight update: it copies the
converted tensors into the existing Parameters (``replace_parameter(..., prefer_copy=True)``) and does
not rebuild the kernel. This patch backports exactly that: it wraps ``_setup_kernel`` and, when the
method's kernel (``self.kernel`` 0.15 - 0.19, ``self.moe_kernel`` 0.20) is already set, runs the
release's own ``convert_to_unquantized_kernel_format`` and copies the result into the existing
Parameters in place when shape, dtype and device match (as 0.21's ``prefer_copy``; otherwise the
release's ``replace_parameter`` replaces it, as 0.21 does). The first call (engine start) is the
original, untouched.

Deliberate difference: 0.21 also marks AITER weights ``is_shuffled`` (a flag 0.21 added for its own
AITER code; no release in range reads it), which the patch does not set.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Replaces
from compat_patches.core.source import unreadable, wrapper_reason

PARAMS = ("self", "layer", "w13", "w2")
_KERNEL_ATTRS = ("moe_kernel", "kernel")
_facts = {}   # function -> (kernel attribute | None, drift reason | None, fixed reason | None)


def _function(original):
    return getattr(original, "__func__", original)


def _read(original):
    """Fingerprint of ``_setup_kernel``: which attribute holds the kernel, drift, already fixed."""
    function = _function(original)
    if function in _facts:
        return _facts[function]
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError) as exc:
        result = (None, unreadable(exc), None)
        _facts[function] = result
        return result
    calls, replaced, kernel_attr, prefer_copy = set(), set(), None, False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            calls.add(name)
            if name == "replace_parameter" and len(node.args) >= 2 and isinstance(
                    node.args[1], ast.Constant):
                replaced.add(node.args[1].value)
            if any(k.arg == "prefer_copy" for k in node.keywords):
                prefer_copy = True
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and getattr(
                node.value.func, "id", None) == "make_unquantized_moe_kernel":
            for target in node.targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                for element in elements:
                    if (isinstance(element, ast.Attribute) and element.attr in _KERNEL_ATTRS
                            and getattr(element.value, "id", None) == "self"):
                        kernel_attr = element.attr
    fixed = ("copies into the existing Parameters on a weight update already "
             "(replace_parameter(..., prefer_copy=...), the vLLM 0.21.0 body)") if prefer_copy else None
    drift = None
    if not fixed:
        missing = [what for what, ok in (
            ("a convert_to_unquantized_kernel_format call", "convert_to_unquantized_kernel_format"
             in calls),
            ("replace_parameter of w13_weight and w2_weight", {"w13_weight", "w2_weight"} <= replaced),
            ("self.kernel / self.moe_kernel = make_unquantized_moe_kernel(...)", kernel_attr),
        ) if not ok]
        if missing:
            drift = ("_setup_kernel is not the vLLM 0.15 - 0.20 shape it was written for: no "
                     + ", no ".join(missing))
    result = (kernel_attr, drift, fixed)
    _facts[function] = result
    return result


def check_setup_kernel(original):
    """Drift reason, or None when ``original`` is the 0.15 - 0.20 ``_setup_kernel``."""
    reason = wrapper_reason(original, "the weight-update path would bypass that wrapper")
    return reason if reason is not None else _read(original)[1]


def fixed_setup_kernel(original):
    """Why ``original`` already carries vLLM PR 40390 (a backport or a source build), or None."""
    if hasattr(original, "__wrapped__"):
        return None
    return _read(original)[2]


def _arguments(layer, w13, w2):
    return layer, w13, w2


def _replace_in_place(layer, name, new_data, replace_parameter):
    """vLLM 0.21's ``replace_parameter(layer, name, new_data, prefer_copy=True)``."""
    import torch

    old = getattr(layer, name, None)
    data = new_data.data if isinstance(new_data, torch.nn.Parameter) else new_data
    if (old is not None and old.shape == data.shape and old.dtype == data.dtype
            and old.device == data.device):
        old.copy_(data)
        return
    replace_parameter(layer, name, new_data)


def _setup_kernel(wrapped, instance, args, kwargs):
    kernel_attr = _read(wrapped)[0]
    if instance is None or kernel_attr is None or getattr(instance, kernel_attr, None) is None:
        return wrapped(*args, **kwargs)   # engine start: the original, untouched
    # A weight update (the kernel exists): vLLM 0.21.0's path.
    layer, w13, w2 = _arguments(*args, **kwargs)
    namespace = _function(wrapped).__globals__
    w13_new, w2_new = namespace["convert_to_unquantized_kernel_format"](
        instance.unquantized_backend,
        layer=layer,
        w13_weight=w13,
        w2_weight=w2,
    )
    replace_parameter = namespace["replace_parameter"]
    _replace_in_place(layer, "w13_weight", w13_new, replace_parameter)
    _replace_in_place(layer, "w2_weight", w2_new, replace_parameter)
    return None


_SETUP_KERNEL = ("vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method:"
                 "UnquantizedFusedMoEMethod._setup_kernel")

_REPLACES = Replaces(
    symbols=(_SETUP_KERNEL,),
    note="No hand patch of this bug was found by the field inventory of framework mirrors (2026-11-28): it "
         "lists \"vLLM PWAL storage moves\" among the known items that do not appear as monkey-patches at "
         "those mirrors' HEAD. verl re-runs `process_weights_after_loading` after a sync for its quantized "
         "paths (verl-project/verl at 1dda039b9c63: `verl/workers/rollout/vllm_rollout/utils.py`, "
         "`verl/utils/vllm/vllm_quant_utils.py`); users who re-run it on unquantized MoE layers keep their "
         "code and drop any pin to vLLM >= 0.21 taken for this reason.",
)

PATCH = Patch(
    name="vllm-moe-reprocess-storage",
    summary="re-running process_weights_after_loading on an unquantized FusedMoE (RL weight sync) "
            "keeps the expert Parameters and their storage and does not rebuild the kernel",
    upstream="https://github.com/vllm-project/vllm/pull/40390",
    affected={"vllm": ">=0.15.0.dev0,<0.21.0"},
    fixed_in="vllm 0.21.0",
    targets=(
        Target(_SETUP_KERNEL, wrapper=_setup_kernel, params=PARAMS, check=check_setup_kernel,
               fixed=fixed_setup_kernel),
    ),
    notes="Backports vllm#40390 (released in 0.21.0): a second _setup_kernel call copies the "
          "kernel-format weights into the existing Parameters and keeps the kernel. The first "
          "call is the original.",
    differences="0.21.0 also sets is_shuffled on AITER weights (a flag only 0.21+ reads); not set.",
    replaces=_REPLACES,
)
