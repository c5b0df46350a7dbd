"""vllm-flashinfer-moe-layout: a raw weight reload writes FlashInfer MoE experts in kernel layout.

The bug (unfixed upstream; vllm#42821, read in every wheel 0.15.0 - 0.34.0 and run on CPU, see the
docs page): with the FlashInfer CUTLASS MoE backend, vLLM's post-load step
(``UnquantizedFusedMoEMethod.process_weights_after_loading`` -> ``convert_to_unquantized_kernel_format``
-> ``swap_w13_to_w31``) reorders every expert's ``w13_weight`` from the checkpoint order
``[w1; w3]`` (gate; up) to the kernel order ``[w3; w1]``, same shape, ``weight_loader`` kept. An RL
weight sync that then calls ``model.load_weights(...)`` (OpenRLHF, AReaL) goes through
``FusedMoE.weight_loader`` (``RoutedExperts.weight_loader`` from 0.24.0), which writes the gate
shard into the first half and the up shard into the second: ``[w1; w3]`` in a layer the kernel
reads as ``[w3; w1]``. No error, wrong MoE output. (Re-running the post-load step afterwards, as
verl does, swaps again and happens to be right after a FULL reload; a partial one stays wrong.)
The FlashInfer TRTLLM backend (0.16 - 0.30) converts to a 4-D block layout the loader cannot write.

The fix (the processed-layout protocol shared with ``vllm-ascend-moe-layout``, see
:mod:`compat_patches.moe.processed_layout`):

* ``process_weights_after_loading`` is wrapped: after the original ran, the ``w13_weight`` of a
  layer swapped to ``[w3; w1]`` is marked with that layout; a TRTLLM 4-D layer's ``w13_weight`` and
  ``w2_weight`` are marked as block layout (and get back the ``weight_loader`` that 0.16 - 0.19
  drop). A later call on a layer whose ``w13_weight`` is marked is skipped (running it again
  would swap the halves back, or block-convert twice), so syncing code that re-runs it stays right;
* the layer's ``weight_loader`` is wrapped: for a ``[w3; w1]``-marked Parameter a ``w1`` (gate)
  shard is written with vLLM's own loader into the ``w3`` slot and a ``w3`` (up) shard into the
  ``w1`` slot (``kernel_shard_id``): the same TP sharding, padding and expert mapping as a fresh
  load, per expert or fused 3-D, and bitwise what a fresh load + processing gives. For a
  block-layout Parameter it raises ``RuntimeError`` naming ``reload_weights(is_checkpoint_format=
  True)`` (vLLM's layerwise reload, which loads into fresh checkpoint-format tensors and re-runs the
  processing) instead of loading garbage or failing on a shape.

Apply it before the engine is created (``apply_all()`` or the vLLM plugin): the Parameters hold the
loader bound when the layer was built, and only layers processed while it is applied are marked.
Parameters vLLM creates anew (layerwise reload) are unmarked and load in checkpoint format as usual.
Not covered: the 0.31+ TRTLLM layout (checkpoint-shaped, block-permuted in place: a raw reload
without re-processing loads garbage there, vllm#56570), quantized MoE methods, 0.14 and older
(swap inline, opt-in ``VLLM_USE_FLASHINFER_MOE_FP16``).
"""

from compat_patches.core import Patch, Target
from compat_patches.core.log import DEBUG, log
from compat_patches.core.record import Replaces

#: Attribute on the marked Parameters (see compat_patches.moe.processed_layout).
LAYOUT_ATTR = "_compat_patches_flashinfer_moe_layout"
W31 = "flashinfer-w31"                 # == compat_patches.moe.flashinfer_layout.W31
TRTLLM_BLOCK = "flashinfer-trtllm-block"
LOADER_PARAMS = ("self", "param", "loaded_weight", "weight_name", "shard_id", "expert_id",
                 "return_success")
_signatures = {}


def _backend_name(method):
    return getattr(getattr(method, "unquantized_backend", None), "name", None)


def _is_gated(method, layer):
    moe = getattr(method, "moe", None) or getattr(layer, "moe_config", None)
    return getattr(moe, "is_act_and_mul", True) is not False


def _layer_argument(args, kwargs):
    return args[0] if args else kwargs.get("layer")


def _mark_processed(method, layer):
    from compat_patches.moe.processed_layout import mark

    backend = _backend_name(method)
    w13 = getattr(layer, "w13_weight", None)
    if w13 is None:
        return None
    if backend == "FLASHINFER_CUTLASS" and _is_gated(method, layer):
        mark(w13, LAYOUT_ATTR, W31)
        return W31
    if backend == "FLASHINFER_TRTLLM" and w13.dim() != 3:
        for name in ("w13_weight", "w2_weight"):
            param = getattr(layer, name, None)
            if param is None:
                continue
            mark(param, LAYOUT_ATTR, TRTLLM_BLOCK)
            if getattr(param, "weight_loader", None) is None and hasattr(layer, "weight_loader"):
                param.weight_loader = layer.weight_loader   # 0.16 - 0.19 drop it: raise clearly
        return TRTLLM_BLOCK
    return None


def _weights_pre_processed(wrapped):
    """vLLM 0.30+ ``is_weights_pre_processed()`` (a context of the weight-transfer path), else False."""
    namespace = getattr(getattr(wrapped, "__func__", wrapped), "__globals__", {})
    probe = namespace.get("is_weights_pre_processed")
    return bool(probe()) if callable(probe) else False


def _process_weights_after_loading(wrapped, instance, args, kwargs):
    from compat_patches.moe.processed_layout import PROCESSED, layer_state

    layer = _layer_argument(args, kwargs)
    if layer is None:
        return wrapped(*args, **kwargs)
    if _weights_pre_processed(wrapped):
        # 0.30+: weights delivered in kernel layout already; the original only rebuilds the kernel
        result = wrapped(*args, **kwargs)
        _mark_processed(instance, layer)
        return result
    if layer_state(layer, ("w13_weight",), LAYOUT_ATTR, (W31, TRTLLM_BLOCK)) == PROCESSED:
        log(DEBUG, "vllm-flashinfer-moe-layout: %s is in the FlashInfer kernel layout already; "
                   "post-load processing not re-run", type(layer).__name__)
        return None
    result = wrapped(*args, **kwargs)
    _mark_processed(instance, layer)
    return result


def _signature(wrapped):
    import inspect

    function = getattr(wrapped, "__func__", wrapped)
    if function not in _signatures:
        _signatures[function] = inspect.signature(function)
    return _signatures[function]


def block_layout_error(weight_name):
    return RuntimeError(
        f"vllm-flashinfer-moe-layout: {weight_name!r} is in FlashInfer TRTLLM's block layout after "
        "process_weights_after_loading; a checkpoint-format shard cannot be written into it (a raw "
        "model.load_weights would fail on the shape or load garbage). Reload with "
        "reload_weights(is_checkpoint_format=True) (vLLM's layerwise reload, which re-runs the "
        "processing), or use the FlashInfer CUTLASS / Triton MoE backend for weight syncs."
    )


def _weight_loader(wrapped, instance, args, kwargs):
    from compat_patches.moe.flashinfer_layout import kernel_shard_id
    from compat_patches.moe.processed_layout import bind_loader_call, layout_of

    signature = _signature(wrapped)
    call = (instance,) + tuple(args) if instance is not None else tuple(args)
    bound = bind_loader_call(signature, call, kwargs)
    if bound is None:
        return wrapped(*args, **kwargs)
    layout = layout_of(bound.arguments.get("param"), LAYOUT_ATTR)
    if layout is None:
        return wrapped(*args, **kwargs)
    if layout == TRTLLM_BLOCK:
        raise block_layout_error(bound.arguments.get("weight_name"))
    shard_id = bound.arguments.get("shard_id")
    if layout != W31 or shard_id not in ("w1", "w3"):
        return wrapped(*args, **kwargs)
    bound.arguments["shard_id"] = kernel_shard_id(shard_id)
    call_args = bound.args[1:] if instance is not None else bound.args
    return wrapped(*call_args, **bound.kwargs)


_METHOD = ("vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method:"
           "UnquantizedFusedMoEMethod.process_weights_after_loading")

_REPLACES = Replaces(
    symbols=(_METHOD, "vllm.model_executor.layers.fused_moe.layer:FusedMoE.weight_loader",
             "vllm.model_executor.layers.fused_moe.routed_experts:RoutedExperts.weight_loader"),
    note="No hand patch of this bug was found by the field inventory of framework mirrors (2026-11-28): it "
         "lists \"FlashInfer MoE layout\" among the known items that do not appear as monkey-patches at "
         "those mirrors' HEAD. What frameworks do instead (FIELD.md V-D): SkyRL moved to vLLM's layerwise "
         "reload, ms-swift calls `reload_weights(is_checkpoint_format=True)`, verl re-runs the post-load "
         "step after a sync; OpenRLHF and AReaL call `load_weights` raw and are exposed. With this record a "
         "raw `load_weights` is right, so such workarounds (a forced layerwise reload, or a re-run of the "
         "post-load step only to undo the swap) can be dropped for unquantized FlashInfer CUTLASS MoE.",
)

PATCH = Patch(
    name="vllm-flashinfer-moe-layout",
    summary="after the FlashInfer CUTLASS MoE backend reordered w13 to [w3; w1], a raw "
            "load_weights writes each expert shard in that kernel layout (not [w1; w3]), and "
            "re-processing does not reorder again; TRTLLM's block layout raises a clear error",
    upstream="https://github.com/vllm-project/vllm/issues/42821",
    affected={"vllm": ">=0.15.0.dev0"},
    fixed_in=None,
    verified_through={"vllm": "0.34.0"},
    targets=(
        Target(_METHOD, wrapper=_process_weights_after_loading, params=("self", "layer")),
        Target("vllm.model_executor.layers.fused_moe.layer:FusedMoE.weight_loader",
               wrapper=_weight_loader, params=LOADER_PARAMS, versions="<0.24.0.dev0"),
        Target("vllm.model_executor.layers.fused_moe.routed_experts:RoutedExperts.weight_loader",
               wrapper=_weight_loader, params=LOADER_PARAMS, versions=">=0.24.0.dev0"),
    ),
    notes="Shares the processed-layout protocol with vllm-ascend-moe-layout "
          "(compat_patches.moe.processed_layout). Apply before the engine is created. A GPU "
          "(SM100/SM120; H100 on 0.20 - 0.22) is needed to confirm the kernel output.",
    replaces=_REPLACES,
)
