"""vllm-moe-reprocess-storage against vLLM's REAL UnquantizedFusedMoEMethod / FusedMoE on CPU.

The layer is a minimally initialised real FusedMoE (see ``_fused_moe_cpu``): weights made by the
real ``create_weights``, loaded by the real ``FusedMoE.weight_loader``, processed by the real
``process_weights_after_loading`` -> ``_setup_kernel`` -> ``convert_to_unquantized_kernel_format``
(FlashInfer CUTLASS: the ``[w3; w1]`` swap, a new tensor; Triton: the same tensor) ->
``replace_parameter``. Only the platform (CUDA-like) and the kernel factory (a counter) stand in.

Scenario = an RL weight sync as verl / ms-swift do it: load + PWAL at engine start, then
``load_weights(new)`` + PWAL again. Without the patch (0.15.0 - 0.20.2) the second PWAL registers
new Parameters (CUTLASS: new storage) and builds the kernel again; with it the Parameters, their
storage and the kernel are kept, and the values are bitwise those of a fresh load of the new weights.
On 0.21.0+ the patch is not-needed and the release itself behaves like the patched one.
"""

import pytest

torch = pytest.importorskip("torch")

import compat_patches  # noqa: E402

from . import _fused_moe_cpu as h  # noqa: E402

NAME = "vllm-moe-reprocess-storage"
AFFECTED = ">=0.15.0,<0.21.0"
BACKENDS = ["FLASHINFER_CUTLASS", "TRITON"]


@pytest.fixture
def kernels(monkeypatch):
    return h.install_gpu_stand_ins(monkeypatch)


def _sync(backend_name, kernels):
    """Engine start with checkpoint 0, then a weight sync with checkpoint 1 + PWAL again."""
    method = h.make_method(backend_name)
    layer = h.make_layer(method)
    h.load(layer, h.checkpoint(0))
    method.process_weights_after_loading(layer)
    before = dict(w13=layer.w13_weight, w2=layer.w2_weight, ptr13=layer.w13_weight.data_ptr(),
                  ptr2=layer.w2_weight.data_ptr(), kernel=getattr(method, _kernel_attr(method)),
                  builds=kernels.calls)
    h.load(layer, h.checkpoint(1))
    method.process_weights_after_loading(layer)
    return method, layer, before


def _kernel_attr(method):
    """``kernel`` (0.15 - 0.19) or ``moe_kernel`` (0.20+): the one the first processing set."""
    return "moe_kernel" if getattr(method, "moe_kernel", None) is not None else "kernel"


def _assert_fresh_values(backend_name, layer):
    oracle = h.fresh(backend_name, h.checkpoint(1))
    assert torch.equal(layer.w13_weight, oracle.w13_weight)
    assert torch.equal(layer.w2_weight, oracle.w2_weight)


@pytest.mark.requires(vllm=AFFECTED)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_reprocessing_replaces_parameters_without_patch_and_keeps_them_with_it(backend_name,
                                                                               kernels):
    method, layer, before = _sync(backend_name, kernels)
    # the bug: new Parameter objects, and the kernel built a second time
    assert layer.w13_weight is not before["w13"] and layer.w2_weight is not before["w2"]
    assert kernels.calls == before["builds"] + 1
    if backend_name == "FLASHINFER_CUTLASS":   # the [w3; w1] swap allocates: the storage moved
        assert layer.w13_weight.data_ptr() != before["ptr13"]
    _assert_fresh_values(backend_name, layer)

    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        method, layer, before = _sync(backend_name, kernels)
        assert layer.w13_weight is before["w13"] and layer.w2_weight is before["w2"]
        assert layer.w13_weight.data_ptr() == before["ptr13"]
        assert layer.w2_weight.data_ptr() == before["ptr2"]
        assert kernels.calls == before["builds"]            # kernel built once
        assert getattr(method, _kernel_attr(method)) is before["kernel"]
        assert layer.w13_weight.weight_loader == layer.weight_loader   # still reloadable
        _assert_fresh_values(backend_name, layer)


@pytest.mark.requires(vllm=AFFECTED)
def test_first_call_is_the_original(kernels):
    """Engine start under the patch: identical result to the unpatched first processing."""
    unpatched = h.fresh("FLASHINFER_CUTLASS", h.checkpoint(0))
    with compat_patches.patched(NAME):
        builds = kernels.calls
        patched = h.fresh("FLASHINFER_CUTLASS", h.checkpoint(0))
        assert kernels.calls == builds + 1
    assert torch.equal(patched.w13_weight, unpatched.w13_weight)
    assert torch.equal(patched.w2_weight, unpatched.w2_weight)


@pytest.mark.requires(vllm=AFFECTED)
def test_incompatible_shape_falls_back_to_replacement(kernels):
    """0.21's prefer_copy copies only into a same shape/dtype/device Parameter; else it replaces."""
    with compat_patches.patched(NAME):
        method = h.make_method("FLASHINFER_CUTLASS")
        layer = h.make_layer(method)
        h.load(layer, h.checkpoint(0))
        method.process_weights_after_loading(layer)
        old = layer.w2_weight
        layer.w2_weight = torch.nn.Parameter(old.data.double(), requires_grad=False)
        layer.w2_weight.weight_loader = old.weight_loader
        swapped, w13, builds = layer.w2_weight, layer.w13_weight, kernels.calls
        method._setup_kernel(layer, layer.w13_weight, old)   # kernel-format float32 w2
        assert layer.w2_weight is not swapped and layer.w2_weight.dtype == torch.float32
        assert layer.w13_weight is w13 and kernels.calls == builds
        assert layer.w2_weight.weight_loader == old.weight_loader


@pytest.mark.requires(vllm=AFFECTED)
def test_fingerprint_matches_the_installed_release():
    from compat_patches.patches.vllm import moe_reprocess_storage as mod

    original = h.method_module().UnquantizedFusedMoEMethod._setup_kernel
    assert mod.check_setup_kernel(original) is None
    assert mod.fixed_setup_kernel(original) is None
    assert mod._read(original)[0] in ("kernel", "moe_kernel")


def test_fingerprint_refuses_other_shapes():
    from compat_patches.patches.vllm import moe_reprocess_storage as mod

    def _setup_kernel(self, layer, w13, w2):
        replace_parameter(layer, "w13_weight", w13)  # noqa: F821
        self.kernel = build()  # noqa: F821

    assert "convert_to_unquantized_kernel_format" in mod.check_setup_kernel(_setup_kernel)

    def _setup_kernel(self, layer, w13, w2):  # noqa: F811 - the 0.21.0 shape
        w13_new, w2_new = convert_to_unquantized_kernel_format(self.unquantized_backend,  # noqa
                                                               layer=layer, w13_weight=w13,
                                                               w2_weight=w2)
        is_weight_update = self.moe_kernel is not None
        replace_parameter(layer, "w13_weight", w13_new, prefer_copy=is_weight_update)  # noqa
        replace_parameter(layer, "w2_weight", w2_new, prefer_copy=is_weight_update)  # noqa
        if not is_weight_update:
            self.moe_kernel = make_unquantized_moe_kernel()  # noqa: F821

    assert mod.fixed_setup_kernel(_setup_kernel)
    assert mod.check_setup_kernel(_setup_kernel) is None


@pytest.mark.requires(vllm=">=0.21.0")
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_fixed_release_keeps_storage_itself(backend_name, kernels):
    """The oracle: fixed releases (PR 40390 in; 0.33's replace_parameter keeps the Parameter
    always) behave as the patched ones."""
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed", report[NAME]
    method, layer, before = _sync(backend_name, kernels)
    assert layer.w13_weight is before["w13"] and layer.w2_weight is before["w2"]
    assert layer.w13_weight.data_ptr() == before["ptr13"]
    assert kernels.calls == before["builds"]
    _assert_fresh_values(backend_name, layer)


@pytest.mark.requires(vllm=">=0.21.0")
def test_not_needed_on_fixed_releases():
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed", report[NAME]
