"""vllm-hybrid-fp8-kv-wake: waking an fp8 KV cache of a hybrid model no longer crashes.

The bug (read with ``ast`` in every vLLM wheel 0.11.0 - 0.33.0, the real method run on CPU; table in
docs/patches/vllm-hybrid-fp8-kv-wake.md): after a sleep, waking the KV cache with a quantized (fp8)
cache dtype calls ``GPUModelRunner.init_fp8_kv_scales`` (from ``Worker.wake_up`` up to 0.20.2, from
``GPUModelRunner.post_kv_cache_wake_up`` from 0.21.0). It zeroes every entry of ``self.kv_caches``
with ``cache_tensor.zero_()``; on a hybrid model (Mamba / GDN / DeltaNet / ShortConv layers next to
attention: NemotronH, Qwen3-Next, Qwen3.5, Falcon-H1, Granite-4, Jamba ...) a recurrent layer's entry
is a *list* of state tensors, so wake-up dies with ``AttributeError: 'list' object has no attribute
'zero_'`` before the attention scales are reset (the engine is left half-awake). vLLM 0.27.0 zeroes
every tensor of a list entry (vllm#41602); 0.29.0 removed the method (the MRV1 post-wake hook is gone).

Technique: body substitution, as ``vllm-fused-expert-kwargs`` does. The wrapper runs vLLM 0.27.0's
body (list entries: zero each tensor; everything else statement for statement the original) under
``torch.inference_mode()``, which is what the original's ``@torch.inference_mode()`` decorator does.
The installed release's own early return is kept: ``cache_dtype.startswith("fp8")`` up to 0.19.1,
``is_quantized_kv_cache(cache_dtype)`` from 0.20.0 (one Target per shape). ``Attention``,
``MLAAttention`` and ``is_quantized_kv_cache`` are looked up in ``vllm.v1.worker.gpu_model_runner``
at call time, as the original does. It is exactly right because the ``check`` fingerprint refuses
(status ``drifted``) any original that is not, statement for statement, the buggy body of its shape
under exactly ``@torch.inference_mode()``, and any method someone else wrapped. A body that already
handles list entries (a source build after vllm#41602, a vendor backport) is ``not-needed``
(``fixed=``). Rejected alternatives: presenting a flattened ``kv_caches`` list while the original
runs (SkyRL's hand patch) replaces an attribute of the live runner that other code holds and reads;
a proxy ``self`` would let a stand-in object reach vLLM code.
"""

import sys

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces
from compat_patches.core.source import fingerprint

_MODULE = "vllm.v1.worker.gpu_model_runner"

#: The scale-reset half of the method, identical in every release 0.12.0 - 0.28.0 (``ast.unparse``).
_SCALES = """\
k_attr_names = ('_k_scale', 'k_scale')
v_attr_names = ('_v_scale', 'v_scale')
attn_layers = self.compilation_config.static_forward_context
for name, module in attn_layers.items():
    if isinstance(module, (Attention, MLAAttention)):
        k_scale_val, v_scale_val = (1.0, 1.0)
        for attr in k_attr_names:
            if hasattr(module, attr):
                param = getattr(module, attr)
                if isinstance(param, torch.Tensor):
                    param.fill_(k_scale_val)
        for attr in v_attr_names:
            if hasattr(module, attr):
                param = getattr(module, attr)
                if isinstance(param, torch.Tensor):
                    param.fill_(v_scale_val)"""

_BUGGY_LOOP = """\
kv_caches = getattr(self, 'kv_caches', [])
for cache_tensor in kv_caches:
    if cache_tensor is not None:
        cache_tensor.zero_()
"""

_FIXED_LOOP = """\
kv_caches = getattr(self, 'kv_caches', [])
for cache_entry in kv_caches:
    if cache_entry is None:
        continue
    if isinstance(cache_entry, list):
        for t in cache_entry:
            t.zero_()
    else:
        cache_entry.zero_()
"""

#: The early return of each shape: up to 0.19.1, and from 0.20.0.
GUARDS = {
    "startswith": "if not self.cache_config.cache_dtype.startswith('fp8'):\n    return\n",
    "quantized": "if not is_quantized_kv_cache(self.cache_config.cache_dtype):\n    return\n",
}

#: The method body (docstring dropped) in the affected releases, per shape.
BUGGY_BODIES = {shape: guard + _BUGGY_LOOP + _SCALES for shape, guard in GUARDS.items()}
#: vLLM 0.27.0's body (``quantized``), and the same fix on the older guard.
FIXED_BODIES = {shape: guard + _FIXED_LOOP + _SCALES for shape, guard in GUARDS.items()}

DECORATORS = ["torch.inference_mode()"]

_BYPASS = "substituting the body would bypass that wrapper"


def _torch_decorator(original):
    """vLLM's own ``@torch.inference_mode()``: torch's context-manager decorator, as released."""
    import types

    code = getattr(original, "__code__", None)
    return (type(original) is types.FunctionType and code is not None
            and code.co_name == "decorate_context" and "torch" in code.co_filename)


def fixed_method(original):
    """Why `original` already zeroes list entries (a source build or a backport), or None."""
    found, _ = fingerprint(original, _BYPASS, own_wrapper=_torch_decorator)
    if found is not None and found[1] in FIXED_BODIES.values():
        return "zeroes every tensor of a list entry already (vllm#41602, vLLM 0.27.0)"
    return None


def _check(shape):
    def check_method(original):
        """Drift reason, or None when `original` is the buggy method of this shape exactly."""
        found, reason = fingerprint(original, _BYPASS, own_wrapper=_torch_decorator)
        if reason is not None:
            return reason
        decorators, body = found
        if body != BUGGY_BODIES[shape]:
            return (f"body differs from the init_fp8_kv_scales ({shape} guard) it was written for")
        if decorators != DECORATORS:
            return f"decorated with {decorators}, not {DECORATORS}"
        return None
    check_method.__name__ = f"check_{shape}"
    return check_method


def _self_only():
    return None


def _fixed_init_fp8_kv_scales(shape):
    def wrapper(wrapped, instance, args, kwargs):
        """vLLM 0.27.0's ``init_fp8_kv_scales`` (list entries zeroed tensor by tensor)."""
        import torch

        _self_only(*args, **kwargs)  # the method takes no argument but self
        runner_module = sys.modules[_MODULE]
        with torch.inference_mode():
            _body(shape, instance, runner_module, torch)

    wrapper.__name__ = f"init_fp8_kv_scales_{shape}"
    return wrapper


def _body(shape, self, runner_module, torch):
    cache_dtype = self.cache_config.cache_dtype
    if shape == "startswith":
        if not cache_dtype.startswith("fp8"):
            return
    elif not runner_module.is_quantized_kv_cache(cache_dtype):
        return

    kv_caches = getattr(self, "kv_caches", [])
    for cache_entry in kv_caches:
        if cache_entry is None:
            continue
        if isinstance(cache_entry, list):
            for t in cache_entry:
                t.zero_()
        else:
            cache_entry.zero_()

    k_attr_names = ("_k_scale", "k_scale")
    v_attr_names = ("_v_scale", "v_scale")

    attention_classes = (runner_module.Attention, runner_module.MLAAttention)
    attn_layers = self.compilation_config.static_forward_context
    for name, module in attn_layers.items():
        if isinstance(module, attention_classes):
            k_scale_val, v_scale_val = 1.0, 1.0

            for attr in k_attr_names:
                if hasattr(module, attr):
                    param = getattr(module, attr)
                    if isinstance(param, torch.Tensor):
                        param.fill_(k_scale_val)

            for attr in v_attr_names:
                if hasattr(module, attr):
                    param = getattr(module, attr)
                    if isinstance(param, torch.Tensor):
                        param.fill_(v_scale_val)


def _target(shape, versions):
    return Target(_MODULE + ":GPUModelRunner.init_fp8_kv_scales",
                  wrapper=_fixed_init_fp8_kv_scales(shape), params=("self",),
                  check=_check(shape), fixed=fixed_method, versions=versions)


_REPLACES = Replaces(
    symbols=(_MODULE + ":GPUModelRunner.init_fp8_kv_scales",),
    copies=(
        Copy("NovaSky-AI/SkyRL", "skyrl/backends/skyrl_train/patches/vllm/patch_hybrid_fp8_kv_wake.py",
             "patch_hybrid_fp8_kv_wake", commit="a9564572eb8e", inventory=29,
             what="rewrites the method's source text (the 0.26.0 loop replaced by vllm#41602's) and "
                  "`exec`s it into `vllm.v1.worker.gpu_model_runner`, with no revert."),
    ),
    note="Adopting this record: delete that module and its call. If both are applied, SkyRL's `exec`'d "
         "method has no readable source of its own, so this record reports `drifted` and leaves it in "
         "place. SkyRL PR 1899 (FP8 KV cache for hybrid models) presents a flat tensor list while vLLM "
         "resets the scales: the alternative this record rejected, because it swaps an attribute of the "
         "live runner.",
)

PATCH = Patch(
    name="vllm-hybrid-fp8-kv-wake",
    summary="waking the KV cache of a hybrid (Mamba/GDN + attention) model with an fp8 KV cache "
            "zeroes every state tensor of a list entry instead of crashing with "
            "AttributeError: 'list' object has no attribute 'zero_'",
    upstream="https://github.com/vllm-project/vllm/pull/41602",
    affected={"vllm": ">=0.12.0.dev0,<0.27.0"},
    fixed_in="vllm 0.27.0",
    targets=(
        _target("startswith", "<0.20.0.dev0"),
        _target("quantized", ">=0.20.0.dev0"),
    ),
    notes="Backports vllm#41602 (released in 0.27.0; issue 49237). Body substitution guarded by a "
          "source fingerprint (see the module docstring). The method is gone from 0.29.0 on.",
    replaces=_REPLACES,
)
