"""vllm-ascend-moe-layout: reload of MoE expert weights after vLLM-Ascend's post-load transposition.

No NPU here, and ``vllm_ascend`` cannot be imported without ``torch_npu``. So:

* Quick tests (torch only): a fake ``vllm_ascend`` package is written to a temporary directory with
  ``AscendUnquantizedFusedMoEMethod.process_weights_after_loading`` in the three shapes read from the
  releases (REFERENCE_METHODS: Parameter replacement 0.13.0-0.25.1rc1, ``.data`` 0.26.0rc1,
  ``replace_parameter`` 0.27.1rc1+), with the NPU-only tail (FRACTAL_NZ cast) as identity. The real
  patch record is applied to it through the real core (``PatchManager``, gate + drift checks +
  wrapt). The layer mirrors vLLM's FusedMoE: parameters as ``UnquantizedFusedMoEMethod.create_weights``
  makes them and the plain-weight branch of the FusedMoE ``weight_loader`` (``_load_w13``/``_load_w2``).
* Artifact tests (download, cached in $COMPAT_PATCHES_ARTIFACT_CACHE, default ~/.cache/compat_patches;
  skipped when offline): every vllm-ascend release is parsed with ``ast`` (never imported): target
  class/method/signature/assignment form per release, the reference statements equal the real ones,
  and the whole scenario is re-run with the REAL method source of each release; vLLM's real loader
  functions (from the vLLM sdists) are checked against the reference loader and used in a reload,
  also under the real method of the vllm-ascend release built against that vLLM (PAIRED_LOADER).
"""

import ast
import importlib
import os
import sys
import textwrap
import types

import pytest

torch = pytest.importorskip("torch")

from compat_patches.core import PatchManager  # noqa: E402

from ...artifacts import artifact_dir  # noqa: E402
from compat_patches.moe import ascend_layout  # noqa: E402
from compat_patches.patches.vllm_ascend import moe_layout as mod  # noqa: E402

NAME = "vllm-ascend-moe-layout"
COMMON = "vllm_ascend.ops.common_fused_moe"
FUSED = "vllm_ascend.ops.fused_moe.fused_moe"
ROUTED = "vllm_ascend.ops.fused_moe.routed_experts"

# --------------------------------------------------------------------------------------------------
# Reference of vLLM-Ascend's post-load step, statement for statement from the releases (the tail
# after these statements only casts to FRACTAL_NZ on an NPU, or takes the fused-MC2 branch).
# test_reference_statements_match_release checks these against every release's source.
# --------------------------------------------------------------------------------------------------

REFERENCE_METHODS = {
    "parameter": '''
    def process_weights_after_loading(self, layer):
        super(UnquantizedFusedMoEMethod, self).process_weights_after_loading(layer)

        w13_data = self._maybe_pad_weight(layer.w13_weight.data).transpose(1, 2).contiguous()
        layer.w13_weight = torch.nn.Parameter(w13_data, requires_grad=False)

        w2_data = self._maybe_pad_weight(layer.w2_weight.data).transpose(1, 2).contiguous()
        layer.w2_weight = torch.nn.Parameter(w2_data, requires_grad=False)

        layer.w13_weight.data = maybe_trans_nz(layer.w13_weight.data)
        layer.w2_weight.data = maybe_trans_nz(layer.w2_weight.data)
''',
    "data": '''
    def process_weights_after_loading(self, layer):
        super(UnquantizedFusedMoEMethod, self).process_weights_after_loading(layer)

        w13_data = self._maybe_pad_weight(layer.w13_weight.data).transpose(1, 2).contiguous()
        layer.w13_weight.data = w13_data

        w2_data = self._maybe_pad_weight(layer.w2_weight.data).transpose(1, 2).contiguous()
        layer.w2_weight.data = w2_data

        layer.w13_weight.data = maybe_trans_nz(layer.w13_weight.data)
        layer.w2_weight.data = maybe_trans_nz(layer.w2_weight.data)
''',
    "replace_parameter": '''
    def process_weights_after_loading(self, layer):
        super(UnquantizedFusedMoEMethod, self).process_weights_after_loading(layer)

        # Keep expert-aware loaders attached for later online weight updates.
        w13_data = self._maybe_pad_weight(layer.w13_weight.data).transpose(1, 2).contiguous()
        replace_parameter(layer, "w13_weight", w13_data)

        w2_data = self._maybe_pad_weight(layer.w2_weight.data).transpose(1, 2).contiguous()
        replace_parameter(layer, "w2_weight", w2_data)

        layer.w13_weight.data = maybe_trans_nz(layer.w13_weight.data)
        layer.w2_weight.data = maybe_trans_nz(layer.w2_weight.data)
''',
}

# vLLM 0.28.0 - 0.30.0 vllm/model_executor/utils.py replace_parameter, verbatim (0.23.0 - 0.27.1 differ
# only in not carrying new_tensor's attributes; both keep the old Parameter's weight_loader).
# test_reference_replace_parameter_matches_vllm checks it against the vLLM sdist.
REFERENCE_REPLACE_PARAMETER = '''
def replace_parameter(
    layer: torch.nn.Module,
    param_name: str,
    new_tensor: torch.Tensor | None,
    prefer_copy: bool = False,
):
    if new_tensor is None:
        setattr(layer, param_name, None)
        return

    old_param: torch.nn.Parameter | None = getattr(layer, param_name, None)

    new_tensor_attrs = dict(new_tensor.__dict__)

    new_tensor_attrs.pop("weight_loader", None)
    new_tensor_attrs.pop("_weight_loader", None)

    if isinstance(new_tensor, torch.nn.Parameter):
        new_tensor = new_tensor.data

    if (
        prefer_copy
        and old_param is not None
        and old_param.shape == new_tensor.shape
        and old_param.dtype == new_tensor.dtype
        and old_param.device == new_tensor.device
    ):
        old_param.copy_(new_tensor)
        for attr_name, attr in new_tensor_attrs.items():
            setattr(old_param, attr_name, attr)
        return

    new_param = torch.nn.Parameter(new_tensor, requires_grad=False)

    for attr_name, attr in new_tensor_attrs.items():
        setattr(new_param, attr_name, attr)

    if old_param is not None and hasattr(old_param, "weight_loader"):
        weight_loader = old_param.weight_loader
        set_weight_attrs(new_param, {"weight_loader": weight_loader})

    setattr(layer, param_name, new_param)
'''

# What the method needs on CPU, standing in for vLLM / vLLM-Ascend imports (NPU-only parts identity).
STUBS = '''
import torch
from types import SimpleNamespace

PROCESS_CALLS = []


class FusedMoEMethodBase:  # vLLM QuantizeMethodBase.process_weights_after_loading: a no-op
    def process_weights_after_loading(self, layer):
        PROCESS_CALLS.append(layer)  # counts runs of the real method (its first statement)


class UnquantizedFusedMoEMethod(FusedMoEMethodBase):
    def __init__(self, *args, **kwargs):
        self.dynamic_eplb = False
        self.transpose = True  # 0.11.x AscendUnquantizedFusedMoEMethod.__init__ (transpose once)

    def _maybe_pad_weight(self, weight):  # vLLM: pads only with VLLM_ROCM_MOE_PADDING on ROCm
        return weight


def set_weight_attrs(weight, weight_attrs):  # vllm/model_executor/utils.py
    if weight_attrs is None:
        return
    for key, value in weight_attrs.items():
        assert not hasattr(weight, key), f"Overwriting existing tensor attribute: {key}"
        setattr(weight, key, value)


def get_ascend_config():
    return SimpleNamespace(enable_fused_mc2=0)


envs_ascend = SimpleNamespace(VLLM_ASCEND_ENABLE_FUSED_MC2=False)
ACL_FORMAT_FRACTAL_NZ = 29
torch_npu = None


def maybe_trans_nz(weight, *args, **kwargs):  # FRACTAL_NZ cast: NPU only
    return weight


def get_ascend_device_type():
    return None


def is_310p():
    return False


def is_enable_nz(*args, **kwargs):
    return False


class AscendDeviceType:
    _310P = object()
'''


def fake_module_source(method_source, replace_parameter_source=REFERENCE_REPLACE_PARAMETER):
    body = textwrap.indent(textwrap.dedent(method_source).strip("\n"), "    ")
    return (STUBS + "\n\n" + textwrap.dedent(replace_parameter_source)
            + "\n\nclass AscendUnquantizedFusedMoEMethod(UnquantizedFusedMoEMethod):\n" + body + "\n")


VERSION_OF_FORM = {"parameter": "0.18.0", "data": "0.26.0rc1", "replace_parameter": "0.30.0rc2"}
MODULE_OF_FORM = {"parameter": FUSED, "data": FUSED, "replace_parameter": ROUTED}


@pytest.fixture
def fake_ascend(tmp_path, monkeypatch):
    """install(source, module) writes a fake vllm_ascend package and imports the module."""
    assert "vllm_ascend" not in sys.modules or getattr(sys.modules["vllm_ascend"], "FAKE", False)
    root = tmp_path / "fake_site"
    pkg = root / "vllm_ascend" / "ops" / "fused_moe"
    pkg.mkdir(parents=True)
    (root / "vllm_ascend" / "__init__.py").write_text("FAKE = True\n")
    (root / "vllm_ascend" / "ops" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))

    def install(source, module=FUSED, import_now=True):
        (root / (module.replace(".", "/") + ".py")).write_text(source)
        importlib.invalidate_caches()
        return importlib.import_module(module) if import_now else None

    yield install
    for name in [n for n in sys.modules if n == "vllm_ascend" or n.startswith("vllm_ascend.")]:
        del sys.modules[name]


def manager_for(version):
    return PatchManager([mod.PATCH], version_of=lambda dist: version if dist == "vllm-ascend" else None)


# --------------------------------------------------------------------------------------------------
# A layer that mirrors vLLM's FusedMoE for the unquantized path.
# --------------------------------------------------------------------------------------------------

class FakeFusedMoE(torch.nn.Module):
    """Parameters as vLLM's ``UnquantizedFusedMoEMethod.create_weights`` makes them (w13 [E, 2*I_tp, H],
    w2 [E, H, I_tp], ``set_weight_attrs(..., {"weight_loader": self.weight_loader})``) and the plain
    weight branch of ``FusedMoE.weight_loader`` (vllm/model_executor/layers/fused_moe/layer.py up to
    0.25, routed_experts.py ``RoutedExperts`` from 0.26): ``SHARD_ID_TO_SHARDED_DIM = {"w1": 0,
    "w2": 1, "w3": 0}``, ``expert_data = param.data[expert_id]``, ``_load_w13``: narrow the checkpoint
    tensor to ``[I/tp * rank, +I/tp)`` on the shard dim, gate into the first half of w13's shard dim,
    up into the second; ``_load_w2``: narrow the same way, copy into the expert.
    test_reference_loader_matches_vllm checks this against vLLM's own functions."""

    def __init__(self, E, H, I, tp_rank=0, tp_size=1, dtype=torch.float32):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank, tp_size
        i_tp = I // tp_size
        w13 = torch.nn.Parameter(torch.empty(E, 2 * i_tp, H, dtype=dtype), requires_grad=False)
        self.register_parameter("w13_weight", w13)
        w13.weight_loader = self.weight_loader
        w2 = torch.nn.Parameter(torch.empty(E, H, i_tp, dtype=dtype), requires_grad=False)
        self.register_parameter("w2_weight", w2)
        w2.weight_loader = self.weight_loader

    def weight_loader(self, param, loaded_weight, weight_name, shard_id, expert_id,
                      return_success=False):
        if shard_id not in ("w1", "w2", "w3"):
            raise ValueError(f"shard_id must be ['w1','w2','w3'] but got {shard_id}.")
        shard_dim = {"w1": 0, "w2": 1, "w3": 0}[shard_id]
        full_load = len(loaded_weight.shape) == 3
        if full_load:
            shard_dim += 1
        expert_data = param.data if full_load else param.data[expert_id]
        per_rank = loaded_weight.shape[shard_dim] // self.tp_size
        loaded_weight = loaded_weight.narrow(shard_dim, per_rank * self.tp_rank, per_rank)
        if shard_id == "w2":
            expert_data.copy_(loaded_weight)
        else:
            shard_size = expert_data.shape[shard_dim] // 2
            start = 0 if shard_id == "w1" else shard_size
            expert_data.narrow(shard_dim, start, shard_size).copy_(loaded_weight)
        return True if return_success else None

    def load_weights(self, weights):
        """Like a vLLM model's ``load_weights`` (e.g. qwen3_moe.py): look the Parameter up by name on
        every call and call ``param.weight_loader`` (AttributeError when the attribute is gone)."""
        params = dict(self.named_parameters())
        mapping = {"gate_proj": ("w13_weight", "w1"), "up_proj": ("w13_weight", "w3"),
                   "down_proj": ("w2_weight", "w2")}
        for name, tensor in weights:
            _, expert, proj, _ = name.split(".")
            param_name, shard_id = mapping[proj]
            param = params[param_name]
            param.weight_loader(param, tensor, f"experts.{param_name}", shard_id, int(expert),
                                return_success=True)


def checkpoint(E, H, I, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for e in range(E):
        for proj, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            out.append((f"experts.{e}.{proj}.weight", torch.randn(*shape, generator=g).to(dtype)))
    return out


# tp=1: E=4, H=8, I=4 -> I_tp=4 and tp=2: I=8 -> I_tp=4: H == 2*I_tp, so the unpatched reload does
# not even fail loudly: it silently writes the wrong elements.
SHAPES = {1: (4, 8, 4), 2: (4, 8, 8)}


def fresh_expected(module, layer_cls, tp_size, rank, weights):
    """A fresh load of `weights` followed by one (unpatched) post-load step."""
    E, H, I = SHAPES[tp_size]
    layer = layer_cls(E, H, I, rank, tp_size)
    layer.load_weights(weights)
    module.AscendUnquantizedFusedMoEMethod().process_weights_after_loading(layer)
    return layer.w13_weight.detach().clone(), layer.w2_weight.detach().clone()


def reload_scenario(module, layer_cls, tp_size, rank, mode, caller_processes, via, monkeypatch):
    """load(old) -> process -> reload(new) in `mode` [-> process, when the sync path does]."""
    E, H, I = SHAPES[tp_size]
    layer = layer_cls(E, H, I, rank, tp_size)
    method = module.AscendUnquantizedFusedMoEMethod()
    layer.load_weights(checkpoint(E, H, I, seed=1))
    method.process_weights_after_loading(layer)
    new = checkpoint(E, H, I, seed=2)
    if via == "context":
        with mod.layout_mode(mode):
            layer.load_weights(new)
            if caller_processes:
                method.process_weights_after_loading(layer)
    else:
        monkeypatch.setenv(mod.ENV_VAR, mode)
        layer.load_weights(new)
        if caller_processes:
            method.process_weights_after_loading(layer)
        elif mode == "preprocessed":
            assert mod.layer_layout(layer) == "preprocessed"
            assert mod.finalize_pending() == 1
        monkeypatch.delenv(mod.ENV_VAR)
    return layer, new


# --------------------------------------------------------------------------------------------------
# Quick tests
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("via", ["context", "env"])
@pytest.mark.parametrize("caller_processes", [False, True], ids=["load-only", "load+process"])
@pytest.mark.parametrize("mode", ["processed", "preprocessed"])
@pytest.mark.parametrize("tp_size", [1, 2])
@pytest.mark.parametrize("form", ["parameter", "data", "replace_parameter"])
def test_reload_equals_fresh_load_plus_one_process(fake_ascend, monkeypatch, form, tp_size, mode,
                                                   caller_processes, via):
    module = fake_ascend(fake_module_source(REFERENCE_METHODS[form]), MODULE_OF_FORM[form])
    E, H, I = SHAPES[tp_size]
    for rank in range(tp_size):
        expected = fresh_expected(module, FakeFusedMoE, tp_size, rank, checkpoint(E, H, I, seed=2))
        manager = manager_for(VERSION_OF_FORM[form])
        with manager.patched(NAME) as report:
            assert report[NAME].status == "applied", report[NAME].reason
            module.PROCESS_CALLS.clear()
            layer, _ = reload_scenario(module, FakeFusedMoE, tp_size, rank, mode, caller_processes,
                                       via, monkeypatch)
            # the real post-load step ran once for the load, and once more only in preprocessed mode
            assert len(module.PROCESS_CALLS) == (2 if mode == "preprocessed" else 1)
        assert torch.equal(layer.w13_weight, expected[0])
        assert torch.equal(layer.w2_weight, expected[1])
        for name in mod.PARAM_NAMES:
            param = getattr(layer, name)
            assert callable(getattr(param, "weight_loader", None)), f"{name} lost its weight_loader"
            assert getattr(param, mod.LAYOUT_ATTR) == "processed"


@pytest.mark.parametrize("tp_size", [1, 2])
@pytest.mark.parametrize("form", ["parameter", "data", "replace_parameter"])
def test_without_the_patch_the_reload_is_wrong(fake_ascend, form, tp_size):
    module = fake_ascend(fake_module_source(REFERENCE_METHODS[form]), MODULE_OF_FORM[form])
    E, H, I = SHAPES[tp_size]
    for rank in range(tp_size):
        expected = fresh_expected(module, FakeFusedMoE, tp_size, rank, checkpoint(E, H, I, seed=2))
        layer = FakeFusedMoE(E, H, I, rank, tp_size)
        layer.load_weights(checkpoint(E, H, I, seed=1))
        module.AscendUnquantizedFusedMoEMethod().process_weights_after_loading(layer)
        if form == "parameter":  # 0.13.0 - 0.25.1rc1: the Parameter was replaced, loader gone
            assert not hasattr(layer.w13_weight, "weight_loader")
            with pytest.raises(AttributeError, match="weight_loader"):
                layer.load_weights(checkpoint(E, H, I, seed=2))
            continue
        assert hasattr(layer.w13_weight, "weight_loader")   # 0.26+: the loader survives ...
        before = layer.w13_weight.detach().clone()
        # ... gate/up shards (H == 2*I_tp here) are written silently into the wrong elements, then
        # the first down_proj shard ([H, I_tp] into [I_tp, H]) fails
        with pytest.raises(RuntimeError, match="size of tensor"):
            layer.load_weights(checkpoint(E, H, I, seed=2))
        assert not torch.equal(layer.w13_weight, before)       # it did write ...
        assert not torch.equal(layer.w13_weight, expected[0])  # ... but not the new weights
        # split per shard: the gate/up reload alone finishes without error and is still wrong
        layer.load_weights([w for w in checkpoint(E, H, I, seed=2) if "down_proj" not in w[0]])
        assert not torch.equal(layer.w13_weight, expected[0])


def test_non_square_shapes_fail_loudly_without_the_patch(fake_ascend):
    module = fake_ascend(fake_module_source(REFERENCE_METHODS["data"]), FUSED)
    layer = FakeFusedMoE(2, 12, 4)
    layer.load_weights(checkpoint(2, 12, 4, seed=1))
    module.AscendUnquantizedFusedMoEMethod().process_weights_after_loading(layer)
    with pytest.raises(RuntimeError):
        layer.load_weights(checkpoint(2, 12, 4, seed=2))
    with manager_for("0.26.0rc1").patched(NAME):
        layer = FakeFusedMoE(2, 12, 4)
        layer.load_weights(checkpoint(2, 12, 4, seed=1))
        module.AscendUnquantizedFusedMoEMethod().process_weights_after_loading(layer)
        layer.load_weights(checkpoint(2, 12, 4, seed=2))
    expected = FakeFusedMoE(2, 12, 4)
    expected.load_weights(checkpoint(2, 12, 4, seed=2))
    module.AscendUnquantizedFusedMoEMethod().process_weights_after_loading(expected)
    assert torch.equal(layer.w13_weight, expected.w13_weight)
    assert torch.equal(layer.w2_weight, expected.w2_weight)


@pytest.mark.parametrize("form", ["parameter", "data", "replace_parameter"])
def test_processed_mode_writes_in_place_and_agrees_with_the_helper(fake_ascend, form):
    module = fake_ascend(fake_module_source(REFERENCE_METHODS[form]), MODULE_OF_FORM[form])
    E, H, I = 3, 10, 8
    tp = 2
    with manager_for(VERSION_OF_FORM[form]).patched(NAME):
        for rank in range(tp):
            layer = FakeFusedMoE(E, H, I, rank, tp)
            layer.load_weights(checkpoint(E, H, I, seed=1))
            module.AscendUnquantizedFusedMoEMethod().process_weights_after_loading(layer)
            params = (layer.w13_weight, layer.w2_weight)
            pointers = [p.data_ptr() for p in params]
            new = checkpoint(E, H, I, seed=3)
            with mod.layout_mode("processed"):
                layer.load_weights(new)
            assert (layer.w13_weight, layer.w2_weight) == params  # same Parameter objects (is)
            assert all(a is b for a, b in zip((layer.w13_weight, layer.w2_weight), params))
            assert [p.data_ptr() for p in params] == pointers     # written in place
            p13 = torch.zeros(E, H, 2 * (I // tp))
            p2 = torch.zeros(E, I // tp, H)
            for name, tensor in new:
                _, e, proj, _ = name.split(".")
                target = p2 if proj == "down_proj" else p13
                ascend_layout.write_expert_shard(target, tensor, proj, int(e), tp_rank=rank,
                                                 tp_size=tp)
            assert torch.equal(layer.w13_weight, p13) and torch.equal(layer.w2_weight, p2)


def test_processing_twice_is_guarded(fake_ascend):
    module = fake_ascend(fake_module_source(REFERENCE_METHODS["data"]), FUSED)
    with manager_for("0.26.0rc1").patched(NAME):
        layer = FakeFusedMoE(2, 6, 4)
        layer.load_weights(checkpoint(2, 6, 4, seed=1))
        method = module.AscendUnquantizedFusedMoEMethod()
        method.process_weights_after_loading(layer)
        snapshot = layer.w13_weight.detach().clone()
        module.PROCESS_CALLS.clear()
        method.process_weights_after_loading(layer)          # e.g. vLLM's process step after a sync
        assert module.PROCESS_CALLS == [] and torch.equal(layer.w13_weight, snapshot)
        assert layer.w13_weight.shape == (2, 6, 8)


def test_preprocessed_context_exit_processes_exactly_once(fake_ascend):
    module = fake_ascend(fake_module_source(REFERENCE_METHODS["parameter"]), FUSED)
    with manager_for("0.23.0").patched(NAME):
        layer = FakeFusedMoE(2, 6, 4)
        layer.load_weights(checkpoint(2, 6, 4, seed=1))
        method = module.AscendUnquantizedFusedMoEMethod()
        method.process_weights_after_loading(layer)
        module.PROCESS_CALLS.clear()
        with mod.layout_mode("preprocessed"):
            layer.load_weights(checkpoint(2, 6, 4, seed=2))
            assert mod.layer_layout(layer) == "preprocessed"
            assert layer.w13_weight.shape == (2, 8, 6)          # original layout while loading
            with mod.layout_mode("processed"):                # nested: inner mode wins, no finalize
                assert mod.current_mode() == "processed"
            assert module.PROCESS_CALLS == []
        assert len(module.PROCESS_CALLS) == 1 and mod.layer_layout(layer) == "processed"
        assert mod.finalize_pending() == 0


@pytest.mark.parametrize("form", ["parameter", "data", "replace_parameter"])
def test_vllm_layerwise_reload_path_still_works(fake_ascend, form):
    """vLLM's own reload_weights (model_loader/reload/layerwise.py, vLLM 0.2x+) recreates the layer's
    Parameters in the original layout from metadata captured before processing, loads them with the
    original loaders, runs process_weights_after_loading and copies into the kernel tensors. The
    patch must not get in its way (fresh Parameters carry no layout mark -> processed once)."""
    module = fake_ascend(fake_module_source(REFERENCE_METHODS[form]), MODULE_OF_FORM[form])
    E, H, I = SHAPES[1]
    expected = fresh_expected(module, FakeFusedMoE, 1, 0, checkpoint(E, H, I, seed=2))
    with manager_for(VERSION_OF_FORM[form]).patched(NAME):
        layer = FakeFusedMoE(E, H, I)
        captured = {n: (tuple(p.shape), dict(vars(p))) for n, p in layer.named_parameters()}
        layer.load_weights(checkpoint(E, H, I, seed=1))
        method = module.AscendUnquantizedFusedMoEMethod()
        method.process_weights_after_loading(layer)
        kernel = dict(layer.named_parameters())
        for name, (shape, attrs) in captured.items():          # restore_layer_on_meta + materialize
            fresh = torch.nn.Parameter(torch.empty(shape), requires_grad=False)
            fresh.__dict__.update(attrs)
            setattr(layer, name, fresh)
        layer.load_weights(checkpoint(E, H, I, seed=2))
        module.PROCESS_CALLS.clear()
        method.process_weights_after_loading(layer)              # _layerwise_process
        assert len(module.PROCESS_CALLS) == 1
        for name, param in kernel.items():                       # _copy_and_restore_kernel_tensors
            param.data.copy_(getattr(layer, name))
            setattr(layer, name, param)
        assert torch.equal(layer.w13_weight, expected[0]) and torch.equal(layer.w2_weight, expected[1])
        with mod.layout_mode("processed"):                       # and a direct sync still works after
            layer.load_weights(checkpoint(E, H, I, seed=2))
        assert torch.equal(layer.w13_weight, expected[0]) and torch.equal(layer.w2_weight, expected[1])


def test_mode_selection_env_and_context(monkeypatch):
    monkeypatch.delenv(mod.ENV_VAR, raising=False)
    assert mod.current_mode() == "processed"
    monkeypatch.setenv(mod.ENV_VAR, "PREPROCESSED")
    assert mod.current_mode() == "preprocessed"
    with mod.layout_mode("processed"):
        assert mod.current_mode() == "processed"             # the context manager wins
    monkeypatch.setenv(mod.ENV_VAR, "transposed")
    with pytest.raises(ValueError, match=mod.ENV_VAR):
        mod.current_mode()
    with pytest.raises(ValueError, match="layout mode must be one of"):
        with mod.layout_mode("both"):
            pass


def test_target_applies_deferred_then_on_import_and_reverts_exactly(fake_ascend):
    fake_ascend(fake_module_source(REFERENCE_METHODS["data"]), FUSED, import_now=False)
    manager = manager_for("0.26.0rc1")
    with manager.patched(NAME) as report:
        assert report[NAME].status == "deferred", report[NAME].reason
        module = importlib.import_module(FUSED)
        assert manager.report()[NAME].status == "applied"
        original = module.AscendUnquantizedFusedMoEMethod.__dict__["process_weights_after_loading"]
        assert getattr(original, "__wrapped__", None) is not None
    restored = module.AscendUnquantizedFusedMoEMethod.__dict__["process_weights_after_loading"]
    assert restored is original.__wrapped__


@pytest.mark.parametrize("version, form, expected_target", [
    ("0.11.0rc1", "parameter", COMMON), ("0.11.0", "parameter", COMMON),
    ("0.12.0rc1", "parameter", FUSED), ("0.25.1rc1", "parameter", FUSED),
    ("0.26.0rc1", "data", FUSED), ("0.27.1rc1", "replace_parameter", ROUTED),
    ("0.30.0rc2", "replace_parameter", ROUTED), ("0.31.0.dev0", "replace_parameter", ROUTED),
])
def test_version_selects_target_shape(fake_ascend, version, form, expected_target):
    fake_ascend(fake_module_source(REFERENCE_METHODS[form]), expected_target)
    with manager_for(version).patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME].reason
        assert [t.split(":")[0] for t in report[NAME].targets] == [expected_target]


@pytest.mark.parametrize("version, wrong_form", [
    ("0.26.0rc1", "parameter"), ("0.23.0", "data"), ("0.28.0rc1", "data"),
])
def test_changed_assignment_form_is_reported_as_drift_by_name(fake_ascend, version, wrong_form):
    module_name = FUSED if version < "0.27" else ROUTED
    fake_ascend(fake_module_source(REFERENCE_METHODS[wrong_form]), module_name)
    with manager_for(version).patched(NAME) as report:
        entry = report[NAME]
        assert entry.status == "drifted"
        assert "process_weights_after_loading" in entry.reason or "form" in entry.reason


def test_changed_signature_is_reported_as_drift(fake_ascend):
    source = REFERENCE_METHODS["data"].replace("(self, layer)", "(self, layer, extra=None)")
    fake_ascend(fake_module_source(source), FUSED)
    with manager_for("0.26.0rc1").patched(NAME) as report:
        assert report[NAME].status == "drifted"


def test_outside_the_range_nothing_is_touched(fake_ascend):
    module = fake_ascend(fake_module_source(REFERENCE_METHODS["parameter"]), FUSED)
    before = module.AscendUnquantizedFusedMoEMethod.__dict__["process_weights_after_loading"]
    with manager_for("0.11.0rc0").patched(NAME) as report:
        assert report[NAME].status == "not-needed"
        assert module.AscendUnquantizedFusedMoEMethod.__dict__["process_weights_after_loading"] is before


def test_classify_process_source_forms():
    for form, source in REFERENCE_METHODS.items():
        assert mod.classify_process_source(source) == {"w13_weight": form, "w2_weight": form}
    no_transpose = REFERENCE_METHODS["data"].replace(".transpose(1, 2)", "")
    assert mod.classify_process_source(no_transpose) == {"w13_weight": None, "w2_weight": None}


# --------------------------------------------------------------------------------------------------
# Artifacts: every vllm-ascend release (and the vLLM sources the releases pair with), read, not run.
# --------------------------------------------------------------------------------------------------


# version: (artifact, module that defines the class, assignment form) -- measured from each archive.
RELEASES = {
    "0.11.0rc1": ("sdist", COMMON, "parameter"),
    "0.11.0rc2": ("sdist", COMMON, "parameter"),
    "0.11.0rc3": ("sdist", COMMON, "parameter"),
    "0.11.0": ("sdist", COMMON, "parameter"),
    "0.12.0rc1": ("sdist", FUSED, "parameter"),
    "0.13.0rc1": ("sdist", FUSED, "parameter"),
    "0.13.0rc2": ("sdist", FUSED, "parameter"),
    "0.13.0rc3": ("sdist", FUSED, "parameter"),
    "0.13.0": ("sdist", FUSED, "parameter"),
    "0.14.0rc1": ("sdist", FUSED, "parameter"),
    "0.15.0rc1": ("sdist", FUSED, "parameter"),
    "0.16.0rc1": ("sdist", FUSED, "parameter"),
    "0.17.0rc1": ("sdist", FUSED, "parameter"),
    "0.18.0rc1": ("sdist", FUSED, "parameter"),
    "0.18.0": ("wheel", FUSED, "parameter"),
    "0.19.1rc1": ("sdist", FUSED, "parameter"),
    "0.20.2rc1": ("sdist", FUSED, "parameter"),
    "0.21.0rc1": ("sdist", FUSED, "parameter"),
    "0.22.1rc1": ("sdist", FUSED, "parameter"),
    "0.23.0rc1": ("sdist", FUSED, "parameter"),
    "0.23.0": ("wheel", FUSED, "parameter"),
    "0.23.0.post1": ("sdist", FUSED, "parameter"),
    "0.24.0rc1": ("wheel", FUSED, "parameter"),
    "0.25.1rc1": ("wheel", FUSED, "parameter"),
    "0.26.0rc1": ("wheel", FUSED, "data"),
    "0.27.1rc1": ("sdist", ROUTED, "replace_parameter"),
    "0.28.0rc1": ("sdist", ROUTED, "replace_parameter"),
    "0.29.0rc1": ("sdist", ROUTED, "replace_parameter"),
    "0.30.0rc1": ("sdist", ROUTED, "replace_parameter"),
    "0.30.0rc2": ("sdist", ROUTED, "replace_parameter"),
}
_selected = os.environ.get("COMPAT_PATCHES_ASCEND_RELEASES", "all")
SELECTED = list(RELEASES) if _selected == "all" else [v for v in _selected.split(",") if v]

# vLLM release whose replace_parameter a vllm-ascend release calls (Dockerfile VLLM_TAG). vLLM 0.28.0,
# 0.29.0 and 0.30.0 have the identical function (read), so 0.30.0 stands for 0.28.0rc1 - 0.30.0rc2.
PAIRED_VLLM = {"0.27.1rc1": "0.27.1", "0.28.0rc1": "0.30.0", "0.29.0rc1": "0.30.0",
               "0.30.0rc1": "0.30.0", "0.30.0rc2": "0.30.0"}

ASCEND_MEMBERS = ("vllm_ascend/ops/common_fused_moe.py", "vllm_ascend/ops/fused_moe.py",
                  "vllm_ascend/ops/fused_moe/fused_moe.py", "vllm_ascend/ops/fused_moe/routed_experts.py")
VLLM_MEMBERS = ("vllm/model_executor/utils.py", "vllm/model_executor/layers/fused_moe/layer.py",
                "vllm/model_executor/layers/fused_moe/routed_experts.py")
def ascend_source(version):
    kind = RELEASES[version][0]
    return artifact_dir("vllm-ascend", version, kind, ASCEND_MEMBERS)


def find_class_method(path, class_name, method_name):
    if not path.exists():
        return None, None
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method_name:
                    return source, item
    return source, None


def real_method(version):
    _, module, _ = RELEASES[version]
    root = ascend_source(version)
    path = root / (module.replace(".", "/") + ".py")
    source, node = find_class_method(path, "AscendUnquantizedFusedMoEMethod",
                                     "process_weights_after_loading")
    return path, source, node


@pytest.mark.parametrize("version", SELECTED)
def test_contract_target_per_release(version):
    """Class, method, signature and assignment form as the record expects, per release (ast only)."""
    _, module, form = RELEASES[version]
    path, source, node = real_method(version)
    where = f"vllm-ascend {version}: {module}:AscendUnquantizedFusedMoEMethod.process_weights_after_loading"
    assert node is not None, f"{where} not found (target moved or renamed)"
    args = node.args
    assert [a.arg for a in args.args] == ["self", "layer"] and not args.vararg and not args.kwarg \
        and not args.kwonlyargs and not args.defaults, f"{where}: signature changed: {ast.dump(args)}"
    found = mod.classify_process_source(ast.get_source_segment(source, node))
    assert found == {"w13_weight": form, "w2_weight": form}, f"{where}: assignment form {found}"
    # the record selects exactly this target and form for this version
    from packaging.specifiers import SpecifierSet
    chosen = [(path_, form_) for spec, path_, form_ in mod.TARGET_SHAPES
              if SpecifierSet(spec).contains(version, prereleases=True)]
    assert chosen == [(f"{module}:AscendUnquantizedFusedMoEMethod.process_weights_after_loading", form)]
    assert SpecifierSet(mod.PATCH.affected["vllm-ascend"]).contains(version, prereleases=True)
    # and the class is defined nowhere else among the candidate modules (no second copy to wrap)
    for other in (COMMON, "vllm_ascend.ops.fused_moe", FUSED, ROUTED):
        if other != module:
            _, twin = find_class_method(ascend_source(version) / (other.replace(".", "/") + ".py"),
                                        "AscendUnquantizedFusedMoEMethod", "process_weights_after_loading")
            assert twin is None, f"vllm-ascend {version}: a second definition in {other}"


def _transposing_statements(function_node):
    """The super() call and the w13/w2 transposition + assignment statements, dumped. 0.11.x nests
    the transposition in ``if self.transpose:`` (transpose once per method instance): that body."""
    out = []
    body = list(function_node.body)
    for i, stmt in enumerate(body):
        if isinstance(stmt, ast.If) and ast.unparse(stmt.test) == "self.transpose":
            body[i:i + 1] = [s for s in stmt.body if "self.transpose" not in ast.unparse(s)]
            break
    for stmt in body:
        text = ast.unparse(stmt)
        if "super(" in text or "transpose(1, 2)" in text or "replace_parameter(" in text or (
                isinstance(stmt, ast.Assign) and "torch.nn.Parameter(" in text) or (
                isinstance(stmt, ast.Assign) and text.endswith(("= w13_data", "= w2_data"))):
            out.append(ast.dump(stmt))
    return out


@pytest.mark.parametrize("version", SELECTED)
def test_reference_statements_match_release(version):
    """The reference used by the quick tests is the release's code, statement for statement."""
    _, _, form = RELEASES[version]
    _, _, node = real_method(version)
    reference = ast.parse(textwrap.dedent(REFERENCE_METHODS[form])).body[0]
    assert _transposing_statements(node) == _transposing_statements(reference), version
    assert len(_transposing_statements(node)) == 5


def vllm_source(version):
    return artifact_dir("vllm", version, "sdist", VLLM_MEMBERS)


def _function_source(path, name, class_name=None):
    source = path.read_text()
    tree = ast.parse(source)
    scope = tree.body
    if class_name:
        scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name).body
    found = [n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name]
    return found[-1] if found else None


@pytest.mark.parametrize("version", SELECTED)
def test_real_release_source_reload(version, fake_ascend, monkeypatch):
    """The whole scenario with the release's REAL process_weights_after_loading (NPU tail stubbed)."""
    _, module, form = RELEASES[version]
    _, source, node = real_method(version)
    replace_src = REFERENCE_REPLACE_PARAMETER
    if version in PAIRED_VLLM:
        fn = _function_source(vllm_source(PAIRED_VLLM[version]) / "vllm/model_executor/utils.py",
                              "replace_parameter")
        replace_src = ast.unparse(fn)
    method_src = ast.get_source_segment(source, node, padded=True)
    fake = fake_ascend(fake_module_source(method_src, replace_src), module)
    for tp_size in (1, 2):
        E, H, I = SHAPES[tp_size]
        for rank in range(tp_size):
            expected = fresh_expected(fake, FakeFusedMoE, tp_size, rank, checkpoint(E, H, I, seed=2))
            for mode, caller_processes in (("processed", False), ("processed", True),
                                           ("preprocessed", False), ("preprocessed", True)):
                with manager_for(version).patched(NAME) as report:
                    assert report[NAME].status == "applied", f"{version}: {report[NAME].reason}"
                    layer, _ = reload_scenario(fake, FakeFusedMoE, tp_size, rank, mode,
                                               caller_processes, "context", monkeypatch)
                assert torch.equal(layer.w13_weight, expected[0]), (version, mode, tp_size, rank)
                assert torch.equal(layer.w2_weight, expected[1]), (version, mode, tp_size, rank)
                assert callable(getattr(layer.w13_weight, "weight_loader", None))
                assert callable(getattr(layer.w2_weight, "weight_loader", None))


def test_reference_replace_parameter_matches_vllm():
    real = _function_source(vllm_source("0.30.0") / "vllm/model_executor/utils.py", "replace_parameter")
    body = [s for s in real.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]  # docstring
    reference = ast.parse(REFERENCE_REPLACE_PARAMETER).body[0]
    assert [ast.dump(s) for s in body] == [ast.dump(s) for s in reference.body]
    assert [a.arg for a in real.args.args] == [a.arg for a in reference.args.args]


# vLLM's own FusedMoE loader functions, compiled from the sdist source onto a stand-in layer.
_LOADER_FUNCTIONS = ("weight_loader", "_load_w13", "_load_w2", "_load_model_weight_or_group_weight_scale",
                     "_map_global_expert_id_to_local_expert_id", "_narrow_expert_data_for_padding",
                     "_get_hidden_dim")
VLLM_LOADERS = {"0.18.0": ("vllm/model_executor/layers/fused_moe/layer.py", "FusedMoE"),
                "0.23.0": ("vllm/model_executor/layers/fused_moe/layer.py", "FusedMoE"),
                "0.30.0": ("vllm/model_executor/layers/fused_moe/routed_experts.py", "RoutedExperts")}


def _compile_methods(path, class_name, names, label):
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    namespace = {"torch": torch, "logger": types.SimpleNamespace(debug=lambda *a, **k: None),
                 "UninitializedParameter": torch.nn.UninitializedParameter,
                 "FusedMoeWeightScaleSupported": None}
    methods = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            for arg in node.args.args + node.args.kwonlyargs:
                arg.annotation = None
            node.returns = None
            static = any(getattr(d, "id", None) == "staticmethod" for d in node.decorator_list)
            node.decorator_list = []
            code = ast.Module(body=[node], type_ignores=[])
            exec(compile(ast.fix_missing_locations(code), f"<{label}>", "exec"), namespace)
            fn = namespace[node.name]
            methods[node.name] = staticmethod(fn) if static else fn
    return methods


def real_loader_layer_class(vllm_version, overrides=None):
    """A FakeFusedMoE whose loader is vLLM's own (compiled from the sdist); `overrides` =
    (path, class name, method names) compiles methods of a vllm-ascend layer class on top."""
    relpath, class_name = VLLM_LOADERS[vllm_version]
    methods = _compile_methods(vllm_source(vllm_version) / relpath, class_name, _LOADER_FUNCTIONS,
                               f"vllm {vllm_version} {relpath}")
    assert {"weight_loader", "_load_w13", "_load_w2"} <= set(methods), sorted(methods)
    if overrides:
        path, override_class, names = overrides
        extra = _compile_methods(path, override_class, names, str(path))
        assert set(extra) == set(names), sorted(extra)
        methods.update(extra)

    class UnquantizedFusedMoEMethod:  # only its class name is read
        pass

    def __init__(self, E, H, I, tp_rank=0, tp_size=1, dtype=torch.float32):
        FakeFusedMoE.__init__(self, E, H, I, tp_rank, tp_size, dtype)
        self.quant_config = None
        self.quant_method = UnquantizedFusedMoEMethod()
        self._expert_map = None
        self.expert_map_manager = types.SimpleNamespace(map_global_to_local=lambda e: e)
        self._loaded_expert_biases = set()
        self.moe_config = types.SimpleNamespace(
            is_act_and_mul=True, tp_rank=tp_rank, tp_size=tp_size,
            moe_parallel_config=types.SimpleNamespace(tp_size=tp_size))

    if "_get_hidden_dim" not in methods:
        methods["_get_hidden_dim"] = staticmethod(lambda shard_dim, ndim: 1 - shard_dim)
    return type(f"Real{class_name}_{vllm_version}", (FakeFusedMoE,), {**methods, "__init__": __init__})


@pytest.mark.parametrize("vllm_version", list(VLLM_LOADERS))
def test_reference_loader_matches_vllm(vllm_version):
    RealLayer = real_loader_layer_class(vllm_version)
    for tp_size in (1, 2):
        E, H, I = SHAPES[tp_size]
        for rank in range(tp_size):
            weights = checkpoint(E, H, I, seed=5)
            real, ref = RealLayer(E, H, I, rank, tp_size), FakeFusedMoE(E, H, I, rank, tp_size)
            real.w13_weight.data.fill_(float("nan"))
            real.w2_weight.data.fill_(float("nan"))
            real.load_weights(weights)
            ref.load_weights(weights)
            assert torch.equal(real.w13_weight, ref.w13_weight), (vllm_version, tp_size, rank)
            assert torch.equal(real.w2_weight, ref.w2_weight), (vllm_version, tp_size, rank)


@pytest.mark.parametrize("vllm_version, form", [("0.18.0", "parameter"), ("0.23.0", "parameter"),
                                                 ("0.30.0", "replace_parameter")])
def test_reload_with_vllms_real_loader(vllm_version, form, fake_ascend, monkeypatch):
    """processed mode runs vLLM's own loader on a transposed view: check it with the real one."""
    RealLayer = real_loader_layer_class(vllm_version)
    module = fake_ascend(fake_module_source(REFERENCE_METHODS[form]), MODULE_OF_FORM[form])
    for tp_size in (1, 2):
        E, H, I = SHAPES[tp_size]
        for rank in range(tp_size):
            expected = fresh_expected(module, RealLayer, tp_size, rank, checkpoint(E, H, I, seed=2))
            for mode in ("processed", "preprocessed"):
                with manager_for(VERSION_OF_FORM[form]).patched(NAME):
                    layer, _ = reload_scenario(module, RealLayer, tp_size, rank, mode, False,
                                               "context", monkeypatch)
                assert torch.equal(layer.w13_weight, expected[0]), (vllm_version, mode, tp_size)
                assert torch.equal(layer.w2_weight, expected[1]), (vllm_version, mode, tp_size)


# vllm-ascend release -> the vLLM release it is built against (its versioning_policy.md /
# Dockerfile VLLM_TAG) whose FusedMoE / RoutedExperts loader it runs unchanged (no override in its
# ops/fused_moe: read). 0.23.0.post1 changes nothing under ops/fused_moe against 0.23.0 (read).
PAIRED_LOADER = {"0.18.0": "0.18.0", "0.23.0.post1": "0.23.0", "0.30.0rc2": "0.30.0"}


@pytest.mark.parametrize("version", [v for v in PAIRED_LOADER if v in SELECTED])
def test_release_source_with_its_vllms_real_loader(version, fake_ascend, monkeypatch):
    """Both halves real: the release's own process_weights_after_loading (NPU tail stubbed) and
    the weight loader of the vLLM release it pairs with, compiled from that vLLM's sdist."""
    _, module, form = RELEASES[version]
    _, source, node = real_method(version)
    replace_src = REFERENCE_REPLACE_PARAMETER
    if version in PAIRED_VLLM:
        replace_src = ast.unparse(_function_source(
            vllm_source(PAIRED_VLLM[version]) / "vllm/model_executor/utils.py", "replace_parameter"))
    fake = fake_ascend(fake_module_source(ast.get_source_segment(source, node, padded=True),
                                          replace_src), module)
    RealLayer = real_loader_layer_class(PAIRED_LOADER[version])
    for tp_size in (1, 2):
        E, H, I = SHAPES[tp_size]
        for rank in range(tp_size):
            expected = fresh_expected(fake, RealLayer, tp_size, rank, checkpoint(E, H, I, seed=2))
            # unpatched: the loader is gone (Parameter replaced) or writes the wrong elements
            layer = RealLayer(E, H, I, rank, tp_size)
            layer.load_weights(checkpoint(E, H, I, seed=1))
            fake.AscendUnquantizedFusedMoEMethod().process_weights_after_loading(layer)
            try:
                layer.load_weights(checkpoint(E, H, I, seed=2))
                right = (torch.equal(layer.w13_weight, expected[0])
                         and torch.equal(layer.w2_weight, expected[1]))
            except (AttributeError, RuntimeError):
                right = False
            assert not right, (version, tp_size, rank)
            for mode, caller_processes in (("processed", False), ("processed", True),
                                           ("preprocessed", False), ("preprocessed", True)):
                with manager_for(version).patched(NAME) as report:
                    assert report[NAME].status == "applied", f"{version}: {report[NAME].reason}"
                    layer, _ = reload_scenario(fake, RealLayer, tp_size, rank, mode,
                                               caller_processes, "context", monkeypatch)
                assert torch.equal(layer.w13_weight, expected[0]), (version, mode, tp_size, rank)
                assert torch.equal(layer.w2_weight, expected[1]), (version, mode, tp_size, rank)


def test_reload_with_the_0_11_ascend_loader_override(fake_ascend, monkeypatch):
    """vllm-ascend 0.11.x overrides AscendFusedMoE._load_w13/_load_w2 with a shape heuristic
    (transpose_weight: flip when neither dim matches) and transposes once per method instance
    (self.transpose). Real 0.11.0 code for both, on vLLM 0.18's weight_loader (the closest vLLM
    source fetched here; 0.11.0 pairs with vLLM 0.11)."""
    root = ascend_source("0.11.0")
    path = root / "vllm_ascend/ops/common_fused_moe.py"
    RealLayer = real_loader_layer_class(
        "0.18.0", (path, "AscendFusedMoE", ("_load_w13", "_load_w2", "transpose_weight")))
    _, source, node = real_method("0.11.0")
    fake = fake_ascend(fake_module_source(ast.get_source_segment(source, node, padded=True)), COMMON)
    for tp_size in (1, 2):
        E, H, I = SHAPES[tp_size]
        for rank in range(tp_size):
            expected = fresh_expected(fake, RealLayer, tp_size, rank, checkpoint(E, H, I, seed=2))
            # unpatched: the replaced Parameter has no weight_loader
            layer = RealLayer(E, H, I, rank, tp_size)
            layer.load_weights(checkpoint(E, H, I, seed=1))
            fake.AscendUnquantizedFusedMoEMethod().process_weights_after_loading(layer)
            with pytest.raises(AttributeError, match="weight_loader"):
                layer.load_weights(checkpoint(E, H, I, seed=2))
            for mode, caller_processes in (("processed", False), ("preprocessed", True),
                                           ("preprocessed", False)):
                with manager_for("0.11.0").patched(NAME) as report:
                    assert report[NAME].status == "applied", report[NAME].reason
                    layer, _ = reload_scenario(fake, RealLayer, tp_size, rank, mode,
                                               caller_processes, "context", monkeypatch)
                assert torch.equal(layer.w13_weight, expected[0]), (mode, tp_size, rank)
                assert torch.equal(layer.w2_weight, expected[1]), (mode, tp_size, rank)
