"""vllm-hyv4-fused-expert-kwargs against the REAL vLLM HY-V4 methods (CPU, no model built).

The three methods (``HYV4Model.load_fused_expert_weights`` of ``hy_v4/nvidia/model.py`` from 0.29.0
and ``hy_v4/amd/model.py`` from 0.31.0, ``HYV4MTP._load_fused_expert_weights`` of
``hy_v4/nvidia/mtp.py`` from 0.29.0) use nothing of ``self``: the real function is called on an
uninitialised instance of the real class, bound, unbound and with keywords, with the loaders of
``_fused_expert_loaders.py`` (keyword-only: ``TypeError`` unpatched; a ``**kwargs`` hook: ids
dropped unpatched; vLLM's signature: identical) and with the REAL vLLM ``RoutedExperts`` layer of
``_fused_moe_cpu.py`` (its own ``weight_loader``, and a keyword-only adapter of it): the fused load
equals vLLM's per-expert load bitwise.

Below 0.29.0 (no HY-V4) the patch reports not-needed and touches nothing. The version gate is
tested on rc, dev and local versions without vLLM.
"""

import importlib

import pytest

import compat_patches

from ._fused_expert_loaders import NUM_EXPERTS, call, defined, expected_calls, keyword_only_loader
from ._fused_expert_loaders import kwargs_hook_loader, setup, vllm_style_loader
from ._foreign_wrapper import assert_foreign_wrapper_reported

NAME = "vllm-hyv4-fused-expert-kwargs"
AFFECTED = ">=0.29.0.dev0"

NVIDIA = ("vllm.models.hy_v4.nvidia.model", "HYV4Model", "load_fused_expert_weights")
MTP = ("vllm.models.hy_v4.nvidia.mtp", "HYV4MTP", "_load_fused_expert_weights")
AMD = ("vllm.models.hy_v4.amd.model", "HYV4Model", "load_fused_expert_weights")

affected = pytest.mark.requires(vllm=AFFECTED)
with_amd = pytest.mark.requires(vllm=">=0.31.0.dev0")


def _methods():
    """NVIDIA model and MTP head from 0.29.0, the AMD (ROCm) model from 0.31.0."""
    return [pytest.param(*NVIDIA, marks=affected, id="nvidia-HYV4Model"),
            pytest.param(*MTP, marks=affected, id="nvidia-HYV4MTP"),
            pytest.param(*AMD, marks=with_amd, id="amd-HYV4Model")]


def _real_class(module_name, class_name):
    return getattr(importlib.import_module(module_name), class_name)


# --------------------------------------------------------------------------------------------
# affected releases: the bug, and the patch
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module_name,class_name,method", _methods())
def test_keyword_only_loader_fails_without_patch_and_loads_with_it(module_name, class_name, method):
    import torch

    cls = _real_class(module_name, class_name)
    rec, name, params_dict, param, loaded = setup(keyword_only_loader)
    with pytest.raises(TypeError, match="positional argument"):
        call(cls, "bound", name, params_dict, loaded, method)
    assert not param.data.any()

    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        for how in ("bound", "unbound", "keywords"):
            rec.calls.clear()
            param.data.zero_()
            assert call(cls, how, name, params_dict, loaded, method) is True
            assert rec.calls == expected_calls(name)
            assert torch.equal(param.data, loaded)


@pytest.mark.parametrize("module_name,class_name,method", _methods())
def test_kwargs_hook_loader_silently_loses_ids_without_patch(module_name, class_name, method):
    import torch

    cls = _real_class(module_name, class_name)
    rec, name, params_dict, param, loaded = setup(kwargs_hook_loader)
    # the bug: ids dropped, nothing loaded, reported as "no local expert" instead of an error
    assert call(cls, "bound", name, params_dict, loaded, method) is False
    assert rec.calls == [(name, None, None, True)] * NUM_EXPERTS
    assert not param.data.any()

    with compat_patches.patched(NAME):
        rec.calls.clear()
        assert call(cls, "bound", name, params_dict, loaded, method) is True
        assert rec.calls == expected_calls(name)
        assert torch.equal(param.data, loaded)


@pytest.mark.parametrize("local_experts", [set(), {1, 3}, set(range(NUM_EXPERTS))],
                         ids=["no-local-expert", "some-local", "all-local"])
@pytest.mark.parametrize("module_name,class_name,method", _methods())
def test_vllm_style_loader_behaves_identically(module_name, class_name, method, local_experts):
    import torch

    cls = _real_class(module_name, class_name)
    results = []
    for use_patch in (False, True):
        rec, name, params_dict, param, loaded = setup(vllm_style_loader, local_experts)
        if use_patch:
            with compat_patches.patched(NAME):
                ret = call(cls, "bound", name, params_dict, loaded, method)
        else:
            ret = call(cls, "bound", name, params_dict, loaded, method)
        results.append((ret, rec.calls, param.data.clone()))
    (ret0, calls0, data0), (ret1, calls1, data1) = results
    assert ret0 is ret1 is bool(local_experts)
    assert calls0 == calls1 == expected_calls(name)
    assert torch.equal(data0, data1)


@affected
def test_mtp_head_skips_a_name_it_has_no_parameter_for_with_and_without_patch():
    cls = _real_class(*MTP[:2])
    rec, name, params_dict, param, loaded = setup(keyword_only_loader)
    for use_patch in (False, True):
        if use_patch:
            with compat_patches.patched(NAME):
                assert call(cls, "bound", "no.such.param", params_dict, loaded, MTP[2]) is False
        else:
            assert call(cls, "bound", "no.such.param", params_dict, loaded, MTP[2]) is False
    assert rec.calls == [] and not param.data.any()
    with compat_patches.patched(NAME):   # the model's method has no such guard: KeyError, as unpatched
        with pytest.raises(KeyError):
            call(_real_class(*NVIDIA[:2]), "bound", "no.such.param", params_dict, loaded)


def _layer(h):
    """A real RoutedExperts made by vLLM's create_weights (torch.empty: zeroed, so that what was not
    written shows)."""
    layer = h.make_layer(h.make_method("TRITON"))
    layer.w13_weight.data.zero_()
    layer.w2_weight.data.zero_()
    return layer


def _real_layer_case():
    """A real RoutedExperts (vLLM's create_weights and weight_loader), its per-expert load (the
    oracle, vLLM's own per-expert path) and the same checkpoint fused as HY-V4 stores it."""
    import torch

    from . import _fused_moe_cpu as h

    weights = h.checkpoint(7)
    oracle = _layer(h)
    h.load(oracle, weights)
    fused = {shard: torch.stack([weights[e][shard] for e in range(h.E)]) for shard in ("w1", "w3", "w2")}
    return h, oracle, fused


def _load_fused(cls, method, layer, fused):
    """What HYV4Model.load_weights does with a fused checkpoint: gate_up split into w1 / w3, down w2."""
    params = {"experts.w13_weight": layer.w13_weight, "experts.w2_weight": layer.w2_weight}
    self = object.__new__(cls)
    load = getattr(self, method)
    return [load("experts.w13_weight", params, fused["w1"], "w1", len(fused["w1"])),
            load("experts.w13_weight", params, fused["w3"], "w3", len(fused["w3"])),
            load("experts.w2_weight", params, fused["w2"], "w2", len(fused["w2"]))]


@pytest.mark.parametrize("module_name,class_name,method", _methods())
def test_real_vllm_loader_same_bits_with_and_without_patch(module_name, class_name, method):
    """vLLM's own RoutedExperts.weight_loader: the fused load equals vLLM's per-expert load bitwise,
    unpatched and patched."""
    import torch

    cls = _real_class(module_name, class_name)
    h, oracle, fused = _real_layer_case()
    for use_patch in (False, True):
        layer = _layer(h)
        if use_patch:
            with compat_patches.patched(NAME):
                assert _load_fused(cls, method, layer, fused) == [True, True, True]
        else:
            assert _load_fused(cls, method, layer, fused) == [True, True, True]
        assert torch.equal(layer.w13_weight, oracle.w13_weight)
        assert torch.equal(layer.w2_weight, oracle.w2_weight)


@pytest.mark.parametrize("module_name,class_name,method", _methods())
def test_keyword_only_adapter_of_the_real_loader(module_name, class_name, method):
    """A keyword-only loader in front of vLLM's real RoutedExperts.weight_loader (the shape of an
    external loader hook): unpatched TypeError and nothing written; patched, vLLM's per-expert bits."""
    import torch

    cls = _real_class(module_name, class_name)
    h, oracle, fused = _real_layer_case()
    layer = _layer(h)
    real = layer.weight_loader

    def keyword_only(param, loaded_weight, weight_name, *, shard_id, expert_id, return_success=False):
        return real(param, loaded_weight, weight_name, shard_id=shard_id, expert_id=expert_id,
                    return_success=return_success)

    for param in (layer.w13_weight, layer.w2_weight):
        param.weight_loader = keyword_only
    with pytest.raises(TypeError, match="positional argument"):
        _load_fused(cls, method, layer, fused)
    assert not layer.w13_weight.any() and not layer.w2_weight.any()   # nothing written
    with compat_patches.patched(NAME):
        assert _load_fused(cls, method, layer, fused) == [True, True, True]
    assert torch.equal(layer.w13_weight, oracle.w13_weight)
    assert torch.equal(layer.w2_weight, oracle.w2_weight)


@pytest.mark.parametrize("module_name,class_name,method", _methods())
def test_revert_restores_the_very_original(module_name, class_name, method):
    cls = _real_class(module_name, class_name)
    before = cls.__dict__[method]
    with compat_patches.patched(NAME):
        assert cls.__dict__[method] is not before
        assert cls.__dict__[method].__wrapped__ is before
    assert cls.__dict__[method] is before


@affected
def test_applied_once_every_target_module_is_imported():
    from compat_patches.core.versions import in_range, installed_version

    record = compat_patches.get_patch(NAME)
    expected = [t for t in record.targets
                if t.versions is None or in_range(installed_version("vllm"), t.versions)]
    for target in expected:
        importlib.import_module(target.module)
    with compat_patches.patched(NAME) as report:
        entry = report[NAME]
        assert entry.status == "applied", entry
        assert set(entry.targets) == {t.path for t in expected}
        assert "waiting" not in entry.reason and "fixed upstream" not in entry.reason
        assert entry.unverified == {}
    amd = "vllm.models.hy_v4.amd.model:HYV4Model.load_fused_expert_weights"
    assert (amd in entry.targets) == in_range(installed_version("vllm"), ">=0.31.0")


@affected
def test_fingerprints_match_the_installed_release():
    from compat_patches.patches.vllm import hyv4_fused_expert_kwargs as mod

    checks = {NVIDIA: (mod.check_model_body, mod.fixed_model_body, mod.check_mtp_body),
              MTP: (mod.check_mtp_body, mod.fixed_mtp_body, mod.check_model_body),
              AMD: (mod.check_model_body, mod.fixed_model_body, mod.check_mtp_body)}
    for (module_name, class_name, method), (check, fixed, other) in checks.items():
        try:
            original = _real_class(module_name, class_name).__dict__[method]
        except ModuleNotFoundError:
            continue  # hy_v4/amd arrives in 0.31.0
        assert check(original) is None
        assert fixed(original) is None
        assert "body differs" in other(original)   # each fingerprint tells the two bodies apart


@affected
def test_foreign_wrapper_underneath_is_reported_not_bypassed():
    assert_foreign_wrapper_reported(NAME, importlib.import_module(NVIDIA[0]),
                                    "HYV4Model.load_fused_expert_weights")


@affected
def test_a_newer_release_is_patched_and_reported_unverified():
    from compat_patches.core import PatchManager
    from compat_patches.core.versions import installed_version
    from compat_patches.patches.vllm.hyv4_fused_expert_kwargs import PATCH

    for module_name in (NVIDIA[0], MTP[0]):
        importlib.import_module(module_name)
    manager = PatchManager([PATCH], version_of=lambda dist: "0.35.0" if dist == "vllm"
                           else installed_version(dist))
    with manager.patched(NAME) as report:
        entry = report[NAME]
        assert entry.status == "applied", entry
        assert "unverified on vllm 0.35.0: verified through 0.34.0" in entry.reason


@affected
def test_a_build_that_passes_keywords_already_is_not_needed(monkeypatch):
    """A future upstream fix or a vendor backport: the keyword body is recognised and not patched."""
    import textwrap

    from compat_patches.core import PatchManager
    from compat_patches.patches.vllm import _fused_expert_loading as shared
    from compat_patches.patches.vllm.hyv4_fused_expert_kwargs import PATCH

    for module_name, class_name, method in (NVIDIA, MTP):
        cls = _real_class(module_name, class_name)
        body = shared.GUARDED_BUGGY_BODY if method == MTP[2] else shared.BUGGY_BODY
        source = (f"def {method}(self, name, params_dict, loaded_weight, shard_id, num_experts):\n"
                  + textwrap.indent(shared.keyword_body(body), "    ") + "\n")
        monkeypatch.setattr(cls, method, defined(source, NAME))
    manager = PatchManager([PATCH], version_of=lambda dist: "0.30.0")  # no amd target there
    def current():
        return [_real_class(m, c).__dict__[method] for m, c, method in (NVIDIA, MTP)]

    before = current()
    with manager.patched(NAME) as report:
        entry = report[NAME]
        assert entry.status == "not-needed", entry
        assert "by keyword already" in entry.reason
        assert all(a is b for a, b in zip(current(), before))


# --------------------------------------------------------------------------------------------
# the fingerprints and the version gate (no vLLM needed)
# --------------------------------------------------------------------------------------------
def _variants(method, guard):
    import textwrap

    header = f"def {method}(self, name, params_dict, loaded_weight, shard_id, num_experts):\n"
    lines = ["if name not in params_dict:", "    return False"] if guard else []
    lines += ["param = params_dict[name]",
              "weight_loader = typing.cast(Callable[..., bool], param.weight_loader)",
              "loaded_local_expert = False",
              "for expert_id in range(num_experts):",
              "    curr_expert_weight = loaded_weight[expert_id]",
              "    success = weight_loader(",
              "        param, curr_expert_weight, name, shard_id, expert_id, return_success=True",
              "    )  # formatting and comments do not count",
              "    if success:",
              "        loaded_local_expert = True",
              "",
              "return loaded_local_expert"]
    buggy = header + textwrap.indent("\n".join(lines), "    ") + "\n"
    keyword = buggy.replace("name, shard_id, expert_id,", "name, shard_id=shard_id, expert_id=expert_id,")
    other = buggy.replace("return_success=True", "return_success=False")
    return buggy, keyword, other


@pytest.mark.parametrize("guard", [False, True], ids=["HYV4Model", "HYV4MTP"])
def test_fingerprints_accept_only_their_buggy_body(guard):
    from compat_patches.patches.vllm import hyv4_fused_expert_kwargs as mod

    method = "_load_fused_expert_weights" if guard else "load_fused_expert_weights"
    check, fixed = ((mod.check_mtp_body, mod.fixed_mtp_body) if guard
                    else (mod.check_model_body, mod.fixed_model_body))
    other_check = mod.check_model_body if guard else mod.check_mtp_body
    buggy, keyword, other = _variants(method, guard)
    for variant, drift, already in ((buggy, None, None), (keyword, "differs", "by keyword already"),
                                    (other, "differs", None)):
        function = defined(variant, NAME)
        for finding, expected in ((check(function), drift), (fixed(function), already)):
            if expected is None:
                assert finding is None, finding
            else:
                assert expected in finding
    assert "body differs" in other_check(defined(buggy, NAME))
    scope = {}
    exec(compile(buggy, "<no-source>", "exec"), scope)
    assert "source unavailable" in check(scope[method])
    assert fixed(scope[method]) is None


def test_the_existing_record_shares_the_body_and_the_wrapper():
    from compat_patches.patches.vllm import _fused_expert_loading as shared
    from compat_patches.patches.vllm import fused_expert_kwargs as qwen
    from compat_patches.patches.vllm import hyv4_fused_expert_kwargs as hyv4

    assert qwen.BUGGY_BODY is hyv4.MODEL_BODY is shared.BUGGY_BODY
    assert hyv4.MTP_BODY == shared.MISSING_NAME_GUARD + "\n" + shared.BUGGY_BODY
    wrappers = {t.path: t.wrapper for t in hyv4.PATCH.targets}
    assert wrappers[hyv4.MODEL] is wrappers[hyv4.AMD_MODEL] is shared.load_fused_expert_weights
    assert wrappers[hyv4.MTP] is shared.load_fused_expert_weights_if_present
    assert {t.wrapper for t in qwen.PATCH.targets} == {shared.load_fused_expert_weights}


@pytest.mark.parametrize("version,selected", [
    ("0.28.0", None), ("0.28.0+cu128", None), ("0.28.1.dev5", None),
    ("0.29.0.dev0", "model+mtp"), ("0.29.0rc1", "model+mtp"), ("0.29.0", "model+mtp"),
    ("0.29.0+cu128", "model+mtp"), ("0.30.0+cu129", "model+mtp"), ("0.31.0.dev3", "all"),
    ("0.31.0rc2", "all"), ("0.31.0+rocm7.1", "all"), ("0.34.0", "all"), ("0.35.0.dev0", "all"),
])
def test_version_gate(version, selected):
    from compat_patches.core import PatchManager
    from compat_patches.patches.vllm.hyv4_fused_expert_kwargs import AMD_MODEL, MODEL, MTP, PATCH

    manager = PatchManager([PATCH], version_of=lambda dist: version)
    paths = {t.path for t in manager.targets_for(NAME)}
    expected = {None: set(), "model+mtp": {MODEL, MTP}, "all": {MODEL, MTP, AMD_MODEL}}[selected]
    assert paths == expected
    assert manager.in_range(NAME) is (selected is not None)
    if selected is None:
        entry = manager.report()[NAME]
        assert entry.status == "not-needed", entry
        assert ">=0.29.0.dev0" in entry.reason


# --------------------------------------------------------------------------------------------
# releases without HY-V4
# --------------------------------------------------------------------------------------------
@pytest.mark.requires(vllm="<0.29.0.dev0")
def test_not_needed_below_0_29():
    entry = compat_patches.report()[NAME]
    assert entry.status == "not-needed", entry
    assert "outside the affected range >=0.29.0.dev0" in entry.reason
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("vllm.models.hy_v4")   # the model does not exist there
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed"
        assert NAME not in compat_patches._default_manager().active_names()
