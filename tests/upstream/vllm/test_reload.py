# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project

# ---------------------------------------------------------------------------------------------------
# Copied for compat_patches (record "vllm-layerwise-reload-numel") from
#   repository: https://github.com/vllm-project/vllm
#   file:       tests/model_executor/model_loader/test_reload.py
#   commit:     026bb17cfcc372d2123e192304cbf427ea7d0ee2 (the stored snapshot of main read here; the
#               vLLM wheels ship no tests). PR 44814 (https://github.com/vllm-project/vllm/pull/44814,
#               released in 0.24.0) added `test_get_numel_loaded_caps_at_param_size`, the
#               `_ComposedLoaderLayer` module and `test_layerwise_reload_composed_loader_does_not_drop_params`
#               (the regression tests, marked `upstream_regression` below). The case around them is
#               their neighbour `test_get_numel_loaded` (the uncapped count of a loader copying
#               slices). Test bodies are verbatim; only what they use is imported.
# Adapted, and why:
#   * `pytest.importorskip("vllm")`: the file runs in every test set, most without vLLM.
#   * mark only, on `test_get_numel_loaded_caps_at_param_size`: it loads into a CPU (not meta)
#     parameter, which vLLM 0.16.0 - 0.18.1 refuse with or without the fix (`get_numel_loaded`
#     asserts the parameter is on the meta device and counts only copies into meta tensors; 0.19.0
#     replaced MetaCopyCounter with CopyCounter). It runs from 0.19.0 on.
#   * `get_numel_loaded(...)` -> `reload_meta.get_numel_loaded(...)` (upstream imports the function
#     by name at module level, `from ...reload.meta import get_numel_loaded`): a name bound before
#     the patch is applied keeps the unpatched function, so the call goes through the module
#     attribute, which is what the patch wraps (as it wraps the name reload/layerwise.py binds).
#   * `PATCH` names the record whose fix this file checks (read by tests/upstream/conftest.py).
# ---------------------------------------------------------------------------------------------------
import inspect

import pytest

pytest.importorskip("torch")
pytest.importorskip("vllm")

import torch  # noqa: E402

import vllm.model_executor.model_loader.reload.meta as reload_meta  # noqa: E402
from vllm.model_executor.model_loader.reload.layerwise import (  # noqa: E402
    finalize_layerwise_reload,
    initialize_layerwise_reload,
    record_metadata_for_reloading,
)
from vllm.model_executor.model_loader.weight_utils import (  # noqa: E402
    composed_weight_loader,
    default_weight_loader,
)

PATCH = "vllm-layerwise-reload-numel"


def test_get_numel_loaded():
    param = torch.empty(10, device="meta")
    loaded_weight = torch.empty(10)

    def complex_weight_loader(param, loaded_weight):
        param[:3] = loaded_weight[:3]
        param[5:8] = loaded_weight[5:8]
        return "value"

    args = inspect.signature(complex_weight_loader).bind(param, loaded_weight)
    num_loaded, ret = reload_meta.get_numel_loaded(complex_weight_loader, args)
    assert num_loaded == 6
    assert ret == "value"


@pytest.mark.requires(vllm=">=0.19.0")
@pytest.mark.upstream_regression
def test_get_numel_loaded_caps_at_param_size():
    # composed_weight_loader copies into the param twice (the load and the
    # in-place post-load transform), but only param.numel() distinct elements
    # are loaded. get_numel_loaded must not double-count, otherwise a layer's
    # loaded-element total can be reached early and trailing params get dropped.
    param = torch.empty(10)
    loaded_weight = torch.ones(10)
    loader = composed_weight_loader(default_weight_loader, lambda x: x + 1)

    args = inspect.signature(loader).bind(param, loaded_weight)
    num_loaded, _ = reload_meta.get_numel_loaded(loader, args)
    assert num_loaded == 10


class _ComposedLoaderLayer(torch.nn.Module):
    """Mimics a Mamba2 mixer's equal-numel direct params (A, D, dt_bias).

    ``A`` uses ``composed_weight_loader`` (an extra in-place transform copy),
    matching ``MambaMixer2`` where ``A`` is loaded as ``-exp(A_log)``.
    """

    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(torch.empty(4, dtype=torch.float32))
        self.D = torch.nn.Parameter(torch.ones(4))
        self.dt_bias = torch.nn.Parameter(torch.ones(4))
        self.A.weight_loader = composed_weight_loader(
            default_weight_loader, lambda x: -torch.exp(x.float())
        )
        self.D.weight_loader = default_weight_loader
        self.dt_bias.weight_loader = default_weight_loader


@pytest.mark.upstream_regression
def test_layerwise_reload_composed_loader_does_not_drop_params(monkeypatch):
    # Regression test: a composed_weight_loader param (A) used to double-count
    # its elements, finalizing the layer before the trailing param (D) was
    # loaded and leaving it as uninitialized materialized memory.
    layer = _ComposedLoaderLayer()
    model = torch.nn.Sequential(layer)

    def materialize_with_sentinel(meta_tensor):
        tensor = torch.empty_strided(
            size=tuple(meta_tensor.size()),
            stride=tuple(meta_tensor.stride()),
            dtype=meta_tensor.dtype,
            requires_grad=False,
        )
        tensor.fill_(float("nan"))
        tensor.__class__ = meta_tensor.__class__
        tensor.__dict__ = meta_tensor.__dict__.copy()
        return tensor

    monkeypatch.setattr(
        reload_meta, "materialize_meta_tensor", materialize_with_sentinel
    )

    loaded = {
        "A": torch.full((4,), 0.5),
        "dt_bias": torch.full((4,), 3.0),
        "D": torch.full((4,), 7.0),
    }

    record_metadata_for_reloading(model)
    initialize_layerwise_reload(model)
    # Mimic real load_weights: resolve params once, then load in checkpoint
    # order with D last (the param that was dropped).
    params = dict(layer.named_parameters())
    for name in ("A", "dt_bias", "D"):
        param = params[name]
        param.weight_loader(param, loaded[name])
    finalize_layerwise_reload(model, model_config=None)

    assert torch.equal(layer.A, -torch.exp(loaded["A"]))
    assert torch.equal(layer.dt_bias, loaded["dt_bias"])
    assert torch.equal(layer.D, loaded["D"])
