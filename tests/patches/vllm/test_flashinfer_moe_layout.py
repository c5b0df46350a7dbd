"""vllm-flashinfer-moe-layout against vLLM's REAL FusedMoE / RoutedExperts weight loader on CPU.

The layer is a minimally initialised real FusedMoE (``RoutedExperts`` from 0.24; see
``_fused_moe_cpu``): weights made by the real ``create_weights``, loaded by the real
``weight_loader`` (TP sharding from the layer's ``tp_rank``/``tp_size``, here simulated: rank 0 of
1, ranks 0 and 1 of 2), processed by the real ``process_weights_after_loading`` with the FlashInfer
CUTLASS backend selected (its ``[w3; w1]`` swap is plain torch). Only the platform (CUDA-like) and
the kernel factory stand in; for TRTLLM the block-layout conversion (FlashInfer's own library) is a
stand-in producing a 4-D tensor.

Scenario = an RL weight sync as OpenRLHF / AReaL do it: engine start (load checkpoint 0 + process),
then a raw ``load_weights`` of checkpoint 1. The oracle is a fresh layer loaded with checkpoint 1 and
processed once. Without the patch the reloaded ``w13_weight`` is ``[w1; w3]`` (the oracle with its
halves swapped); with it, bitwise the oracle, and a second processing changes nothing.
"""

import pytest

torch = pytest.importorskip("torch")

import compat_patches  # noqa: E402

from . import _fused_moe_cpu as h  # noqa: E402

NAME = "vllm-flashinfer-moe-layout"
AFFECTED = ">=0.15.0"
TP = [pytest.param(0, 1, id="tp1"), pytest.param(0, 2, id="tp2-rank0"),
      pytest.param(1, 2, id="tp2-rank1")]
INPUTS = [pytest.param(False, id="per-expert"), pytest.param(True, id="fused-3d")]

affected = pytest.mark.requires(vllm=AFFECTED)


@pytest.fixture
def gpu(monkeypatch):
    return h.install_gpu_stand_ins(monkeypatch)


def _engine_start(backend_name, tp_rank, tp_size):
    method = h.make_method(backend_name, tp_rank=tp_rank, tp_size=tp_size)
    layer = h.make_layer(method, tp_rank, tp_size)
    h.load(layer, h.checkpoint(0))
    method.process_weights_after_loading(layer)
    return method, layer


def _swap(w13):
    from compat_patches.moe import swap_w13_halves

    return swap_w13_halves(w13)


@affected
@pytest.mark.parametrize("fused", INPUTS)
@pytest.mark.parametrize("tp_rank,tp_size", TP)
def test_raw_reload_writes_kernel_layout(gpu, tp_rank, tp_size, fused):
    oracle = h.fresh("FLASHINFER_CUTLASS", h.checkpoint(1), tp_rank, tp_size)

    # the bug: the reload writes [w1; w3] into a layer the kernel reads as [w3; w1]
    method, layer = _engine_start("FLASHINFER_CUTLASS", tp_rank, tp_size)
    h.load(layer, h.checkpoint(1), fused=fused)
    assert not torch.equal(layer.w13_weight, oracle.w13_weight)
    assert torch.equal(layer.w13_weight, _swap(oracle.w13_weight))
    assert torch.equal(layer.w2_weight, oracle.w2_weight)

    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        method, layer = _engine_start("FLASHINFER_CUTLASS", tp_rank, tp_size)
        w13, ptr = layer.w13_weight, layer.w13_weight.data_ptr()
        h.load(layer, h.checkpoint(1), fused=fused)
        assert torch.equal(layer.w13_weight, oracle.w13_weight)
        assert torch.equal(layer.w2_weight, oracle.w2_weight)
        # a second processing (verl-style) does not reorder again, nor rebuild anything
        builds = gpu.calls
        method.process_weights_after_loading(layer)
        assert layer.w13_weight is w13 and layer.w13_weight.data_ptr() == ptr
        assert torch.equal(layer.w13_weight, oracle.w13_weight)
        assert gpu.calls == builds


@affected
def test_partial_reload_then_reprocessing(gpu):
    """Only the gate shards synced (e.g. a subset of experts/tensors changed): unpatched, even
    re-running the processing (verl) cannot make it right; patched, right with or without it."""
    ckpt0, ckpt1 = h.checkpoint(0), h.checkpoint(1)
    mixed = {e: {"w1": ckpt1[e]["w1"], "w3": ckpt0[e]["w3"], "w2": ckpt0[e]["w2"]}
             for e in range(h.E)}
    oracle = h.fresh("FLASHINFER_CUTLASS", mixed)

    def sync_gates(layer):
        for e in range(h.E):
            layer.w13_weight.weight_loader(layer.w13_weight, ckpt1[e]["w1"], "experts.w13_weight",
                                           shard_id="w1", expert_id=e)

    method, layer = _engine_start("FLASHINFER_CUTLASS", 0, 1)
    sync_gates(layer)
    method.process_weights_after_loading(layer)
    assert not torch.equal(layer.w13_weight, oracle.w13_weight)

    with compat_patches.patched(NAME):
        method, layer = _engine_start("FLASHINFER_CUTLASS", 0, 1)
        sync_gates(layer)
        assert torch.equal(layer.w13_weight, oracle.w13_weight)
        method.process_weights_after_loading(layer)
        assert torch.equal(layer.w13_weight, oracle.w13_weight)


@affected
def test_other_backends_untouched(gpu):
    """Triton: the patch marks nothing, loads and re-processes exactly as vLLM does."""
    results = []
    for patched in (False, True):
        with compat_patches.patched(NAME) if patched else _nothing():
            method, layer = _engine_start("TRITON", 0, 1)
            h.load(layer, h.checkpoint(1))
            builds = gpu.calls
            method.process_weights_after_loading(layer)   # re-processing runs as without patch
            results.append((layer.w13_weight.clone(), layer.w2_weight.clone(), gpu.calls - builds))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _block_layout_stand_in(cache, w13, w2, *args, **kwargs):
    """FlashInfer's TRTLLM block layout (library code) stood in: 4-D, as 0.16 - 0.30 produce."""
    return (w13.reshape(w13.shape[0], 2, -1, w13.shape[-1]).contiguous(),
            w2.reshape(w2.shape[0], 2, -1, w2.shape[-1]).contiguous())


@pytest.mark.requires(vllm=">=0.16.0,<0.31.0")
def test_trtllm_block_layout_raises_a_clear_error(gpu, monkeypatch):
    import importlib

    for module_name in (h.METHOD_MODULE, h.ORACLE_MODULE):
        module = importlib.import_module(module_name)
        if hasattr(module, "convert_moe_weights_to_flashinfer_trtllm_block_layout"):
            monkeypatch.setattr(module, "convert_moe_weights_to_flashinfer_trtllm_block_layout",
                                _block_layout_stand_in)
    with compat_patches.patched(NAME):
        method, layer = _engine_start("FLASHINFER_TRTLLM", 0, 1)
        assert layer.w13_weight.dim() == 4
        with pytest.raises(RuntimeError, match=r"reload_weights\(is_checkpoint_format=True\)"):
            h.load(layer, h.checkpoint(1))
        with pytest.raises(RuntimeError, match="block layout"):
            layer.w2_weight.weight_loader(layer.w2_weight, h.checkpoint(1)[0]["w2"],
                                          "experts.w2_weight", shard_id="w2", expert_id=0)
    # unpatched: some other failure (lost weight_loader, or a shape error deep in the loader)
    method, layer = _engine_start("FLASHINFER_TRTLLM", 0, 1)
    with pytest.raises((AttributeError, RuntimeError, ValueError, IndexError)) as info:
        h.load(layer, h.checkpoint(1))
    assert "is_checkpoint_format" not in str(info.value)


@affected
def test_layers_processed_elsewhere_are_left_alone(gpu):
    """Unmarked Parameters (built before the patch, or fresh ones of a layerwise reload) load in
    checkpoint format as vLLM's loader does."""
    with compat_patches.patched(NAME):
        method = h.make_method("FLASHINFER_CUTLASS")
        layer = h.make_layer(method)
        h.load(layer, h.checkpoint(1))            # before processing: checkpoint format
        oracle = h.fresh("FLASHINFER_CUTLASS", h.checkpoint(1))
        method.process_weights_after_loading(layer)
        assert torch.equal(layer.w13_weight, oracle.w13_weight)


@affected
def test_swap_helper_matches_vllm():
    import importlib

    swap = importlib.import_module(h.ORACLE_MODULE).swap_w13_to_w31   # what the backend runs
    w13 = torch.randn(3, 10, 4)
    assert torch.equal(_swap(w13), swap(w13))
    assert torch.equal(_swap(_swap(w13)), w13)
    from compat_patches.moe import W31
    from compat_patches.patches.vllm import flashinfer_moe_layout as mod

    assert mod.W31 == W31   # the record names the layout as the helper module does


@affected
def test_stand_ins_set_what_the_real_code_reads():
    """The harness is read against the installed release: the uninitialised real layer and method
    carry every attribute their real ``__init__`` sets that the loader / post-load path reads (a
    release adding one, as 0.34.0 added ``RoutedExperts.shared_expert_online_loader``, fails here
    by name rather than deep inside the loader), and the namespaces standing in for vLLM's configs
    every field read from them."""
    method = h.make_method("FLASHINFER_CUTLASS")
    layer = h.make_layer(method)
    assert h.unset_attributes(h.layer_class(), ("weight_loader",), layer) == []
    assert h.unset_attributes(type(method), ("process_weights_after_loading",), method) == []


@affected
def test_targets_found_on_this_release():
    h.method_module()
    h.layer_class()
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        cls = h.layer_class()
        assert hasattr(vars(cls)["weight_loader"], "__wrapped__")


@pytest.mark.requires(vllm=">=0.30.0")
def test_weight_cache_ipc_path_runs_the_original(gpu):
    """Under 0.30+'s ``weights_already_processed()`` (weights arrive in kernel layout) the original
    runs (it only rebuilds the kernel) and the layer stays marked."""
    from vllm.model_executor.utils import weights_already_processed

    from compat_patches.moe.processed_layout import layout_of
    from compat_patches.patches.vllm.flashinfer_moe_layout import LAYOUT_ATTR, W31

    oracle = h.fresh("FLASHINFER_CUTLASS", h.checkpoint(0))
    with compat_patches.patched(NAME):
        method, layer = _engine_start("FLASHINFER_CUTLASS", 0, 1)
        builds = gpu.calls
        with weights_already_processed():
            method.process_weights_after_loading(layer)
        assert gpu.calls == builds + 1
        assert layout_of(layer.w13_weight, LAYOUT_ATTR) == W31
        assert torch.equal(layer.w13_weight, oracle.w13_weight)


@pytest.mark.requires(vllm=">=0.34.0")
def test_direct_reload_mode_stays_right(gpu, monkeypatch):
    """0.34.0's direct reload (``VLLM_RELOAD_MODE=direct``, reload/direct.py): vLLM records each
    tensor's checkpoint layout at cold start, views re-laid-out tensors back to it on
    ``begin_direct_reload``, lets the loaders write the checkpoint in place and re-runs the whole
    post-load processing in ``finish_direct_reload``. The ``[w3; w1]`` swap keeps shape and stride, so
    nothing is viewed back: unpatched, the loader writes ``[w1; w3]`` and the re-run swaps it; patched,
    the loader writes the kernel layout and the re-run is skipped on the marked layer. Both are
    bitwise a fresh load, in the Parameter (and storage) the engine started with. vLLM's own
    model-level ``process_weights_after_loading`` and reload functions run; the model config is a
    namespace with the three fields they read."""
    import types

    from vllm.model_executor.model_loader.reload import direct
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    monkeypatch.setenv("VLLM_RELOAD_MODE", "direct")
    assert direct.direct_reload_enabled()
    config = types.SimpleNamespace(dtype=torch.float32, quantization=None,
                                   word_embeddings_untied_by_checkpoint=False)
    cpu = torch.device("cpu")
    oracle = h.fresh("FLASHINFER_CUTLASS", h.checkpoint(1))

    def sync(patched):
        method = h.make_method("FLASHINFER_CUTLASS")
        torch.nn.Module.__init__(method)   # a CustomOp module: model.named_modules() walks it
        layer = h.make_layer(method)
        model = torch.nn.Module()
        model.experts = layer
        h.load(layer, h.checkpoint(0))
        process_weights_after_loading(model, config, cpu)      # cold start: records the layout
        w13, ptr = layer.w13_weight, layer.w13_weight.data_ptr()
        direct.begin_direct_reload(model)
        h.load(layer, h.checkpoint(1))
        # before the re-run: checkpoint order unpatched, kernel order patched
        loaded = oracle.w13_weight if patched else _swap(oracle.w13_weight)
        assert torch.equal(layer.w13_weight, loaded)
        direct.finish_direct_reload(model, config, cpu)
        assert layer.w13_weight is w13 and layer.w13_weight.data_ptr() == ptr
        assert torch.equal(layer.w13_weight, oracle.w13_weight)
        assert torch.equal(layer.w2_weight, oracle.w2_weight)

    sync(patched=False)
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        builds = gpu.calls
        sync(patched=True)
        assert gpu.calls == builds + 1   # built at cold start only
