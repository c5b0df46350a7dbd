"""vllm-layerwise-reload-numel against vLLM's REAL layerwise reload machinery (CPU, small modules).

A module shaped like MambaMixer2's direct parameters (``A`` loaded as ``-exp(A_log)`` through the
real ``composed_weight_loader``, then ``D`` and ``dt_bias`` through ``default_weight_loader``) goes
through vLLM's own ``record_metadata_for_reloading`` / ``initialize_layerwise_reload`` / the wrapped
weight loaders / ``finalize_layerwise_reload``. Fresh memory is made deterministic: torch's
deterministic mode fills every ``empty``/``empty_strided`` (what vLLM's ``materialize_meta_tensor``
allocates) with NaN, so "left uninitialised" reads back as NaN on every run instead of whatever the
allocator returned.

* affected releases (0.16.0 - 0.23.0): without the patch the parameter loaded after the layer was
  finalised early is NaN (not what was loaded); with it every parameter holds what was loaded,
  bitwise, in the parameter objects (and storage) the model had before the reload;
* a load order that never reaches the total early gives identical results with and without it;
* fixed releases (0.24.0 on): not-needed, nothing touched, and the unpatched reload is right (the
  upstream fix is the oracle of what the patch produces).
"""

import contextlib
import inspect

import pytest

import compat_patches

pytest.importorskip("torch")

NAME = "vllm-layerwise-reload-numel"
AFFECTED = ">=0.16.0.dev0,<0.24.0"
affected = pytest.mark.requires(vllm=AFFECTED)
fixed = pytest.mark.requires(vllm=">=0.24.0")

META = "vllm.model_executor.model_loader.reload.meta"
LAYERWISE = "vllm.model_executor.model_loader.reload.layerwise"

#: load orders: (order, the parameters the bug leaves uninitialised)
ORDERS = {
    "A-first": (("A", "dt_bias", "D"), {"D"}),        # 8 + 4 = 12: finalised before D
    "A-second": (("D", "A", "dt_bias"), {"dt_bias"}),  # 4 + 8 = 12: finalised before dt_bias
    "A-last": (("D", "dt_bias", "A"), set()),          # the total is reached by the last load
}


@contextlib.contextmanager
def nan_filled_fresh_memory():
    """torch fills the memory of empty()/empty_strided() with NaN while this is active."""
    import torch

    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)


def _reload_api():
    from vllm.model_executor.model_loader.reload import layerwise
    from vllm.model_executor.model_loader.weight_utils import (
        composed_weight_loader,
        default_weight_loader,
    )
    return layerwise, composed_weight_loader, default_weight_loader


def _mixer_like(size=4):
    """MambaMixer2's direct parameters: A (composed loader, -exp(A_log)), D, dt_bias."""
    import torch

    _, composed_weight_loader, default_weight_loader = _reload_api()
    layer = torch.nn.Module()
    layer.A = torch.nn.Parameter(torch.empty(size), requires_grad=False)
    layer.D = torch.nn.Parameter(torch.ones(size), requires_grad=False)
    layer.dt_bias = torch.nn.Parameter(torch.ones(size), requires_grad=False)
    layer.A.weight_loader = composed_weight_loader(default_weight_loader,
                                                   lambda x: -torch.exp(x.float()))
    layer.D.weight_loader = default_weight_loader
    layer.dt_bias.weight_loader = default_weight_loader
    return layer


def _checkpoint(size=4):
    import torch

    return {"A": torch.linspace(-1.0, 0.75, size), "D": torch.linspace(2.0, 5.0, size),
            "dt_bias": torch.linspace(-3.0, 0.5, size)}


def _expected(checkpoint):
    import torch

    return {"A": -torch.exp(checkpoint["A"].float()), "D": checkpoint["D"],
            "dt_bias": checkpoint["dt_bias"]}


def _bitwise_equal(a, b):
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.detach().contiguous().view(torch.int32), b.detach().contiguous().view(torch.int32))


def _reload(order):
    """A weight update through vLLM's layerwise reload; returns the layer and what it held before."""
    import torch

    layerwise, _, _ = _reload_api()
    layer = _mixer_like()
    model = torch.nn.Sequential(layer)
    checkpoint = _checkpoint()
    before = {name: (param, param.data_ptr()) for name, param in layer.named_parameters()}
    with nan_filled_fresh_memory():
        layerwise.record_metadata_for_reloading(model)
        layerwise.initialize_layerwise_reload(model)
        params = dict(layer.named_parameters())  # as model.load_weights does: resolve, then load
        for name in order:
            params[name].weight_loader(params[name], checkpoint[name])
        layerwise.finalize_layerwise_reload(model, None)
    return layer, before, _expected(checkpoint)


def _assert_every_parameter_loaded(layer, before, expected):
    for name, want in expected.items():
        param = getattr(layer, name)
        assert _bitwise_equal(param.data, want), (name, param.data, want)
        # vLLM copies the processed values back into the tensors the model had (CUDA graphs keep them)
        assert param is before[name][0] and param.data_ptr() == before[name][1], name


# --------------------------------------------------------------------------------------------
# affected releases
# --------------------------------------------------------------------------------------------
@affected
@pytest.mark.parametrize("order_id", ["A-first", "A-second"])
def test_trailing_parameter_is_uninitialised_without_patch_and_loaded_with_it(order_id):
    import torch

    order, dropped = ORDERS[order_id]
    layer, before, expected = _reload(order)
    for name in dropped:
        assert torch.isnan(getattr(layer, name)).all(), (name, getattr(layer, name))
        assert not torch.equal(getattr(layer, name), expected[name])
    for name in set(expected) - dropped:  # what was loaded before the early finalisation is right
        assert _bitwise_equal(getattr(layer, name).data, expected[name]), name

    with compat_patches.patched(NAME) as report:
        assert report[NAME].status in ("applied", "deferred"), report[NAME]
        layer, before, expected = _reload(order)
        assert compat_patches.report()[NAME].status == "applied"
    _assert_every_parameter_loaded(layer, before, expected)


@affected
def test_order_that_never_finalises_early_is_identical_with_and_without_patch():
    order, _ = ORDERS["A-last"]
    unpatched = _reload(order)
    _assert_every_parameter_loaded(*unpatched)
    with compat_patches.patched(NAME):
        patched = _reload(order)
    _assert_every_parameter_loaded(*patched)
    for name in ("A", "D", "dt_bias"):
        assert _bitwise_equal(getattr(unpatched[0], name).data, getattr(patched[0], name).data)


@affected
def test_count_and_return_value_of_single_copy_loaders_unchanged():
    """Only a count above the parameter's size changes; the loader's return value passes through."""
    import torch

    from importlib import import_module

    meta = import_module(META)
    sentinel = object()

    def slices(param, loaded_weight):  # vLLM's own test loader: 6 of 10 elements
        param[:3] = loaded_weight[:3]
        param[5:8] = loaded_weight[5:8]
        return sentinel

    def twice(param, loaded_weight):  # a composed-style loader: 2 x 10 copied
        param.copy_(loaded_weight)
        param.copy_(loaded_weight)
        return sentinel

    results = {}
    for use_patch in (False, True):
        with compat_patches.patched(NAME) if use_patch else contextlib.nullcontext():
            for loader in (slices, twice):
                args = inspect.signature(loader).bind(torch.empty(10, device="meta"), torch.ones(10))
                results[use_patch, loader.__name__] = meta.get_numel_loaded(loader, args)
    assert results[False, "slices"] == results[True, "slices"] == (6, sentinel)
    assert results[False, "twice"][0] == 20 and results[True, "twice"][0] == 10
    assert results[False, "twice"][1] is results[True, "twice"][1] is sentinel


@affected
def test_revert_restores_the_very_originals():
    from importlib import import_module

    meta, layerwise = import_module(META), import_module(LAYERWISE)
    before = meta.get_numel_loaded
    assert layerwise.get_numel_loaded is before  # `from .meta import get_numel_loaded`
    with compat_patches.patched(NAME):
        assert meta.get_numel_loaded is not before
        assert layerwise.get_numel_loaded is not before
    assert meta.get_numel_loaded is before
    assert layerwise.get_numel_loaded is before


@affected
def test_applied_on_both_names():
    from importlib import import_module

    import_module(LAYERWISE)
    with compat_patches.patched(NAME) as report:
        entry = report[NAME]
        assert entry.status == "applied", entry
        package = "vllm.model_executor.model_loader.reload"
        assert set(entry.targets) == {f"{package}:meta.get_numel_loaded",
                                      f"{package}:layerwise.get_numel_loaded"}
        assert "fixed upstream in vllm 0.24.0" in entry.reason


@affected
def test_fingerprint_matches_the_installed_release():
    from importlib import import_module

    from compat_patches.patches.vllm import layerwise_reload_numel as mod

    original = import_module(META).get_numel_loaded
    assert mod.check_body(original) is None
    assert mod.fixed_body(original) is None


# --------------------------------------------------------------------------------------------
# the fingerprint (no vLLM needed)
# --------------------------------------------------------------------------------------------
def _exec_function(source):
    import linecache

    filename = f"<{NAME}-{abs(hash(source))}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope = {}
    exec(compile(source, filename, "exec"), scope)
    return scope["get_numel_loaded"]


def test_fingerprint_refuses_other_bodies():
    from compat_patches.patches.vllm import layerwise_reload_numel as mod

    header = 'def get_numel_loaded(weight_loader, args):\n    """Doc."""\n'
    fixed_024 = header + (
        "    with CopyCounter() as counter:\n"
        "        return_value = weight_loader(*args.args, **args.kwargs)\n"
        "    numel = counter.copied_numel\n"
        "    param = args.arguments.get('param', None)\n"
        "    if isinstance(param, torch.Tensor):\n"
        "        numel = min(numel, param.numel())\n"
        "    return numel, return_value\n")
    buggy_016 = header + (
        "    assert args.arguments['param'].device.type == 'meta'\n"
        "    with MetaCopyCounter() as counter:\n"
        "        return_value = weight_loader(*args.args, **args.kwargs)\n"
        "    return counter.copied_numel, return_value\n")
    buggy_019 = header + (
        "    with CopyCounter() as counter:\n"
        "        return_value = weight_loader(*args.args, **args.kwargs)\n"
        "    return counter.copied_numel, return_value\n")
    other = buggy_019.replace("counter.copied_numel", "counter.copied_numel // 2")
    for source, drift, fix in ((fixed_024, "differs", "min(...) already"), (buggy_016, None, None),
                               (buggy_019, None, None), (other, "differs", None)):
        function = _exec_function(source)
        for finding, expected in ((mod.check_body(function), drift), (mod.fixed_body(function), fix)):
            if expected is None:
                assert finding is None
            else:
                assert expected in finding
    scope = {}
    exec(compile(buggy_019, "<no-source>", "exec"), scope)
    assert "source unavailable" in mod.check_body(scope["get_numel_loaded"])
    assert mod.fixed_body(scope["get_numel_loaded"]) is None


# --------------------------------------------------------------------------------------------
# fixed releases
# --------------------------------------------------------------------------------------------
@fixed
def test_not_needed_on_fixed_releases():
    from importlib import import_module

    meta, layerwise = import_module(META), import_module(LAYERWISE)
    before = meta.get_numel_loaded
    entry = compat_patches.report()[NAME]
    assert entry.status == "not-needed", entry
    assert "0.24.0" in entry.reason
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed"
        assert meta.get_numel_loaded is before and layerwise.get_numel_loaded is before


@fixed
@pytest.mark.parametrize("order_id", ["A-first", "A-second"])
def test_fixed_release_loads_every_parameter_itself(order_id):
    """The upstream fix is the oracle: what the patch produces on affected releases."""
    _assert_every_parameter_loaded(*_reload(ORDERS[order_id][0]))


@fixed
def test_a_build_inside_the_range_that_has_the_fix_reports_not_needed():
    """A source build inside the range (0.23.1.dev) or a vendor backport that already caps."""
    from importlib import import_module

    from compat_patches.core import PatchManager
    from compat_patches.core.versions import installed_version
    from compat_patches.patches.vllm.layerwise_reload_numel import PATCH

    meta = import_module(META)
    before = meta.get_numel_loaded
    manager = PatchManager([PATCH], version_of=lambda dist: "0.23.1.dev3" if dist == "vllm"
                           else installed_version(dist))
    with manager.patched(NAME) as report:
        entry = report[NAME]
        assert entry.status == "not-needed", entry
        assert "min(...) already" in entry.reason
        assert meta.get_numel_loaded is before
