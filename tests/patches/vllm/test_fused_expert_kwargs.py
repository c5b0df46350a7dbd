"""vllm-fused-expert-kwargs against the REAL vLLM methods (CPU, no model built).

`load_fused_expert_weights` uses nothing of `self`, so the real function is called on an
uninitialised instance of the real class (and unbound through the class), with one Parameter whose
`weight_loader` is (the loaders: `_fused_expert_loaders.py`, shared with the HY-V4 record's tests):

* keyword-only (`*, shard_id, expert_id`): vLLM 0.11 - 0.21 raise TypeError without the patch;
* a TPU / runai style hook (`*args, **kwargs`, reads `kwargs.get("expert_id")`): without the patch
  the ids are silently dropped (None);
* vLLM's own positional-or-keyword signature: identical results with and without the patch
  (return value, `return_success=True`, the data written, bitwise).

On fixed releases (0.22.0 and newer) the patch reports not-needed and touches nothing; 0.22 - 0.24
(the method still exists) already pass the ids by keyword, the oracle of what the patch produces.
"""

import importlib

import pytest

import compat_patches

from ._fused_expert_loaders import NUM_EXPERTS, defined, keyword_only_loader, kwargs_hook_loader
from ._fused_expert_loaders import call as _call
from ._fused_expert_loaders import expected_calls as _expected_calls
from ._fused_expert_loaders import setup as _setup
from ._fused_expert_loaders import vllm_style_loader
from ._foreign_wrapper import assert_foreign_wrapper_reported

NAME = "vllm-fused-expert-kwargs"
AFFECTED = ">=0.11.0.dev0,<0.22.0"

CLASSES = [
    ("vllm.model_executor.models.qwen3_vl_moe", "Qwen3MoeLLMModel"),
    ("vllm.model_executor.models.qwen3_5", "Qwen3_5Model"),
    ("vllm.model_executor.models.qwen3_5_mtp", "Qwen3_5MultiTokenPredictor"),
]
CLASS_IDS = [cls for _, cls in CLASSES]


def _real_class(module_name, class_name):
    return getattr(importlib.import_module(module_name), class_name)


# --------------------------------------------------------------------------------------------
# affected releases
# --------------------------------------------------------------------------------------------
affected = pytest.mark.requires(vllm=AFFECTED)
with_qwen35 = pytest.mark.requires(vllm=">=0.17.0,<0.22.0")


def _classes_here():
    """Qwen3-VL-MoE has the method from 0.11.0, Qwen3.5 and its MTP head from 0.17.0."""
    return [pytest.param(m, c, marks=[affected if c == "Qwen3MoeLLMModel" else with_qwen35], id=c)
            for m, c in CLASSES]


@pytest.mark.parametrize("module_name,class_name", _classes_here())
def test_keyword_only_loader_fails_without_patch_and_loads_with_it(module_name, class_name):
    import torch

    cls = _real_class(module_name, class_name)
    rec, name, params_dict, param, loaded = _setup(keyword_only_loader)
    with pytest.raises(TypeError, match="positional argument"):
        _call(cls, "bound", name, params_dict, loaded)

    with compat_patches.patched(NAME) as report:
        assert report[NAME].status in ("applied", "deferred"), report[NAME]
        for how in ("bound", "unbound", "keywords"):
            rec.calls.clear()
            param.data.zero_()
            assert _call(cls, how, name, params_dict, loaded) is True
            assert rec.calls == _expected_calls(name)
            assert torch.equal(param.data, loaded)


@pytest.mark.parametrize("module_name,class_name", _classes_here())
def test_kwargs_hook_loader_silently_loses_ids_without_patch(module_name, class_name):
    import torch

    cls = _real_class(module_name, class_name)
    rec, name, params_dict, param, loaded = _setup(kwargs_hook_loader)
    # the bug: ids dropped, nothing loaded, reported as "no local expert" instead of an error
    assert _call(cls, "bound", name, params_dict, loaded) is False
    assert rec.calls == [(name, None, None, True)] * NUM_EXPERTS
    assert not param.data.any()

    with compat_patches.patched(NAME):
        rec.calls.clear()
        assert _call(cls, "bound", name, params_dict, loaded) is True
        assert rec.calls == _expected_calls(name)
        assert torch.equal(param.data, loaded)


@pytest.mark.parametrize("local_experts", [set(), {1, 3}, set(range(NUM_EXPERTS))],
                         ids=["no-local-expert", "some-local", "all-local"])
@pytest.mark.parametrize("module_name,class_name", _classes_here())
def test_vllm_style_loader_behaves_identically(module_name, class_name, local_experts):
    import torch

    cls = _real_class(module_name, class_name)
    results = []
    for use_patch in (False, True):
        rec, name, params_dict, param, loaded = _setup(vllm_style_loader, local_experts)
        if use_patch:
            with compat_patches.patched(NAME):
                ret = _call(cls, "bound", name, params_dict, loaded)
        else:
            ret = _call(cls, "bound", name, params_dict, loaded)
        results.append((ret, rec.calls, param.data.clone()))
    (ret0, calls0, data0), (ret1, calls1, data1) = results
    assert ret0 is ret1 is bool(local_experts)
    assert calls0 == calls1 == _expected_calls("layers.0.mlp.experts.w13_weight")
    assert torch.equal(data0, data1)


@pytest.mark.parametrize("module_name,class_name", _classes_here())
def test_revert_restores_the_very_original(module_name, class_name):
    cls = _real_class(module_name, class_name)
    before = cls.__dict__["load_fused_expert_weights"]
    with compat_patches.patched(NAME):
        assert cls.__dict__["load_fused_expert_weights"] is not before
    assert cls.__dict__["load_fused_expert_weights"] is before


@affected
def test_applied_once_every_target_module_is_imported():
    from compat_patches.core.versions import in_range, installed_version

    expected = [p for p in compat_patches.get_patch(NAME).targets
                if p.versions is None or in_range(installed_version("vllm"), p.versions)]
    for target in expected:
        importlib.import_module(target.module)
    with compat_patches.patched(NAME) as report:
        entry = report[NAME]
        assert entry.status == "applied", entry
        assert set(entry.targets) == {t.path for t in expected}
        assert "fixed upstream in vllm 0.22.0" in entry.reason


@affected
def test_fingerprint_matches_the_installed_release():
    from compat_patches.patches.vllm import fused_expert_kwargs as mod

    for module_name, class_name in CLASSES:
        try:
            cls = _real_class(module_name, class_name)
        except ModuleNotFoundError:
            continue  # qwen3_5 / qwen3_5_mtp arrive in 0.17.0
        assert mod.check_body(cls.__dict__["load_fused_expert_weights"]) is None
        assert mod.fixed_body(cls.__dict__["load_fused_expert_weights"]) is None


@affected
def test_foreign_wrapper_underneath_is_reported_not_bypassed():
    assert_foreign_wrapper_reported(NAME, importlib.import_module("vllm.model_executor.models.qwen3_vl_moe"),
                                    "Qwen3MoeLLMModel.load_fused_expert_weights")


# --------------------------------------------------------------------------------------------
# the fingerprint (no vLLM needed)
# --------------------------------------------------------------------------------------------
def test_fingerprint_refuses_other_bodies():
    import textwrap

    from compat_patches.patches.vllm import fused_expert_kwargs as mod

    source = textwrap.dedent('''\
        def load_fused_expert_weights(self, name, params_dict, loaded_weight, shard_id, num_experts):
            param = params_dict[name]
            weight_loader = typing.cast(Callable[..., bool], param.weight_loader)
            loaded_local_expert = False
            for expert_id in range(num_experts):
                curr_expert_weight = loaded_weight[expert_id]
                success = weight_loader(param, curr_expert_weight, name, shard_id=shard_id, expert_id=expert_id, return_success=True)
                if success:
                    loaded_local_expert = True
            return loaded_local_expert
        ''')
    buggy = source.replace("shard_id=shard_id, expert_id=expert_id", "shard_id, expert_id")
    other = buggy.replace("return_success=True", "return_success=False")
    for variant, drift, fixed in ((source, "differs", "by keyword already"), (buggy, None, None),
                                  (other, "differs", None)):
        function = defined(variant, NAME)
        for finding, expected in ((mod.check_body(function), drift), (mod.fixed_body(function), fixed)):
            if expected is None:
                assert finding is None
            else:
                assert expected in finding
    scope = {}
    exec(compile(source, "<no-source>", "exec"), scope)
    assert "source unavailable" in mod.check_body(scope["load_fused_expert_weights"])
    assert mod.fixed_body(scope["load_fused_expert_weights"]) is None


# --------------------------------------------------------------------------------------------
# fixed releases
# --------------------------------------------------------------------------------------------
@pytest.mark.requires(vllm=">=0.22.0")
def test_not_needed_on_fixed_releases():
    entry = compat_patches.report()[NAME]
    assert entry.status == "not-needed", entry
    assert "0.22.0" in entry.reason
    for module_name, class_name in CLASSES:
        importlib.import_module(module_name)
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed"
        assert NAME not in compat_patches._default_manager().active_names()


@pytest.mark.requires(vllm=">=0.22.0,<0.25.0")
def test_a_build_inside_the_range_that_has_the_fix_reports_not_needed():
    """A source build inside the range (0.21.1.dev) or a vendor backport that already has the fix."""
    from compat_patches.core import PatchManager
    from compat_patches.core.versions import installed_version
    from compat_patches.patches.vllm.fused_expert_kwargs import PATCH

    for module_name, _ in CLASSES:
        importlib.import_module(module_name)
    before = [getattr(_real_class(m, c), "load_fused_expert_weights") for m, c in CLASSES]
    manager = PatchManager([PATCH], version_of=lambda dist: "0.21.1.dev3" if dist == "vllm"
                           else installed_version(dist))
    with manager.patched(NAME) as report:
        entry = report[NAME]
        assert entry.status == "not-needed", entry
        assert "by keyword already" in entry.reason
        after = [getattr(_real_class(m, c), "load_fused_expert_weights") for m, c in CLASSES]
        assert all(a is b for a, b in zip(after, before))


@pytest.mark.requires(vllm=">=0.22.0,<0.25.0")
@pytest.mark.parametrize("module_name,class_name", CLASSES, ids=CLASS_IDS)
def test_fixed_release_passes_keywords_itself(module_name, class_name):
    """The upstream fix is the oracle: 0.22 - 0.24 load keyword-only loaders unpatched."""
    import torch

    cls = _real_class(module_name, class_name)
    for factory in (keyword_only_loader, kwargs_hook_loader):
        rec, name, params_dict, param, loaded = _setup(factory)
        assert _call(cls, "bound", name, params_dict, loaded) is True
        assert rec.calls == _expected_calls(name)
        assert torch.equal(param.data, loaded)


@pytest.mark.requires(vllm=">=0.25.0")
@pytest.mark.parametrize("module_name,class_name", CLASSES, ids=CLASS_IDS)
def test_method_removed_upstream(module_name, class_name):
    cls = _real_class(module_name, class_name)
    assert not hasattr(cls, "load_fused_expert_weights")
