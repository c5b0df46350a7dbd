"""vllm-hybrid-fp8-kv-wake against the REAL ``GPUModelRunner.init_fp8_kv_scales`` (CPU, no engine).

The method reads only ``cache_config.cache_dtype``, ``kv_caches`` and
``compilation_config.static_forward_context``, so it is called on an uninitialised runner
(``object.__new__``; building one needs a GPU) holding, as the real runner does after
``bind_kv_cache``, a ``kv_caches`` list whose recurrent-layer entry (Mamba / GDN) is a LIST of state
tensors, next to attention caches of two dtypes and a ``None``. The forward context holds a real
``Attention`` and a real ``MLAAttention`` (uninitialised instances with scale buffers / parameters),
and a non-attention module with a ``_k_scale`` of its own (must stay untouched).

* affected releases (0.12.0 - 0.26.0): without the patch ``AttributeError: 'list' object has no
  attribute 'zero_'`` and the scales are not reset; with it every tensor (list members included) is
  zeroed in place and the scales are 1.0, bitwise what vLLM 0.27.0's method does on the same inputs
  (its source is copied below as the oracle); attention-only caches and a non-quantized cache dtype
  give identical results with and without the patch;
* fixed releases: not-needed, nothing touched; 0.27.0 - 0.28.0 run the oracle's body unpatched
  (checked against the copy), 0.29.0 removed the method, 0.34.0 the whole module (model runner V1:
  ``vllm/v1/worker/gpu_worker.py`` imports only ``vllm.v1.worker.gpu.model_runner.GPUModelRunner``,
  which has no such method).
"""

import importlib
import textwrap
from types import SimpleNamespace

import pytest

import compat_patches
from compat_patches.core.source import function_source

from ._foreign_wrapper import assert_foreign_wrapper_reported

pytest.importorskip("torch")

NAME = "vllm-hybrid-fp8-kv-wake"
AFFECTED = ">=0.12.0.dev0,<0.27.0"
MODULE = "vllm.v1.worker.gpu_model_runner"
# 0.34.0 removed model runner V1 (the module above); V2's runner is the only one left
RUNNER_V2 = "vllm.v1.worker.gpu.model_runner"
MODULE_REMOVED = ">=0.34.0"
affected = pytest.mark.requires(vllm=AFFECTED)

# vLLM 0.27.0's method (vllm/v1/worker/gpu_model_runner.py, vllm-0.27.0 wheel from PyPI; Apache-2.0,
# Copyright contributors to the vLLM project), verbatim: the oracle of what the patch must do.
# Before 0.20.0 the installed release's own early return (`startswith("fp8")`) replaces its first
# line (see `_oracle`).
INIT_FP8_KV_SCALES_0_27_0 = '''\
    @torch.inference_mode()
    def init_fp8_kv_scales(self) -> None:
        """
        Re-initialize the KV cache and FP8 scales after waking from sleep.
        1. Zero out the KV cache tensors to remove garbage data from re-allocation.
        2. Reset Attention layer scaling factors (_k_scale, _v_scale) to 1.0.
          If these are left at 0.0 (default after wake_up), all KV cache values
          become effectively zero, causing gibberish output.
        """
        if not is_quantized_kv_cache(self.cache_config.cache_dtype):
            return

        kv_caches = getattr(self, "kv_caches", [])
        for cache_entry in kv_caches:
            if cache_entry is None:
                continue
            # Hybrid models (Mamba, DeltaNet) store per-layer state as a
            # list of tensors rather than a single tensor.
            if isinstance(cache_entry, list):
                for t in cache_entry:
                    t.zero_()
            else:
                cache_entry.zero_()

        k_attr_names = ("_k_scale", "k_scale")
        v_attr_names = ("_v_scale", "v_scale")

        attn_layers = self.compilation_config.static_forward_context
        for name, module in attn_layers.items():
            if isinstance(module, (Attention, MLAAttention)):
                # TODO: Generally, scale is 1.0 if user uses on-the-fly fp8
                # kvcache quant. However, to get better accuracy, compression
                # frameworks like llm-compressors allow users to tune the
                # scale. We may need to restore the specific calibrated scales
                # here in the future.
                k_scale_val, v_scale_val = 1.0, 1.0

                # Processing K Scale
                for attr in k_attr_names:
                    if hasattr(module, attr):
                        param = getattr(module, attr)
                        if isinstance(param, torch.Tensor):
                            param.fill_(k_scale_val)

                # Processing V Scale
                for attr in v_attr_names:
                    if hasattr(module, attr):
                        param = getattr(module, attr)
                        if isinstance(param, torch.Tensor):
                            param.fill_(v_scale_val)
'''


def _module():
    return importlib.import_module(MODULE)


def _oracle(module):
    """0.27.0's function, run in the installed module's namespace (its Attention classes)."""
    source = textwrap.dedent(INIT_FP8_KV_SCALES_0_27_0)
    if not hasattr(module, "is_quantized_kv_cache"):  # < 0.20.0: the release's own guard
        source = source.replace("is_quantized_kv_cache(self.cache_config.cache_dtype)",
                                'self.cache_config.cache_dtype.startswith("fp8")')
    scope = dict(vars(module))
    exec(compile(source, "<vllm-0.27.0 init_fp8_kv_scales>", "exec"), scope)
    return scope["init_fp8_kv_scales"]


def _attention(cls, scale_dtype):
    import torch

    layer = object.__new__(cls)  # the real class; its __init__ needs a vLLM config and a GPU
    torch.nn.Module.__init__(layer)
    layer.register_buffer("_k_scale", torch.tensor(0.0, dtype=scale_dtype))
    layer.register_buffer("_v_scale", torch.tensor(0.0, dtype=scale_dtype))
    layer.k_scale = torch.nn.Parameter(torch.tensor(0.0), requires_grad=False)
    layer.v_scale = torch.nn.Parameter(torch.tensor(0.0), requires_grad=False)
    layer._q_scale = torch.tensor(0.0)  # not one of the reset names: stays as it is
    return layer


def _runner(cache_dtype="fp8", hybrid=True):
    """An uninitialised GPUModelRunner with what init_fp8_kv_scales reads, woken with garbage."""
    import torch

    module = _module()
    runner = object.__new__(module.GPUModelRunner)
    runner.cache_config = SimpleNamespace(cache_dtype=cache_dtype)
    mixer = torch.nn.Module()  # a Mamba layer: not Attention, its tensors are not reset
    mixer._k_scale = torch.tensor(5.0)
    runner.compilation_config = SimpleNamespace(static_forward_context={
        "model.layers.0.self_attn.attn": _attention(module.Attention, torch.float32),
        "model.layers.1.mixer": mixer,
        "model.layers.2.self_attn.attn": _attention(module.MLAAttention, torch.bfloat16),
    })
    kv_caches = [torch.full((2, 4, 3), 7, dtype=torch.uint8),  # fp8 attention cache, as bytes
                 None,
                 torch.full((2, 4, 3), -2.5, dtype=torch.bfloat16)]
    if hybrid:  # a recurrent layer's entry: its conv and SSM states
        kv_caches.insert(1, [torch.full((3, 2), 1.5), torch.full((3, 2, 2), -4.0)])
    runner.kv_caches = kv_caches
    return runner


def _tensors(runner):
    """Every tensor the method may touch, by name, in order."""
    found = {}
    for i, entry in enumerate(runner.kv_caches):
        for j, tensor in enumerate(entry if isinstance(entry, list) else [entry]):
            if tensor is not None:
                found[f"kv[{i}][{j}]"] = tensor
    for name, layer in runner.compilation_config.static_forward_context.items():
        for attr in ("_k_scale", "_v_scale", "k_scale", "v_scale", "_q_scale"):
            if hasattr(layer, attr):
                found[f"{name}.{attr}"] = getattr(layer, attr)
    return found


def _state(runner):
    """(name, object id, data_ptr, dtype, bytes) of every tensor: compared bitwise."""
    import torch

    return [(name, id(t), t.data_ptr(), t.dtype, t.detach().reshape(-1).view(torch.uint8).tolist())
            for name, t in _tensors(runner).items()]


def _values(runner):
    return [(name, dtype, data) for name, _, _, dtype, data in _state(runner)]


def _woken(runner, oracle=None):
    """Run init_fp8_kv_scales on `runner` (the installed method, or the oracle); returns its state."""
    if oracle is not None:
        oracle(runner)
    else:
        runner.init_fp8_kv_scales()
    return _state(runner)


def _assert_woken_right(runner, before):
    import torch

    tensors = _tensors(runner)
    for (name, ident, ptr, dtype, _), (name2, t) in zip(before, tensors.items()):
        assert name == name2 and id(t) == ident and t.data_ptr() == ptr  # in place, same objects
        if name.startswith("kv["):
            assert not t.any(), name
        elif name.endswith(("_k_scale", "_v_scale", "k_scale", "v_scale")) and "mixer" not in name:
            assert torch.equal(t, torch.ones_like(t)), name
    assert tensors["model.layers.1.mixer._k_scale"].item() == 5.0
    assert tensors["model.layers.0.self_attn.attn._q_scale"].item() == 0.0


# --------------------------------------------------------------------------------------------
# affected releases
# --------------------------------------------------------------------------------------------
@affected
def test_hybrid_wake_raises_without_patch_and_zeroes_every_tensor_with_it():
    import torch

    runner = _runner()
    with pytest.raises(AttributeError, match="'list' object has no attribute 'zero_'"):
        runner.init_fp8_kv_scales()
    scales = _tensors(runner)
    assert scales["model.layers.0.self_attn.attn._k_scale"].item() == 0.0  # never reached
    assert torch.equal(runner.kv_caches[1][0], torch.full((3, 2), 1.5))

    expected = _woken(_runner(), oracle=_oracle(_module()))
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status in ("applied", "deferred"), report[NAME]
        for call in ("bound", "unbound"):
            runner = _runner()
            before = _state(runner)
            if call == "bound":
                runner.init_fp8_kv_scales()
            else:
                type(runner).init_fp8_kv_scales(runner)
            _assert_woken_right(runner, before)
            assert _values(runner) == [(n, d, b) for n, _, _, d, b in expected]


@affected
@pytest.mark.parametrize("cache_dtype,hybrid", [("fp8", False), ("fp8_e5m2", False), ("auto", True)],
                         ids=["attention-only", "attention-only-e5m2", "not-quantized"])
def test_other_inputs_identical_with_and_without_patch(cache_dtype, hybrid):
    unpatched = _woken(_runner(cache_dtype, hybrid))
    with compat_patches.patched(NAME):
        patched = _woken(_runner(cache_dtype, hybrid))
    oracle = _woken(_runner(cache_dtype, hybrid), oracle=_oracle(_module()))
    values = [[(n, d, b) for n, _, _, d, b in s] for s in (unpatched, patched, oracle)]
    assert values[0] == values[1] == values[2]
    if cache_dtype == "auto":  # early return: nothing touched
        assert values[0] == _values(_runner(cache_dtype, hybrid))


@pytest.mark.requires(vllm=">=0.21.0,<0.27.0")
def test_the_wake_up_hook_reaches_the_patched_method():
    """From 0.21.0 the worker's wake-up calls runner.post_kv_cache_wake_up()."""
    runner = _runner()
    with pytest.raises(AttributeError, match="zero_"):
        runner.post_kv_cache_wake_up()
    with compat_patches.patched(NAME):
        runner = _runner()
        before = _state(runner)
        runner.post_kv_cache_wake_up()
    _assert_woken_right(runner, before)


@affected
def test_runs_in_inference_mode_as_the_original():
    import torch

    seen = []
    runner = _runner(hybrid=False)
    runner.compilation_config.static_forward_context = _Recording(seen)
    runner.init_fp8_kv_scales()
    with compat_patches.patched(NAME):
        runner.init_fp8_kv_scales()
    assert seen == [True, True]
    assert not torch.is_inference_mode_enabled()


class _Recording(dict):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def items(self):
        import torch

        self.seen.append(torch.is_inference_mode_enabled())
        return super().items()


@affected
def test_revert_restores_the_very_original():
    cls = _module().GPUModelRunner
    before = cls.__dict__["init_fp8_kv_scales"]
    with compat_patches.patched(NAME):
        assert cls.__dict__["init_fp8_kv_scales"] is not before
    assert cls.__dict__["init_fp8_kv_scales"] is before


@affected
def test_applied_with_the_shape_of_the_installed_release():
    from compat_patches.core.versions import installed_version
    from compat_patches.patches.vllm import hybrid_fp8_kv_wake as mod
    from packaging.version import Version

    original = _module().GPUModelRunner.__dict__["init_fp8_kv_scales"]
    shape = "startswith" if Version(installed_version("vllm")) < Version("0.20.0") else "quantized"
    other = {"startswith": "quantized", "quantized": "startswith"}[shape]
    assert mod._check(shape)(original) is None
    assert "body differs" in mod._check(other)(original)
    assert mod.fixed_method(original) is None
    with compat_patches.patched(NAME) as report:
        entry = report[NAME]
        assert entry.status == "applied", entry
        assert list(entry.targets) == [f"{MODULE}:GPUModelRunner.init_fp8_kv_scales"]
        assert "fixed upstream in vllm 0.27.0" in entry.reason


@affected
def test_foreign_wrapper_underneath_is_reported_not_bypassed():
    assert_foreign_wrapper_reported(NAME, _module(), "GPUModelRunner.init_fp8_kv_scales")


# --------------------------------------------------------------------------------------------
# the fingerprint (torch only)
# --------------------------------------------------------------------------------------------
def _exec_method(source, filename):
    import linecache

    import torch

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope = {"torch": torch}
    exec(compile(source, filename, "exec"), scope)
    return scope["init_fp8_kv_scales"]


def test_fingerprint_refuses_other_methods():
    from compat_patches.patches.vllm import hybrid_fp8_kv_wake as mod

    fixed_027 = textwrap.dedent(INIT_FP8_KV_SCALES_0_27_0)
    old_guard = fixed_027.replace("is_quantized_kv_cache(self.cache_config.cache_dtype)",
                                  'self.cache_config.cache_dtype.startswith("fp8")')
    loop_fixed = fixed_027[fixed_027.index("    for cache_entry"):
                           fixed_027.index("    k_attr_names")]
    loop_buggy = ("    for cache_tensor in kv_caches:\n"
                  "        if cache_tensor is not None:\n"
                  "            cache_tensor.zero_()\n\n")
    buggy_new = fixed_027.replace(loop_fixed, loop_buggy)
    buggy_old = old_guard.replace(loop_fixed, loop_buggy)
    undecorated = buggy_new.replace("@torch.inference_mode()\n", "")
    other = buggy_new.replace("fill_(k_scale_val)", "fill_(v_scale_val)")
    cases = [  # source, check(startswith), check(quantized), fixed
        (buggy_old, None, "body differs", None),
        (buggy_new, "body differs", None, None),
        (fixed_027, "body differs", "body differs", "already"),
        (old_guard, "body differs", "body differs", "already"),
        (undecorated, "body differs", "decorated with []", None),
        (other, "body differs", "body differs", None),
    ]
    for number, (source, old, new, fix) in enumerate(cases):
        method = _exec_method(source, f"<{NAME}-{number}>")
        for finding, expected in ((mod._check("startswith")(method), old),
                                  (mod._check("quantized")(method), new),
                                  (mod.fixed_method(method), fix)):
            if expected is None:
                assert finding is None, (number, finding)
            else:
                assert expected in finding, (number, finding)
    no_source = _exec_method(buggy_new, "<no-source>")
    import linecache
    linecache.cache.pop("<no-source>", None)
    assert "source unavailable" in mod._check("quantized")(no_source)
    assert mod.fixed_method(no_source) is None


# --------------------------------------------------------------------------------------------
# fixed releases
# --------------------------------------------------------------------------------------------
@pytest.mark.requires(vllm=">=0.27.0")
def test_not_needed_on_fixed_releases():
    import importlib.util

    entry = compat_patches.report()[NAME]
    assert entry.status == "not-needed", entry
    assert "0.27.0" in entry.reason
    if importlib.util.find_spec(MODULE) is None:  # 0.34.0 on: nothing left to touch
        with compat_patches.patched(NAME) as report:
            assert report[NAME].status == "not-needed"
        return
    cls = _module().GPUModelRunner
    before = cls.__dict__.get("init_fp8_kv_scales")
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed"
        assert cls.__dict__.get("init_fp8_kv_scales") is before


@pytest.mark.requires(vllm=">=0.27.0,<0.29.0")
def test_fixed_release_is_the_oracle():
    """The copy above is the installed method; unpatched it zeroes list entries itself."""
    from compat_patches.patches.vllm import hybrid_fp8_kv_wake as mod

    installed = _module().GPUModelRunner.__dict__["init_fp8_kv_scales"]
    copy = _exec_method(textwrap.dedent(INIT_FP8_KV_SCALES_0_27_0), f"<{NAME}-oracle>")
    assert function_source(installed) == function_source(copy)
    for hybrid in (True, False):
        runner = _runner(hybrid=hybrid)
        before = _state(runner)
        expected = _woken(_runner(hybrid=hybrid), oracle=_oracle(_module()))
        assert _woken(runner) == _state(runner)
        _assert_woken_right(runner, before)
        assert _values(runner) == [(n, d, b) for n, _, _, d, b in expected]


@pytest.mark.requires(vllm=">=0.27.0,<0.29.0")
def test_a_build_inside_the_range_that_has_the_fix_reports_not_needed():
    from compat_patches.core import PatchManager
    from compat_patches.core.versions import installed_version
    from compat_patches.patches.vllm.hybrid_fp8_kv_wake import PATCH

    cls = _module().GPUModelRunner
    before = cls.__dict__["init_fp8_kv_scales"]
    manager = PatchManager([PATCH], version_of=lambda dist: "0.26.1.dev2" if dist == "vllm"
                           else installed_version(dist))
    with manager.patched(NAME) as report:
        entry = report[NAME]
        assert entry.status == "not-needed", entry
        assert "zeroes every tensor of a list entry already" in entry.reason
        assert cls.__dict__["init_fp8_kv_scales"] is before


@pytest.mark.requires(vllm=">=0.29.0,<0.34.0")
def test_method_removed_upstream():
    assert not hasattr(_module().GPUModelRunner, "init_fp8_kv_scales")


@pytest.mark.requires(vllm=MODULE_REMOVED)
def test_module_removed_upstream():
    """0.34.0 dropped model runner V1: the record's target module is gone, and the runner left
    (V2, the one gpu_worker.py builds) has no init_fp8_kv_scales either."""
    import importlib.util

    assert importlib.util.find_spec(MODULE) is None
    assert not hasattr(importlib.import_module(RUNNER_V2).GPUModelRunner, "init_fp8_kv_scales")
