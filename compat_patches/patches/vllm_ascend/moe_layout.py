"""vllm-ascend-moe-layout: MoE expert weights reload in the right layout on vLLM-Ascend.

The bug (read from every vllm-ascend release 0.11.0rc1 - 0.30.0rc2, see the table in the README;
0.11.0rc0 and older do not transpose):
``AscendUnquantizedFusedMoEMethod.process_weights_after_loading(self, layer)`` turns ``w13_weight``
``[E, 2*I_tp, H]`` into ``[E, H, 2*I_tp]`` and ``w2_weight`` ``[E, H, I_tp]`` into ``[E, I_tp, H]``
(``.transpose(1, 2).contiguous()``, then an NPU-only FRACTAL_NZ cast). A later weight reload (RL
weight sync: ``model.load_weights(...)``) runs vLLM's FusedMoE weight loader, which writes each expert
shard in the ORIGINAL orientation into the transposed storage; up to 0.25.1rc1 the post-load step
even replaces the Parameter (``layer.w13_weight = torch.nn.Parameter(...)``), so the reload finds no
``weight_loader`` at all. 0.26.0rc1 assigns ``.data`` (Parameter and loader survive), 0.27.1rc1 and
newer (class moved to ``routed_experts.py``) call vLLM's ``replace_parameter``, which carries the
``weight_loader`` over; the layout is still transposed in all of them.

The fix wraps ``process_weights_after_loading``:

* after the original ran, each of ``w13_weight``/``w2_weight`` gets its ``weight_loader`` back (0.11 -
  0.25 Parameter replacement), wrapped in a layout-aware loader, and is marked "processed";
* a second call on a layer that is already in the processed layout is a no-op (running it twice
  transposes the weights back: wrong);
* the layout-aware loader acts according to the MODE of the current sync path:

  ``processed`` (default): the expert shard is written straight into the processed layout (vLLM's
  own loader runs on a transposed *view* of the processed storage, so its TP sharding, expert
  mapping and padding rules are used unchanged and nothing is copied); post-processing is not
  re-run (a later ``process_weights_after_loading`` is skipped by the guard above).

  ``preprocessed``: on the first shard of a reload the layer's two tensors are restored to the
  original layout in place (same Parameter objects, loaders kept), vLLM's loader writes normally,
  and ``process_weights_after_loading`` runs exactly once afterwards: when the caller (e.g. vLLM's
  ``process_weights_after_loading(model, ...)``) runs it, or at the latest when the
  ``layout_mode("preprocessed")`` block exits, or via :func:`finalize_pending`.

Select the mode per sync path (process-wide, not per thread)::

    from compat_patches.patches.vllm_ascend.moe_layout import layout_mode
    with layout_mode("processed"):       # FSDP2 colocate: model.load_weights(per-expert tensors)
        model.load_weights(weights)
    with layout_mode("preprocessed"):    # full reload that should re-run vLLM-Ascend's post-load step
        model.load_weights(weights)      # processing happens at the latest on exit

or, for processes you do not control (vLLM workers in server mode), set the environment variable
``COMPAT_PATCHES_ASCEND_MOE_LAYOUT=processed|preprocessed``. The context manager wins over the
variable; with neither, ``processed`` is used.

Apply the patch before the engine is created (``apply_all()`` / the vLLM plugin): layers processed
before it was applied keep the unpatched behaviour. Parameters processed while it was applied keep
their layout-aware loader after a revert (it remains correct for the layout they are in).

The processed-layout protocol (mark the kernel-layout Parameters after post-load processing, write
shards into that layout, do not re-process a processed layer) is shared with
``vllm-flashinfer-moe-layout`` (FlashInfer CUTLASS ``[w3; w1]``): :mod:`compat_patches.moe.processed_layout`.

Not covered (reported, not silently fixed): the fused-MC2 + dynamic-EPLB / mega-MoE branch deletes
``w13_weight``/``w2_weight`` (nothing left to reload into); NZ-format (FRACTAL_NZ) weights in
``processed`` mode raise a clear error (use ``preprocessed``, which re-runs the NZ cast); the 310P
method (``vllm_ascend._310p``) is not wrapped.
"""

from __future__ import annotations

import _thread
import os

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces
from compat_patches.core.log import DEBUG, WARNING, log

ENV_VAR = "COMPAT_PATCHES_ASCEND_MOE_LAYOUT"
MODES = ("processed", "preprocessed")
DEFAULT_MODE = "processed"

#: Parameters that the post-load step transposes.
PARAM_NAMES = ("w13_weight", "w2_weight")

#: Attribute set on those Parameters: the layout their data is in ("processed" | "preprocessed").
LAYOUT_ATTR = "_compat_patches_ascend_moe_layout"
_LOADER_FLAG = "__compat_patches_ascend_moe_loader__"

_ACL_FORMAT_ND = 2  # vllm_ascend.utils.ACL_FORMAT_FRACTAL_ND

_lock = _thread.RLock()
_mode_stack = []
_maps = []  # (pending, methods), made on first use: most processes never import weakref for us


def _layer_maps():
    """(pending, methods): layer -> weakref(quant method) of layers restored to the preprocessed
    layout and awaiting processing, and of the method that processed each layer."""
    if not _maps:
        import weakref

        _maps.extend((weakref.WeakKeyDictionary(), weakref.WeakKeyDictionary()))
    return _maps


# --------------------------------------------------------------------------------------- mode ---

def _validate_mode(mode, source):
    if mode not in MODES:
        raise ValueError(f"{source}: layout mode must be one of {MODES}, got {mode!r}")
    return mode


def current_mode():
    """The mode in force: innermost ``layout_mode`` block, else ``$COMPAT_PATCHES_ASCEND_MOE_LAYOUT``,
    else ``"processed"``. An invalid environment value raises ``ValueError``."""
    with _lock:
        if _mode_stack:
            return _mode_stack[-1]
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return DEFAULT_MODE
    return _validate_mode(value, f"${ENV_VAR}")


class layout_mode:  # noqa: N801 - used as a function: ``with layout_mode("preprocessed"):``
    """Select how reloads write MoE expert weights inside this block (process-wide).

    On exit from a ``"preprocessed"`` block every layer that was restored to the preprocessed layout
    and not processed yet is processed (exactly once)."""

    def __init__(self, mode):
        self.mode = _validate_mode(mode, "layout_mode()")

    def __enter__(self):
        with _lock:
            _mode_stack.append(self.mode)
        return self.mode

    def __exit__(self, *exc_info):
        with _lock:
            _mode_stack.pop()
        if self.mode == "preprocessed":
            finalize_pending()
        return False


def finalize_pending():
    """Run ``process_weights_after_loading`` once on every layer restored to the preprocessed layout
    by a ``preprocessed``-mode reload and not processed since. Returns the number of layers."""
    with _lock:
        items = list(_layer_maps()[0].items())
    done = 0
    for layer, method_ref in items:
        method = method_ref()
        if method is None or layer_layout(layer) != "preprocessed":
            _layer_maps()[0].pop(layer, None)
            continue
        method.process_weights_after_loading(layer)
        _layer_maps()[0].pop(layer, None)
        done += 1
    return done


def layer_layout(layer):
    """``"processed"``, ``"preprocessed"``, ``"mixed"`` or ``None`` (not managed by this patch)."""
    from compat_patches.moe.processed_layout import layer_state

    return layer_state(layer, PARAM_NAMES, LAYOUT_ATTR)


# ------------------------------------------------------------------------------ tensor helpers ---

def _npu_format(tensor):
    if getattr(tensor, "device", None) is None or tensor.device.type != "npu":
        return None
    try:
        import torch_npu  # noqa: F401  (only on an NPU stack)
        return torch_npu.get_npu_format(tensor)
    except Exception:  # pragma: no cover - NPU only
        return None


def _to_nd(tensor):
    fmt = _npu_format(tensor)
    if fmt is None or fmt == _ACL_FORMAT_ND:
        return tensor
    import torch_npu  # pragma: no cover - NPU only
    return torch_npu.npu_format_cast(tensor, _ACL_FORMAT_ND)  # pragma: no cover


def _restore_layer(layer, method_ref):
    """Processed -> preprocessed, in place: same Parameter objects, loaders and attributes kept."""
    with _lock:
        for name in PARAM_NAMES:
            param = getattr(layer, name, None)
            if param is None or getattr(param, LAYOUT_ATTR, None) != "processed":
                continue
            param.data = _to_nd(param.data).transpose(1, 2).contiguous()
            _mark(param, "preprocessed")
        if method_ref is not None:
            _layer_maps()[0][layer] = method_ref


def _processed_view_param(param):
    """A Parameter sharing ``param``'s storage, shaped like the preprocessed layout."""
    import torch

    fmt = _npu_format(param.data)
    if fmt is not None and fmt != _ACL_FORMAT_ND:
        raise RuntimeError(
            f"vllm-ascend-moe-layout: this MoE weight is in NPU format {fmt} (FRACTAL_NZ), which "
            f"cannot be written through a strided view; reload it in 'preprocessed' mode "
            f"(layout_mode('preprocessed') or {ENV_VAR}=preprocessed), which re-runs the NZ cast"
        )
    view = torch.nn.Parameter(param.data.transpose(1, 2), requires_grad=False)
    for key, value in vars(param).items():
        if key not in ("weight_loader", LAYOUT_ATTR):
            try:
                setattr(view, key, value)
            except Exception:  # pragma: no cover - read-only attribute
                pass
    return view


# ----------------------------------------------------------------------------- weight loader ---

def _mark(param, layout):
    from compat_patches.moe.processed_layout import mark

    mark(param, LAYOUT_ATTR, layout)


def _original_loader(loader):
    from compat_patches.moe.processed_layout import original_loader

    return original_loader(loader, _LOADER_FLAG)


def make_layout_aware_loader(layer, original):
    """Wrap a FusedMoE ``weight_loader`` so that it honours the layout the parameter is in.

    The wrapper keeps the original's signature (``functools.wraps``: vLLM binds loader arguments
    with ``inspect.signature``) and is recognised, so wrapping twice returns the same function."""
    import functools
    import inspect
    import weakref

    from compat_patches.moe.processed_layout import bind_loader_call

    original = _original_loader(original)
    signature = inspect.signature(original)
    layer_ref = weakref.ref(layer)

    @functools.wraps(original)
    def weight_loader(*args, **kwargs):
        bound = bind_loader_call(signature, args, kwargs)
        if bound is None:
            return original(*args, **kwargs)
        param = bound.arguments.get("param")
        layer = layer_ref()
        if layer is None or getattr(param, LAYOUT_ATTR, None) != "processed":
            return original(*args, **kwargs)   # preprocessed layout: vLLM's loader is right
        if current_mode() == "preprocessed":
            _restore_layer(layer, _layer_maps()[1].get(layer))
            return original(*args, **kwargs)
        bound.arguments["param"] = _processed_view_param(param)
        return original(*bound.args, **bound.kwargs)

    setattr(weight_loader, _LOADER_FLAG, True)
    return weight_loader


# ---------------------------------------------------------------------------- process wrapper ---

def _layer_argument(args, kwargs):
    if args:
        return args[0]
    return kwargs.get("layer")


def _process_wrapper(wrapped, instance, args, kwargs):
    layer = _layer_argument(args, kwargs)
    if layer is None:
        return wrapped(*args, **kwargs)
    with _lock:
        state = layer_layout(layer)
        if state == "processed":
            log(DEBUG, "vllm-ascend-moe-layout: %s already in the processed layout; post-load "
                      "processing not re-run", type(layer).__name__)
            _layer_maps()[0].pop(layer, None)
            return None
        if state == "mixed":   # never transpose a processed tensor a second time
            _restore_layer(layer, None)
            state = "preprocessed"
        if state == "preprocessed" and isinstance(getattr(instance, "transpose", None), bool):
            # 0.11.x transposes only while `self.transpose` is True (set False after the first
            # call); the layer was restored to the preprocessed layout by us, so it must transpose.
            instance.transpose = True
        loaders = {}
        for name in PARAM_NAMES:
            param = getattr(layer, name, None)
            loader = getattr(param, "weight_loader", None) if param is not None else None
            if loader is not None:
                loaders[name] = _original_loader(loader)
        result = wrapped(*args, **kwargs)
        for name in PARAM_NAMES:
            param = getattr(layer, name, None)
            if param is None:   # deleted by the fused-MC2 EPLB / mega-MoE branch (0.23+)
                log(WARNING, "vllm-ascend-moe-layout: %s.%s was removed by the post-load step "
                            "(fused MC2 with dynamic EPLB / mega-MoE keeps %s_list instead); a "
                            "weight reload of this layer is not handled by this patch",
                            type(layer).__name__, name, name)
                continue
            loader = getattr(param, "weight_loader", None)
            original = _original_loader(loader) if loader is not None else loaders.get(name)
            if original is None:
                continue
            # 0.11-0.25: the Parameter was replaced and lost its loader: give it back (wrapped).
            param.weight_loader = make_layout_aware_loader(layer, original)
            _mark(param, "processed")
        import weakref

        try:
            _layer_maps()[1][layer] = weakref.ref(instance)
        except TypeError:  # pragma: no cover - instance without weakref support
            pass
        _layer_maps()[0].pop(layer, None)
        return result


# ------------------------------------------------------------------------ drift fingerprinting ---

_FORMS = ("parameter", "data", "replace_parameter")


def _is_transpose_12(node):
    """``<x>.transpose(1, 2).contiguous()``"""
    import ast

    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "contiguous"
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Attribute)
        and node.func.value.func.attr == "transpose"
        and [getattr(a, "value", None) for a in node.func.value.args] == [1, 2]
    )


def _reads(node, name):
    import ast

    return any(isinstance(n, ast.Attribute) and n.attr == name for n in ast.walk(node))


def classify_process_source(source):
    """Fingerprint of a ``process_weights_after_loading`` source (a function or its class body).

    Returns ``{"w13_weight": form, "w2_weight": form}``, form one of ``"parameter"``
    (``layer.X = torch.nn.Parameter(<X>.transpose(1, 2).contiguous(), ...)``), ``"data"``
    (``layer.X.data = ...``), ``"replace_parameter"`` (``replace_parameter(layer, "X", ...)``) or
    None when the transposition of X is not found. Used by the drift check and the contract tests.
    """
    import ast
    import textwrap

    tree = ast.parse(textwrap.dedent(source))
    transposed = {}   # local variable name -> parameter it transposes
    forms = {name: None for name in PARAM_NAMES}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            if isinstance(target, ast.Name) and _is_transpose_12(value):
                for name in PARAM_NAMES:
                    if _reads(value, name):
                        transposed[target.id] = name
            # layer.X = torch.nn.Parameter(var, ...)
            if (isinstance(target, ast.Attribute) and target.attr in PARAM_NAMES
                    and isinstance(value, ast.Call)
                    and isinstance(value.func, (ast.Attribute, ast.Name))
                    and getattr(value.func, "attr", getattr(value.func, "id", None)) == "Parameter"
                    and value.args and isinstance(value.args[0], ast.Name)
                    and transposed.get(value.args[0].id) == target.attr):
                forms[target.attr] = forms[target.attr] or "parameter"
            # layer.X.data = var
            if (isinstance(target, ast.Attribute) and target.attr == "data"
                    and isinstance(target.value, ast.Attribute)
                    and target.value.attr in PARAM_NAMES
                    and isinstance(value, ast.Name)
                    and transposed.get(value.id) == target.value.attr):
                forms[target.value.attr] = forms[target.value.attr] or "data"
        # replace_parameter(layer, "X", var)
        if (isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "replace_parameter"
                and len(node.args) >= 3 and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in PARAM_NAMES and isinstance(node.args[2], ast.Name)
                and transposed.get(node.args[2].id) == node.args[1].value):
            forms[node.args[1].value] = forms[node.args[1].value] or "replace_parameter"
    return forms


def expect_form(form):
    """A ``Target.check``: the original must transpose both tensors with this assignment form."""
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}, got {form!r}")

    def check(original):
        import inspect

        try:
            source = inspect.getsource(original)
        except (OSError, TypeError) as exc:
            return f"cannot read the source of process_weights_after_loading to verify it ({exc})"
        found = classify_process_source(source)
        if set(found.values()) != {form}:
            return (f"expected both w13_weight and w2_weight transposed with .transpose(1, 2) and "
                    f"assigned in {form!r} form, found {found}")
        return None

    check.__name__ = f"expect_{form}_form"
    return check


_COMMON_FUSED_MOE = ("vllm_ascend.ops.common_fused_moe:"
                     "AscendUnquantizedFusedMoEMethod.process_weights_after_loading")
_FUSED_MOE = ("vllm_ascend.ops.fused_moe.fused_moe:"
              "AscendUnquantizedFusedMoEMethod.process_weights_after_loading")
_ROUTED_EXPERTS = ("vllm_ascend.ops.fused_moe.routed_experts:"
                   "AscendUnquantizedFusedMoEMethod.process_weights_after_loading")

#: Measured per release by reading each wheel / sdist (tests/patches/vllm_ascend/test_moe_layout.py):
#: (versions, target path, assignment form)
TARGET_SHAPES = (
    (">=0.11.0rc1,<0.12.0rc1", _COMMON_FUSED_MOE, "parameter"),
    (">=0.12.0rc1,<0.26.0rc1", _FUSED_MOE, "parameter"),
    (">=0.26.0rc1,<0.27.1rc1", _FUSED_MOE, "data"),
    (">=0.27.1rc1", _ROUTED_EXPERTS, "replace_parameter"),
)

_REPLACES = Replaces(
    symbols=tuple(dict.fromkeys(path for _, path, _ in TARGET_SHAPES)) + (
        "vllm.model_executor.layers.fused_moe.layer:FusedMoE.weight_loader",
    ),
    copies=(
        Copy("modelscope/ms-swift", "swift/model/npu_patch/vllm_ascend_moe.py",
             "_patch_vllm_ascend_moe_post_load", commit="3602360a5623", inventory=21,
             what="with `_patch_vllm_ascend_moe_sleep_layout` and "
                  "`patch_vllm_ascend_moe_expert_weight_loader`: vllm-ascend unquantized FusedMoE "
                  "post-load / sleep layout / expert `weight_loader` (MoE layout after reload)."),
        Copy("modelscope/ms-swift", "swift/model/npu_patch/vllm_ascend_moe.py",
             "_patch_vllm_ascend_moe_sleep_layout", commit="3602360a5623", inventory=21,
             what="the sleep-layout part (wraps `NPUWorker.wake_up`)."),
        Copy("modelscope/ms-swift", "swift/model/npu_patch/vllm_ascend_moe.py",
             "patch_vllm_ascend_moe_expert_weight_loader", commit="3602360a5623", inventory=21,
             what="the expert `weight_loader` part."),
        Copy("verl-project/verl", "verl/utils/vllm/npu_vllm_patch.py", "_patch_legacy_fused_moe_weight_loader",
             commit="1dda039b9c63", inventory=7,
             what="a transpose wrapper around "
                  "`vllm.model_executor.layers.fused_moe:FusedMoE.weight_loader` (NPU stores w13/w2 "
                  "transposed, so the raw loader writes the wrong layout; cites vllm-ascend#5915; NPU "
                  "only, legacy class `FusedMoE`)."),
    ),
    note="Related, not replaced: **#6, verl** `verl/utils/vllm/patch.py` "
         "`patch_vllm_moe_model_weight_loader` gives vLLM's FusedMoE expert parameters (`w13_weight` / "
         "`w2_weight`) of many model classes a `weight_loader` on every device (\"bug from vllm "
         "0.8.2\"); this patch gives the loader back only to the experts vLLM-Ascend processed.",
)

PATCH = Patch(
    name="vllm-ascend-moe-layout",
    summary=("vLLM-Ascend MoE reload writes expert shards into the transposed kernel layout "
             "(and loses weight_loader up to 0.25): reload in the processed or preprocessed "
             "layout, selectable per sync path"),
    upstream="https://github.com/vllm-project/vllm-ascend",
    affected={"vllm-ascend": ">=0.11.0rc1"},
    verified_through={"vllm-ascend": "0.30.0rc2"},
    fixed_in=None,
    targets=tuple(
        Target(path, wrapper=_process_wrapper, params=("self", "layer"),
               check=expect_form(form), versions=versions)
        for versions, path, form in TARGET_SHAPES
    ),
    notes=(f"mode: layout_mode('processed'|'preprocessed') or ${ENV_VAR}; default processed. "
           "Needs an NPU to confirm the NZ-format and npu_grouped_matmul behaviour."),
    replaces=_REPLACES,
)
