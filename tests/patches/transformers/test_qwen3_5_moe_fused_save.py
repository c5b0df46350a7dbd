"""transformers-qwen3-5-moe-fused-save on the real transformers releases.

Tiny Qwen3.5-MoE models (text-only and VL) built from configs, saved with save_pretrained and
reverted with revert_weight_conversion (what a trainer's weight broadcast calls). Unpatched, on an
affected release, the file holds per-expert 2-D weights; patched it holds the model's own fused
tensors under the names the unpatched save gives every other weight, bitwise, and loads back
bitwise. Loading is untouched (a per-expert file from an unpatched save loads), other MoE models are
saved exactly as unpatched, and 5.5.2 - 5.6.1 (whose mapping never had the converters) reports not-needed.
"""

import glob
import re

import pytest

import compat_patches
from compat_patches.patches.transformers import qwen3_5_moe_fused_save as mod

NAME = "transformers-qwen3-5-moe-fused-save"
AFFECTED = mod.PATCH.affected["transformers"]
NOT_AFFECTED = ">=5.5.2,<5.6.2"  # the model's mapping is an alias of qwen3_5_text there
pytestmark = pytest.mark.requires(torch=">=2", transformers=">=5.2.0")
TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, moe_intermediate_size=8,
            shared_expert_intermediate_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            head_dim=8, num_experts=4, num_experts_per_tok=2, layer_types=["linear_attention", "full_attention"],
            linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=8, linear_value_head_dim=8)
VISION = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16, patch_size=2,
              temporal_patch_size=1, spatial_merge_size=1)
PER_EXPERT = re.compile(r"\.mlp\.experts\.\d+\.(gate_proj|up_proj|down_proj)\.weight$")
FUSED = re.compile(r"\.mlp\.experts\.(gate_up_proj|down_proj)$")


def build(kind):
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "text":
        model = transformers.Qwen3_5MoeForCausalLM(transformers.Qwen3_5MoeTextConfig(**TEXT))
    else:
        config = transformers.Qwen3_5MoeConfig(text_config=TEXT, vision_config=VISION)
        model = transformers.Qwen3_5MoeForConditionalGeneration(config)
    return model.eval()


def saved(model, path):
    from safetensors.torch import load_file

    model.save_pretrained(path)
    state = {}
    for file in glob.glob(f"{path}/*.safetensors"):
        state.update(load_file(file))
    return state


def fused_names(unpatched_keys):
    """The unpatched save's names with each per-expert group replaced by the fused tensors."""
    names = {k for k in unpatched_keys if not PER_EXPERT.search(k)}
    for key in unpatched_keys:
        match = PER_EXPERT.search(key)
        if match:
            prefix = key[:match.start()]
            names |= {f"{prefix}.mlp.experts.gate_up_proj", f"{prefix}.mlp.experts.down_proj"}
    return names


def own_tensor(model, saved_name):
    """The model parameter a saved fused tensor comes from (the save may add a prefix)."""
    params = model.state_dict()
    matches = [name for name in params if saved_name.endswith(name.split("model.", 1)[-1])]
    return params[max(matches, key=len)]


def assert_equal_state(model, other):
    import torch

    mine, theirs = model.state_dict(), other.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.requires(transformers=AFFECTED)
@pytest.mark.parametrize("kind", ["text", "vl"])
def test_saved_experts_are_fused_and_load_back_bitwise(kind, tmp_path):
    import torch
    import transformers

    model = build(kind)
    unpatched = saved(model, tmp_path / "unpatched")
    per_expert = [k for k in unpatched if PER_EXPERT.search(k)]
    assert len(per_expert) == 2 * 3 * TEXT["num_experts"] and not any(FUSED.search(k) for k in unpatched)

    with compat_patches.patched(NAME):
        assert compat_patches.report()[NAME].status == "applied"
        patched = saved(model, tmp_path / "patched")
    assert set(patched) == fused_names(unpatched)
    for key, tensor in patched.items():
        if FUSED.search(key):
            assert torch.equal(tensor, own_tensor(model, key))
        else:
            assert torch.equal(tensor, unpatched[key])
    assert_equal_state(model, type(model).from_pretrained(tmp_path / "patched"))
    # the unpatched file still loads, patched or not: loading keeps the per-expert converters
    with compat_patches.patched(NAME):
        assert_equal_state(model, type(model).from_pretrained(tmp_path / "unpatched"))
    assert transformers.modeling_utils.revert_weight_conversion.__module__ == "transformers.core_model_loading"


@pytest.mark.requires(transformers=AFFECTED)
def test_weight_sync_state_dict_is_the_fused_parameters_zero_copy():
    """revert_weight_conversion as a trainer calls it before a vLLM broadcast."""
    from transformers.core_model_loading import revert_weight_conversion

    import transformers.modeling_utils as modeling_utils

    model = build("vl")
    unpatched = revert_weight_conversion(model, dict(model.state_dict()))
    assert any(PER_EXPERT.search(k) for k in unpatched)
    with compat_patches.patched(NAME):
        reverted = modeling_utils.revert_weight_conversion(model, dict(model.state_dict()))
    # every other name as the release gives it (5.2 - 5.5 rename a model built in code: not ours)
    assert set(reverted) == fused_names(unpatched)
    for name, tensor in reverted.items():
        own = own_tensor(model, name) if FUSED.search(name) else unpatched[name]
        assert tensor.data_ptr() == own.data_ptr() and tensor.shape == own.shape
    assert "_weight_conversions" not in model.__dict__


@pytest.mark.requires(transformers=AFFECTED)
def test_a_loaded_model_keeps_its_own_conversions(tmp_path):
    """from_pretrained attaches _weight_conversions: the save lends a list and puts the same one back."""
    model = build("vl")
    saved(model, tmp_path / "unpatched")
    loaded = type(model).from_pretrained(tmp_path / "unpatched")
    conversions = loaded.__dict__["_weight_conversions"]
    before = list(conversions)
    with compat_patches.patched(NAME):
        state = saved(loaded, tmp_path / "again")
    assert loaded.__dict__["_weight_conversions"] is conversions and conversions == before
    assert not any(PER_EXPERT.search(k) for k in state) and sum(bool(FUSED.search(k)) for k in state) == 4


@pytest.mark.requires(transformers=AFFECTED)
def test_the_lent_list_is_put_back_when_the_save_raises():
    import transformers.modeling_utils as modeling_utils

    model = build("text")
    with compat_patches.patched(NAME):
        wrapper = modeling_utils.revert_weight_conversion
        with pytest.raises(AttributeError):
            wrapper(model, None)  # the release's own error for a state dict that is not one
    assert "_weight_conversions" not in model.__dict__


@pytest.mark.requires(transformers=">=5.2.0")
def test_other_moe_models_save_exactly_as_unpatched(tmp_path):
    """Qwen3-MoE checkpoints are per-expert on the hub: their converters stay."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         moe_intermediate_size=8, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=1, head_dim=8, num_experts=4, num_experts_per_tok=2)
    model = transformers.Qwen3MoeForCausalLM(config).eval()
    unpatched = saved(model, tmp_path / "unpatched")
    with compat_patches.patched(NAME):
        patched = saved(model, tmp_path / "patched")
    assert patched.keys() == unpatched.keys() and any(PER_EXPERT.search(k) for k in patched)
    assert all(torch.equal(patched[k], unpatched[k]) for k in patched)


@pytest.mark.requires(transformers=NOT_AFFECTED)
def test_releases_without_the_converters_report_not_needed(tmp_path):
    import transformers

    model = build("text")
    with compat_patches.patched(NAME):
        entry = compat_patches.report()[NAME]
        assert entry.status == "not-needed", entry
        assert transformers.modeling_utils.revert_weight_conversion.__module__ == "transformers.core_model_loading"
        state = saved(model, tmp_path)
    assert not any(PER_EXPERT.search(k) for k in state) and sum(bool(FUSED.search(k)) for k in state) == 4


@pytest.mark.requires(transformers=AFFECTED)
def test_revert_restores_the_release_functions():
    import transformers.core_model_loading as loading
    import transformers.modeling_utils as modeling_utils

    originals = loading.revert_weight_conversion, modeling_utils.revert_weight_conversion
    assert originals[0] is originals[1]
    compat_patches.apply_all(only=[NAME])
    try:
        assert loading.revert_weight_conversion is originals[0]
        assert modeling_utils.revert_weight_conversion is not originals[1]
    finally:
        compat_patches.revert_all()
    assert (loading.revert_weight_conversion, modeling_utils.revert_weight_conversion) == originals


def test_gate():
    from compat_patches.core.versions import in_range

    assert [in_range(v, AFFECTED) for v in ("5.1.0", "5.2.0", "5.5.1", "5.5.2", "5.6.1", "5.6.2", "5.25.0")] == \
        [False, True, True, False, False, True, True]
