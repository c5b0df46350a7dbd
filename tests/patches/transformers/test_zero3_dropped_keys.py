"""transformers-zero3-dropped-keys on the real transformers releases.

ZeRO-3's `_apply_weight_conversions_to_state_dict` is called as `_load_state_dict_into_zero3_model`
calls it (model, a copy of the checkpoint, the model's conversion mapping), on tiny Qwen3.5 models
built from configs. The oracle is the normal load of the same checkpoint through from_pretrained.
Unpatched, on an affected release, a VL checkpoint in the hub layout loses every language-model
key; patched, the result names every parameter with the very tensor objects of the checkpoint and
equals the normal load bitwise; models the bug never touched get exactly the unpatched result.
"""

import glob

import pytest

import compat_patches
from compat_patches.patches.transformers import zero3_dropped_keys as mod

from .test_qwen3_5_moe_fused_save import TEXT as MOE_TEXT
from .test_qwen3_5_moe_fused_save import VISION

NAME = "transformers-zero3-dropped-keys"
QWEN3_5_AFFECTED = ">=5.4.0,<5.6.0.dev0"  # the qwen3_5_text rename (the record's range is both)
MOE_AFFECTED = ">=5.0.0,<5.1.0.dev0"  # 5.0.0's function drops the plain keys of a model with converters
MOE_RAISES = ">=5.1.0,<5.2.0.dev0"  # 5.1.0's unpacks WeightConverter.convert's dict as a pair
pytestmark = pytest.mark.requires(torch=">=2", transformers=">=5.0.0")
TEXT = {k: v for k, v in MOE_TEXT.items()
        if k not in ("moe_intermediate_size", "shared_expert_intermediate_size", "num_experts", "num_experts_per_tok")}
KINDS = ("vl", "moe-vl", "text", "qwen2-moe")
DROPPED = {"vl": 27, "moe-vl": 35}  # language-model keys of the tiny models, measured on 5.4.0 - 5.5.4


def build(kind):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if kind == "vl":
        return tf.Qwen3_5ForConditionalGeneration(tf.Qwen3_5Config(text_config=TEXT, vision_config=VISION))
    if kind == "moe-vl":
        return tf.Qwen3_5MoeForConditionalGeneration(tf.Qwen3_5MoeConfig(text_config=MOE_TEXT, vision_config=VISION))
    if kind == "text":
        return tf.Qwen3_5ForCausalLM(tf.Qwen3_5TextConfig(**TEXT))
    return tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, moe_intermediate_size=8, shared_expert_intermediate_size=8,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2))


def hub_checkpoint(kind, tmp_path):
    """The model's own names (the hub layout of these models), written as a checkpoint directory."""
    from safetensors.torch import save_file

    model = build(kind)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    model.config.save_pretrained(tmp_path)
    save_file(state, f"{tmp_path}/model.safetensors", metadata={"format": "pt"})
    return model, state


def saved_checkpoint(kind, tmp_path):
    from safetensors.torch import load_file

    model = build(kind)
    model.save_pretrained(tmp_path)
    state = {}
    for file in glob.glob(f"{tmp_path}/*.safetensors"):
        state.update(load_file(file))
    return model, state


def zero3_convert(kind, state):
    """What _load_state_dict_into_zero3_model does before it gathers parameters."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.integrations import deepspeed

    model = build(kind)
    return model, deepspeed._apply_weight_conversions_to_state_dict(model, dict(state),
                                                                    get_model_conversion_mapping(model))


def normal_load(model, path):
    return type(model).from_pretrained(path).state_dict()


def assert_loads_like_the_normal_path(kind, state, path):
    import torch

    model, converted = zero3_convert(kind, state)
    expected = normal_load(model, path)
    assert set(converted) == set(model.state_dict()) == set(expected)
    assert all(torch.equal(converted[k], expected[k]) for k in converted)
    return converted


@pytest.mark.requires(transformers=QWEN3_5_AFFECTED)
@pytest.mark.parametrize("kind", ["vl", "moe-vl"])
def test_affected_release_drops_the_language_model_unpatched_and_keeps_it_patched(kind, tmp_path):
    model, state = hub_checkpoint(kind, tmp_path)
    _, unpatched = zero3_convert(kind, state)
    lost = set(model.state_dict()) - set(unpatched)
    assert len(lost) == DROPPED[kind] and all(".language_model." in k for k in lost)
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        converted = assert_loads_like_the_normal_path(kind, state, tmp_path)
    assert all(converted[k] is state[k] for k in lost)  # the checkpoint's tensors, not copies


@pytest.mark.requires(transformers=QWEN3_5_AFFECTED)
@pytest.mark.parametrize("kind", KINDS)
def test_what_save_pretrained_writes_loads_as_the_normal_load(kind, tmp_path):
    """5.5.4 drops the saved layout too; the other releases keep it, patched or not."""
    _, state = saved_checkpoint(kind, tmp_path)
    with compat_patches.patched(NAME):
        assert_loads_like_the_normal_path(kind, state, tmp_path)


@pytest.mark.requires(transformers=QWEN3_5_AFFECTED)
@pytest.mark.parametrize("kind", ["text", "qwen2-moe"])
def test_models_the_bug_never_touched_get_the_unpatched_result(kind, tmp_path):
    _, state = saved_checkpoint(kind, tmp_path)
    _, unpatched = zero3_convert(kind, state)
    with compat_patches.patched(NAME):
        _, patched = zero3_convert(kind, state)
    assert list(patched) == list(unpatched)
    assert all(patched[k] is unpatched[k] or patched[k].equal(unpatched[k]) for k in patched)


@pytest.mark.requires(transformers=QWEN3_5_AFFECTED)
def test_called_by_keyword(tmp_path):
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.integrations import deepspeed

    model, state = hub_checkpoint("vl", tmp_path)
    with compat_patches.patched(NAME):
        converted = deepspeed._apply_weight_conversions_to_state_dict(
            model=model, state_dict=dict(state), weight_mapping=get_model_conversion_mapping(model))
    assert set(converted) == set(model.state_dict())


@pytest.mark.requires(transformers=">=5.6.0")
@pytest.mark.parametrize("kind", ["vl", "moe-vl"])
def test_fixed_release_stays_out_and_keeps_every_key(kind, tmp_path):
    _, state = hub_checkpoint(kind, tmp_path)
    report = compat_patches.apply_all(only=[NAME])
    try:
        assert report[NAME].status in ("not-needed", "not-installed") or "out of range" in report[NAME].reason
        assert NAME not in compat_patches._default_manager().active_names()
        model, converted = zero3_convert(kind, state)
        if not isinstance(converted, dict):  # a generator from 5.23.0 on
            merged = {}
            for part in converted:
                merged.update(part)
            converted = merged
        assert set(converted) == set(model.state_dict())
    finally:
        compat_patches.revert_all()


@pytest.mark.requires(transformers=MOE_AFFECTED)
@pytest.mark.parametrize("layout, dropped", [("hub", 35), ("saved", 31)])
def test_5_0_0_drops_the_plain_keys_of_a_moe_model_unpatched_and_keeps_them_patched(layout, dropped, tmp_path):
    """Fused (hub) Qwen2-MoE: every key lost; per-expert (what 5.0.0 saves): all but the converted experts."""
    model, state = (hub_checkpoint if layout == "hub" else saved_checkpoint)("qwen2-moe", tmp_path)
    _, unpatched = zero3_convert("qwen2-moe", state)
    assert len(set(model.state_dict()) - set(unpatched)) == dropped
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        assert_loads_like_the_normal_path("qwen2-moe", state, tmp_path)


@pytest.mark.requires(transformers=MOE_RAISES)
def test_5_1_raises_on_a_per_expert_moe_checkpoint_unpatched_and_loads_it_patched(tmp_path):
    model, state = saved_checkpoint("qwen2-moe", tmp_path)  # per-expert: the hub layout of real MoE models
    with pytest.raises(RuntimeError, match="Failed to apply weight conversion"):
        zero3_convert("qwen2-moe", state)
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        converted = assert_loads_like_the_normal_path("qwen2-moe", state, tmp_path)
    plain = [k for k in converted if ".mlp.experts." not in k]
    assert len(plain) == len(converted) - 4 and all(converted[k] is state[k] for k in plain)


@pytest.mark.requires(transformers=MOE_RAISES)
def test_5_1_a_checkpoint_with_nothing_to_convert_gets_the_unpatched_result(tmp_path):
    _, state = hub_checkpoint("qwen2-moe", tmp_path)  # already fused
    _, unpatched = zero3_convert("qwen2-moe", state)
    with compat_patches.patched(NAME):
        _, patched = zero3_convert("qwen2-moe", state)
    assert list(patched) == list(unpatched) and all(patched[k] is unpatched[k] for k in patched)


@pytest.mark.requires(transformers=">=5.2.0,<5.4.0")
def test_the_5_1_conversion_is_the_5_2_release_s_own(tmp_path):
    """The 5.1 wrapper around 5.2.0's function (the fix): the release's own result, key for key."""
    import torch

    _, state = saved_checkpoint("qwen2-moe", tmp_path)
    _, release = zero3_convert("qwen2-moe", state)
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.integrations import deepspeed

    model = build("qwen2-moe")
    ours = mod._convert_layers_as_5_2(deepspeed._apply_weight_conversions_to_state_dict, None,
                                      (model, dict(state), get_model_conversion_mapping(model)), {})
    assert list(ours) == list(release) and all(torch.equal(ours[k], release[k]) for k in ours)


@pytest.mark.requires(transformers=">=5.2.0,<5.4.0")
def test_releases_between_the_two_causes_are_out_of_range():
    assert not compat_patches._default_manager().in_range(NAME)


def _zero3_from_pretrained(path, cls):
    """Unpatched and patched, each in a fresh process (deepspeed.init_distributed and HfDeepSpeedConfig
    are process-wide)."""
    import json
    import os
    import socket
    import subprocess
    import sys

    results = {}
    for mode in ("unpatched", "patched"):
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        child = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "_zero3_child.py"),
                                str(path), cls, mode], capture_output=True, text=True, timeout=300,
                               env={**os.environ, "MASTER_PORT": str(port)})
        assert child.returncode == 0, child.stderr[-3000:]
        results[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    return results["unpatched"], results["patched"]


@pytest.mark.requires(transformers=QWEN3_5_AFFECTED, deepspeed=">=0.15")
def test_a_real_zero3_from_pretrained(tmp_path):
    """DeepSpeed itself: ZeRO-3 partitions the parameters and loads through the function."""
    hub_checkpoint("vl", tmp_path)
    unpatched, patched = _zero3_from_pretrained(tmp_path, "Qwen3_5ForConditionalGeneration")
    assert unpatched["zero3"] and patched["zero3"] and patched["status"] == "applied"
    assert unpatched["differ"] and all(".language_model." in n for n in unpatched["differ"])  # random init
    assert patched["differ"] == [] and patched["params"] == 49


@pytest.mark.requires(transformers=">=5.0.0,<5.2.0.dev0", deepspeed=">=0.15")
def test_a_real_zero3_from_pretrained_of_a_per_expert_moe_checkpoint(tmp_path):
    """5.0.0 leaves all but the experts at random init, 5.1.0 raises; patched, both load it."""
    import transformers

    saved_checkpoint("qwen2-moe", tmp_path)
    unpatched, patched = _zero3_from_pretrained(tmp_path, "Qwen2MoeForCausalLM")
    if transformers.__version__.startswith("5.1."):
        assert "Failed to apply weight conversion" in unpatched["raised"]
    else:
        assert unpatched["zero3"] and unpatched["differ"] and not any(".experts." in n for n in unpatched["differ"])
    assert patched["status"] == "applied" and patched["zero3"] and patched["differ"] == []
    assert patched["params"] == 35


def test_the_record_range_is_the_three_measured_causes():
    from packaging.specifiers import SpecifierSet

    record = SpecifierSet(mod.PATCH.affected["transformers"], prereleases=True)
    causes = [SpecifierSet(spec, prereleases=True) for spec in (QWEN3_5_AFFECTED, MOE_AFFECTED, MOE_RAISES)]
    for version in ("5.0.0rc3", "5.0.0", "5.1.0", "5.2.0", "5.3.0", "5.4.0", "5.5.0", "5.5.4", "5.6.0", "5.25.0"):
        assert (version in record) == any(version in cause for cause in causes), version
