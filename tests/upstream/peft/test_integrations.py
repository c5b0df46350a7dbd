# Copyright 2024-present the HuggingFace Inc. team.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

# ---------------------------------------------------------------------------------------------------
# Copied for compat_patches (records "peft-moe-regex-targets" and "peft-shared-expert-targets") from
#   repository: https://github.com/huggingface/peft
#   file:       tests/test_integrations.py, class TestTransformersV5 and its fixture `_transformers_moe_patch`
#   release:    peft 0.21.2 (sdist peft-0.21.2.tar.gz from PyPI)
# The regex tests came with PEFT PR 3232 (first released in 0.20.0), the fix of the 0.19 crash on a regex
# target_modules (set of characters); on peft 0.19.x they fail without a patch and must pass with it
# (`upstream_regression`; UPSTREAM_HAS_FIX: from 0.20.0 they pass without a patch as well). The rest are
# the cases around them: PEFT's own behaviour, which both records must keep (lists, "all-linear",
# v5-native target_parameters, partial fusion raising PEFT's ValueError with PEFT's wording).
# Test bodies are verbatim. Adapted, and why:
#   * offline: `hub_online_once` is a no-op and `AutoModelForCausalLM.from_pretrained(model_id)` builds a
#     tiny random stand-in from a config (`_STAND_INS` below, same architecture as the hub checkpoint);
#     `.to(device)` stays. Not copied: the four tests that load PEFT's v4 adapters from the hub
#     (mixtral-pre-v5-lora, qwen3-moe-pre-v5-lora) and compare against logits of those checkpoints, and
#     `test_qwen2_5_vl_works` (a multimodal checkpoint): they need the real weights.
#   * `torch_device` is "cpu" (`infer_device` dropped).
#   * marks only: `upstream_regression` on PEFT PR 3232's tests (the regex case of the partial-fusion test
#     through pytest.param); `skipif` on the save/load round trip for peft 0.19.x, which cannot load a
#     fused-MoE adapter on transformers 5.17 with or without a patch (TypeError in build_peft_weight_mapping).
#   * the [patched] mode applies both PEFT records (tests/upstream/peft/conftest.py: ALSO_PATCHED), as
#     `apply_all()` would: the regex tests exercise peft-moe-regex-targets, the list and "all-linear"
#     tests peft-shared-expert-targets.
#   * `PATCH`, `ALSO_PATCHED`, `UPSTREAM_HAS_FIX` are read by tests/upstream/conftest.py and
#     tests/upstream/peft/conftest.py.
# ---------------------------------------------------------------------------------------------------

import contextlib
import functools
import inspect
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import packaging.version  # noqa: E402
from torch import nn  # noqa: E402, F401

from compat_patches.core.versions import in_range, installed_version  # noqa: E402

PATCH = "peft-moe-regex-targets"
ALSO_PATCHED = ("peft-shared-expert-targets",)
UPSTREAM_HAS_FIX = {"peft": ">=0.20.0.dev0"}
UNPATCHED_RAISES = (AssertionError, ValueError)  # peft 0.19: the regex becomes a set of characters -> ValueError
_PEFT_LOADS_MOE_ADAPTERS = in_range(installed_version("peft"), ">=0.20.0.dev0")

if not in_range(installed_version("peft"), ">=0.19.0.dev0"):
    pytest.skip("PEFT's Transformers-5 conversion (and these tests) start at 0.19", allow_module_level=True)

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners import lora  # noqa: E402


def _tiny_qwen3_moe():
    torch.manual_seed(0)
    return transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
        decoder_sparse_step=1, mlp_only_layers=[]))


def _tiny_mixtral():
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2))


_STAND_INS = {
    "trl-internal-testing/tiny-Qwen3MoeForCausalLM": _tiny_qwen3_moe,
    "hf-internal-testing/Mixtral-tiny": _tiny_mixtral,
}


class AutoModelForCausalLM:
    """Offline stand-in: the same architecture as the hub checkpoint, tiny, random, built from a config."""

    @staticmethod
    def from_pretrained(model_id):
        return _STAND_INS[model_id]().eval()


def hub_online_once(model_id):
    return contextlib.nullcontext()


def infer_device():
    return "cpu"




# TODO Remove this once patch_moe_parameter_targeting is removed from Transformers
@pytest.fixture(params=[False, True], ids=["without_transformers_moe_patch", "with_transformers_moe_patch"])
def _transformers_moe_patch(request):
    """Parametrize tests over the MoE parameter-targeting patch being active/inactive.

    The transformers patch `patch_moe_parameter_targeting` could hide a bug in PEFT when it comes to detecting the
    correct in_features/out_features of a 3-dim MoE parameter. The patch is applied by transformers when their
    `load_adapter` method is being called. Therefore, the order in which the tests were executed could hide or surface
    the bug.

    With this fixture, we ensure that each test is run twice, once without and once with the patch. This should mirror
    real world usage, where the patch may or may not be active. At fixture exit, the patch is always removed.

    For details, see discussion in #3165

    """
    try:
        from transformers.integrations.peft import patch_moe_parameter_targeting
    except (ImportError, AttributeError):
        patch_moe_parameter_targeting = None

    should_patch = request.param

    if should_patch and patch_moe_parameter_targeting is None:
        pytest.skip(
            "Transformers patch_moe_parameter_targeting no longer exists; skipping the 'patched' test variant."
        )

    is_patched = hasattr(lora.layer.ParamWrapper.update_layer, "__wrapped__")
    orig_update_layer = inspect.unwrap(lora.layer.ParamWrapper.update_layer)

    def new_update_layer(layer, *args, **kwargs):
        # this is copied 1:1 from transformers:
        # https://github.com/huggingface/transformers/blob/bc7ee236fca35e771b6b393178a192add1469243/src/transformers/integrations/peft.py#L394-L401
        did_swap = getattr(layer, "_did_swap_in_out_features", False)
        if not did_swap and layer.parameter_name in ("down_proj", "gate_up_proj"):
            tmp_in_features = layer.in_features
            layer.in_features = layer.out_features
            layer.out_features = tmp_in_features
            layer._did_swap_in_out_features = True
        return orig_update_layer(layer, *args, **kwargs)

    # 4 cases:
    # should_patch | is_patched
    #         true |       true
    #         true |      false
    #        false |       true
    #        false |      false

    if not should_patch and not is_patched:
        yield
        return

    if not should_patch and is_patched:
        lora.layer.ParamWrapper.update_layer = orig_update_layer
        yield
        return

    if should_patch and is_patched:
        try:
            yield
        finally:
            lora.layer.ParamWrapper.update_layer = orig_update_layer
        return

    if should_patch and not is_patched:
        try:
            lora.layer.ParamWrapper.update_layer = functools.wraps(lora.layer.ParamWrapper.update_layer)(
                new_update_layer
            )
            yield
        finally:
            lora.layer.ParamWrapper.update_layer = orig_update_layer
        return
    # this is unreachable


@pytest.mark.skipif(
    packaging.version.parse(transformers.__version__) < packaging.version.parse("5.4.0"),
    reason="PEFT weight conversion is fixed in transformers 5.4.0",
)
@pytest.mark.usefixtures("_transformers_moe_patch")  # TODO remove once patch_moe_parameter_targeting is removed
class TestTransformersV5:
    """Unit tests intended to test proper working of PEFT with Transformers v5"""

    torch_device = infer_device()

    @pytest.fixture
    def expected_logits(self):
        # original logits were:
        # tensor([[[ 0.2676,  0.3870,  0.2956,  ...,  0.4624,  0.1966,  0.2539],
        #          [-0.6706, -0.0969, -0.6240,  ..., -0.0201,  0.7099, -0.3099],
        #          [ 0.0663,  0.1653,  0.7189,  ...,  0.5905,  0.0649,  0.5839],
        #          ...,
        #          [-0.2712, -0.6451, -0.0219,  ..., -0.4344,  0.5471, -0.9355],
        #          [-0.3607,  0.4526,  0.2750,  ...,  0.1082,  0.7179,  0.8487],
        #          [ 0.5826, -0.1407, -0.3131,  ...,  0.1026,  0.6878, -0.3382]]],
        #        device='cuda:0')
        expected_logits_0_to_3 = torch.Tensor(
            [
                [0.2676, 0.3870, 0.2956],
                [-0.6706, -0.0969, -0.6240],
                [0.0663, 0.1653, 0.7189],
            ]
        ).to(device=self.torch_device, dtype=torch.float16)
        return expected_logits_0_to_3
    def test_add_lora_to_mixtral_v5_works(self):
        # Ensure that using LoRA directly with a v5 model still works
        inputs = torch.arange(10).view(1, -1).to(device=self.torch_device)
        model_id = "hf-internal-testing/Mixtral-tiny"

        with hub_online_once(model_id):
            model = AutoModelForCausalLM.from_pretrained(model_id).to(self.torch_device)
        with torch.inference_mode():
            output_base = model(inputs).logits

        lora_config = LoraConfig(
            target_modules=["q_proj", "k_proj", "v_proj"],
            target_parameters=["gate.weight", "experts.gate_up_proj", "experts.down_proj"],
        )
        model = get_peft_model(model, lora_config).eval()  # no error

        with torch.inference_mode():
            output_lora = model(inputs).logits
        # sanity check
        assert torch.allclose(output_base, output_lora)

        num_lora_layers = len([m for m in model.modules() if isinstance(m, lora.LoraLayer)])
        # sanity check
        expected_num_lora_layers = 12  # 2 layers with 6 lora layers each
        assert num_lora_layers == expected_num_lora_layers



    @pytest.mark.parametrize(
        "target_modules",
        [["up_proj", "down_proj", "score"],
         pytest.param(r".*\.(up_proj|down_proj)", marks=pytest.mark.upstream_regression)],  # compat_patches: mark
        ids=["list", "regex"],
    )
    def test_qwen3_moe_partial_fusion_raises(self, target_modules):
        # https://github.com/huggingface/trl/issues/5428
        # Targeting up_proj but not gate_proj must raise -- they are fused into gate_up_proj. Covers the list and regex
        # paths and guards the error-message handling. See `test_qwen3_moe_works` for a valid config.
        model_id = "trl-internal-testing/tiny-Qwen3MoeForCausalLM"
        with hub_online_once(model_id):
            model = AutoModelForCausalLM.from_pretrained(model_id)
            msg = re.escape(
                "Cannot convert PEFT target(s) up_proj without also targeting gate_proj because they are fused into "
                "gate_up_proj."
            )
            with pytest.raises(ValueError, match=msg):
                get_peft_model(model, LoraConfig(target_modules=target_modules))

    def test_qwen3_moe_works(self):
        # https://github.com/huggingface/trl/issues/5428
        # When correctly targeting both up and gate projection, there should be no error (see previous test)
        model_id = "trl-internal-testing/tiny-Qwen3MoeForCausalLM"
        with hub_online_once(model_id):
            model = AutoModelForCausalLM.from_pretrained(model_id)
            # target up_proj and gate_proj
            config = LoraConfig(target_modules=["gate_proj", "up_proj", "down_proj", "score"])
            get_peft_model(model, config)  # does not raise

    @pytest.mark.parametrize(
        "regex",
        [
            # the shape ms-swift's get_multimodal_target_regex emits: anchored, prefix lookahead
            r"^(model(?=\.).*\.(q_proj|k_proj|v_proj|gate_proj|up_proj|down_proj))$",
            # a plain "ends with one of these projections" pattern
            r".*\.(q_proj|k_proj|v_proj|gate_proj|up_proj|down_proj)",
        ],
    )
    @pytest.mark.upstream_regression  # compat_patches: PEFT PR 3232's tests
    def test_qwen3_moe_regex_target_modules_works(self, regex):
        # Regression test for https://github.com/huggingface/peft/issues/3229: the conversion used to `set()` the regex
        # string, splitting it into characters. It is now resolved to concrete names against the model.
        model_id = "trl-internal-testing/tiny-Qwen3MoeForCausalLM"
        with hub_online_once(model_id):
            model = AutoModelForCausalLM.from_pretrained(model_id)
            peft_model = get_peft_model(model, LoraConfig(target_modules=regex))  # does not raise

        config = peft_model.peft_config["default"]
        # non-fused targets stay in target_modules; fused experts move to target_parameters (rank/alpha doubled for the
        # 2-way gate_up_proj). The regex does not name the router, so `gate.weight` is *not* pulled in (contrast
        # `test_qwen3_moe_all_linear_target_modules_works`, where "all-linear" does pull it in).
        assert config.target_modules == {"q_proj", "k_proj", "v_proj"}
        assert set(config.target_parameters) == {"gate_up_proj", "down_proj"}
        assert config.rank_pattern == {r".*\.gate_up_proj": config.r * 2}
        assert config.alpha_pattern == {r".*\.gate_up_proj": config.lora_alpha * 2}
        # the experts are actually adapted, not just recorded in the config
        assert any("experts" in name for name, _ in peft_model.named_modules() if name.endswith("lora_A.default"))

    @pytest.mark.upstream_regression  # compat_patches: PEFT PR 3232's tests
    def test_qwen3_moe_single_attention_regex_target_modules_works(self):
        # A regex resolving to a single attention projection (no experts) converts cleanly: nothing moves to parameters.
        model_id = "trl-internal-testing/tiny-Qwen3MoeForCausalLM"
        with hub_online_once(model_id):
            model = AutoModelForCausalLM.from_pretrained(model_id)
            peft_model = get_peft_model(model, LoraConfig(target_modules=r".*\.q_proj"))  # does not raise

        config = peft_model.peft_config["default"]
        assert config.target_modules == {"q_proj"}
        assert not config.target_parameters
        assert not config.rank_pattern
        adapted = {
            name.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1]
            for name, _ in peft_model.named_modules()
            if name.endswith("lora_A.default")
        }
        assert adapted == {"q_proj"}

    @pytest.mark.upstream_regression  # compat_patches: PEFT PR 3232's tests
    def test_qwen3_moe_all_linear_target_modules_works(self):
        # "all-linear" is matched by module type, not as a regex. On v4 the experts *and* the router `gate` were
        # nn.Linear, so "all-linear" targeted them; after fusion the experts are stacked parameters and the router is a
        # custom module, so "all-linear" must still carry all of them into target_parameters (gate -> gate.weight).
        model_id = "trl-internal-testing/tiny-Qwen3MoeForCausalLM"
        with hub_online_once(model_id):
            model = AutoModelForCausalLM.from_pretrained(model_id)
            peft_model = get_peft_model(model, LoraConfig(target_modules="all-linear"))  # does not raise

        config = peft_model.peft_config["default"]
        adapted = {
            name.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1]
            for name, _ in peft_model.named_modules()
            if name.endswith("lora_A.default")
        }
        # attention projections resolved as modules; experts and router (linear in v4) carried into target_parameters
        assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= adapted
        # the router `gate` is adapted too -- it is a parameter (`gate.weight`) on v5, so unlike the regex case it has
        # to be added by name; this is exactly what distinguishes "all-linear" from a regex that omits the router
        assert set(config.target_parameters) == {"gate.weight", "gate_up_proj", "down_proj"}
        assert config.rank_pattern == {r".*\.gate_up_proj": config.r * 2}
        assert config.alpha_pattern == {r".*\.gate_up_proj": config.lora_alpha * 2}
        # the experts and the router gate are actually adapted, not just recorded in the config
        assert any("experts" in name for name, _ in peft_model.named_modules() if name.endswith("lora_A.default"))
        assert any(name.endswith(".mlp.gate.lora_A.default") for name, _ in peft_model.named_modules())

    @pytest.mark.skipif(not _PEFT_LOADS_MOE_ADAPTERS, reason="compat_patches: peft 0.19.x cannot load a fused-MoE "
                        "adapter on transformers 5.17 (TypeError in build_peft_weight_mapping), with or without a patch")
    @pytest.mark.upstream_regression  # compat_patches: PEFT PR 3232's tests
    def test_qwen3_moe_regex_target_modules_save_load_roundtrip(self, tmp_path):
        # Save/reload a regex-targeted adapter. Reload re-runs the conversion on the already-converted config, so this
        # also guards idempotency.
        inputs = torch.arange(10).view(1, -1).to(self.torch_device)
        model_id = "trl-internal-testing/tiny-Qwen3MoeForCausalLM"
        regex = r"^(model(?=\.).*\.(q_proj|k_proj|v_proj|gate_proj|up_proj|down_proj))$"

        with hub_online_once(model_id):
            model = AutoModelForCausalLM.from_pretrained(model_id).to(self.torch_device)
            # init_lora_weights=False gives the adapter non-zero (random) weights so it actually changes the output
            peft_model = get_peft_model(model, LoraConfig(target_modules=regex, init_lora_weights=False))
            with torch.inference_mode():
                logits_before = peft_model(inputs).logits
            peft_model.save_pretrained(tmp_path)
            del model, peft_model

            model = AutoModelForCausalLM.from_pretrained(model_id).to(self.torch_device)
            reloaded = PeftModel.from_pretrained(model, tmp_path)
            with torch.inference_mode():
                logits_after = reloaded(inputs).logits

        assert torch.allclose(logits_before, logits_after, atol=1e-5, rtol=1e-5)
        # reload re-runs the conversion on the already-resolved config -- idempotent
        reloaded_config = reloaded.peft_config["default"]
        assert reloaded_config.target_modules == {"q_proj", "k_proj", "v_proj"}
        assert {"gate_up_proj", "down_proj"} <= set(reloaded_config.target_parameters)
        assert reloaded_config.rank_pattern == {r".*\.gate_up_proj": reloaded_config.r * 2}
