# Copyright 2023-present the HuggingFace Inc. team.
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
#   file:       tests/test_tuners_utils.py: REGEX_TEST_CASES with TestPeftCustomKwargs.test_regex_matching_valid,
#               and the classes TestTargetedModuleNames, TestTargetedParameterNames, TestExcludedModuleNames
#               (with the MLP they use)
#   release:    peft 0.21.2 (sdist peft-0.21.2.tar.gz from PyPI)
# PEFT's target-module tests: how target_modules / target_parameters / exclude_modules / layers_to_transform
# select modules, which both records keep (they resolve targets with PEFT's own matcher). No test here is an
# upstream regression test of either record's bug: all of them must pass in both modes, on every release
# that has them. Test bodies are verbatim. Adapted, and why:
#   * `@parameterized.expand(REGEX_TEST_CASES)` -> `@pytest.mark.parametrize(...)`, same cases (no
#     `parameterized` dependency); the one test is moved out of TestPeftCustomKwargs, whose other tests load
#     hub models, bitsandbytes and diffusers.
#   * offline: `hub_online_once` is a no-op and `AutoModelForCausalLM.from_pretrained(model_id)` builds a
#     tiny random stand-in from a config (Bloom and Llama, as the hub checkpoints are).
#   * the module runs on peft >= 0.21.2, the release it comes from: on older releases PEFT's own matcher
#     gives other answers for some layers_to_transform cases and lacks later fixes (measured on 0.19.1:
#     test_regex_matching_valid fails with and without the patch); these tests check PEFT, not the records.
#   * `PATCH`, `ALSO_PATCHED`: read by tests/upstream/conftest.py and tests/upstream/peft/conftest.py.
# ---------------------------------------------------------------------------------------------------

import contextlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from torch import nn  # noqa: E402

from compat_patches.core.versions import in_range, installed_version  # noqa: E402

PATCH = "peft-moe-regex-targets"
ALSO_PATCHED = ("peft-shared-expert-targets",)

if not in_range(installed_version("peft"), ">=0.21.2"):
    pytest.skip("PEFT 0.21.2's target-module tests check PEFT 0.21.2's matcher", allow_module_level=True)

from peft import IA3Config, LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.tuners_utils import check_target_module_exists  # noqa: E402



def _stand_in(model_id):
    torch.manual_seed(0)
    if model_id == "peft-internal-testing/tiny-random-BloomForCausalLM":
        return transformers.BloomForCausalLM(transformers.BloomConfig(
            vocab_size=64, hidden_size=32, n_layer=3, n_head=4))
    if model_id == "trl-internal-testing/tiny-random-LlamaForCausalLM":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2))
    raise KeyError(model_id)


class AutoModelForCausalLM:
    """Offline stand-in: the same architecture as the hub checkpoint, tiny, random, built from a config."""

    @staticmethod
    def from_pretrained(model_id):
        return _stand_in(model_id)


def hub_online_once(model_id):
    return contextlib.nullcontext()


from peft import NoMatchingPeftModuleError, PeftError  # noqa: E402


REGEX_TEST_CASES = [
    # tuple of
    # 1. key
    # 2. target_modules
    # 3. layers_to_transform
    # 4. layers_pattern
    # 5. expected result
    # some basic examples
    ("", [], None, None, False),
    ("", ["foo"], None, None, False),
    ("foo", [], None, None, False),
    ("foo", ["foo"], None, None, True),
    ("foo", ["bar"], None, None, False),
    ("foo", ["foo", "bar"], None, None, True),
    # with regex
    ("foo", "foo", None, None, True),
    ("foo", ".*oo", None, None, True),
    ("foo", "fo.*", None, None, True),
    ("foo", ".*bar.*", None, None, False),
    ("foobar", ".*oba.*", None, None, True),
    # with layers_to_transform
    ("foo.bar.1.baz", ["baz"], [1], ["bar"], True),
    ("foo.bar.1.baz", ["baz"], [0], ["bar"], False),
    ("foo.bar.1.baz", ["baz"], [2], ["bar"], False),
    ("foo.bar.10.baz", ["baz"], [0], ["bar"], False),
    ("foo.bar.10.baz", ["baz"], [1], ["bar"], False),
    ("foo.bar.1.baz", ["baz"], [0, 1, 2], ["bar"], True),
    ("foo.bar.1.baz", ["baz", "spam"], [1], ["bar"], True),
    ("foo.bar.1.baz", ["baz", "spam"], [0, 1, 2], ["bar"], True),
    ("bar.1.baz", ["baz"], [0, 2], ["bar"], False),
    ("bar.1.baz", ["baz"], [0, 1, 2], ["foo"], False),
    ("bar.1.baz", ["baz"], [0, 2], ["bar"], False),
    ("bar.1.baz", ["baz"], [0, 1, 2], ["bar"], True),
    # empty layers_pattern
    ("foo.whatever.1.baz", ["baz"], [1], [], True),
    ("foo.whatever.1.baz", ["baz"], [0], [], False),
    ("foo.whatever.1.baz", ["baz"], [1], "", True),
    ("foo.whatever.1.baz", ["baz"], [0], "", False),
    ("foo.whatever.1.baz", ["baz"], [1], None, True),
    ("foo.whatever.1.baz", ["baz"], [0], None, False),
    # some realistic examples: transformers model
    ("transformer.h.1.attn.attention.q_proj.foo", ["q_proj"], None, [], False),
    ("transformer.h.1.attn.attention.q_proj", [], None, [], False),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj"], None, [], True),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj", "v_proj"], None, [], True),
    ("transformer.h.1.attn.attention.resid_dropout", ["q_proj", "v_proj"], None, [], False),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj"], [1], ["h"], True),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj"], [0], ["h"], False),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj"], [2], ["h"], False),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj"], [0, 1, 2], ["h"], True),
    ("transformer.h.1.attn.attention.q_proj", ["q_proj", "v_proj"], [0, 1, 2], ["h"], True),
    ("foo.bar.q_proj", ["q_proj"], None, [], True),
    ("foo.bar.1.baz", ["baz"], [1], ["foo"], False),
    ("foo.bar.001.baz", ["baz"], [1], ["bar"], True),
    ("foo.bar.1.spam.2.baz", ["baz"], [1], ["bar"], True),
    ("foo.bar.2.spam.1.baz", ["baz"], [1], ["bar"], False),
    # same as previous 3 but without prefix before 'bar'; used not to match, but now matches
    ("bar.001.baz", ["baz"], [1], ["bar"], True),
    ("bar.1.spam.2.baz", ["baz"], [1], ["bar"], True),
    ("bar.2.spam.1.baz", ["baz"], [1], ["bar"], False),
    # other corner cases. For ex, below is a case where layers_pattern
    # is one of the target nn.modules
    ("foo.bar.1.baz", ["baz"], [1], ["baz"], False),
    # some realistic examples: module using nn.Sequential, without and with prefix before 'blocks'
    ("blocks.1.weight", ["weight"], [1], ["blocks"], True),
    ("blocks.1.bias", ["weight"], [1], ["blocks"], False),
    ("mlp.blocks.1.weight", ["weight"], [1], ["blocks"], True),
    ("mlp.blocks.1.bias", ["weight"], [1], ["blocks"], False),
    # multiple indices could potential match, we want the first one to count
    ("model.layers.1.layers.0.up_proj", ["up_proj"], [1], ["layers"], True),
    ("model.layers.1.layers.0.up_proj", ["up_proj"], [0], ["layers"], False),
    ("layers.1.layers.0.up_proj", ["up_proj"], [1], ["layers"], True),
    ("layers.1.layers.0.up_proj", ["up_proj"], [0], ["layers"], False),
    # if the user specifies it, we can also target the later index with layers_to_transform
    ("model.layers.1.layers.0.up_proj", ["up_proj"], [1], [r"\d+\.layers"], False),
    ("model.layers.1.layers.0.up_proj", ["up_proj"], [0], [r"\d+\.layers"], True),
    ("layers.1.layers.0.up_proj", ["up_proj"], [1], [r"\d+\.layers"], False),
    ("layers.1.layers.0.up_proj", ["up_proj"], [0], [r"\d+\.layers"], True),
]


@pytest.mark.parametrize(("key", "target_modules", "layers_to_transform", "layers_pattern", "expected_result"),
                         REGEX_TEST_CASES)
def test_regex_matching_valid(key, target_modules, layers_to_transform, layers_pattern, expected_result):
    # We use a LoRA Config for testing, but the regex matching function is common for all BaseTuner subclasses.
    # example model_id for config initialization. key is matched only against the target_modules given, so this can be any model
    model_id = "peft-internal-testing/tiny-OPTForCausalLM-lora"
    config = LoraConfig(
        base_model_name_or_path=model_id,
        target_modules=target_modules,
        layers_pattern=layers_pattern,
        layers_to_transform=layers_to_transform,
    )
    actual_result = bool(check_target_module_exists(config, key))
    assert actual_result == expected_result


class MLP(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.lin0 = nn.Linear(10, 20, bias=bias)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2, bias=bias)
        self.sm = nn.LogSoftmax(dim=-1)


class TestTargetedModuleNames:
    """Check that the attribute targeted_module_names is correctly set.

    This checks LoRA and IA³, but this should be sufficient, testing all other tuners is not necessary.
    """

    def test_one_targeted_module_regex(self):
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_modules="lin0"))
        assert model.targeted_module_names == ["lin0"]

    def test_two_targeted_module_regex(self):
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_modules="lin.*"))
        assert model.targeted_module_names == ["lin0", "lin1"]

    def test_one_targeted_module_list(self):
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_modules=["lin0"]))
        assert model.targeted_module_names == ["lin0"]

    def test_two_targeted_module_list(self):
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_modules=["lin0", "lin1"]))
        assert model.targeted_module_names == ["lin0", "lin1"]

    def test_ia3_targeted_module_regex(self):
        model = MLP()
        model = get_peft_model(model, IA3Config(target_modules=".*lin.*", feedforward_modules=".*lin.*"))
        assert model.targeted_module_names == ["lin0", "lin1"]

    def test_ia3_targeted_module_list(self):
        model = MLP()
        model = get_peft_model(model, IA3Config(target_modules=["lin0", "lin1"], feedforward_modules=["lin0", "lin1"]))
        assert model.targeted_module_names == ["lin0", "lin1"]

    def test_realistic_example(self):
        model_id = "peft-internal-testing/tiny-random-BloomForCausalLM"
        with hub_online_once(model_id):
            model = AutoModelForCausalLM.from_pretrained(model_id)
        config = LoraConfig(task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
        expected = [
            f"transformer.h.{i}.self_attention.query_key_value" for i in range(len(model.base_model.transformer.h))
        ]
        assert model.targeted_module_names == expected

    @pytest.mark.parametrize("layers_pattern", [None, "layers", ["h", "layers"]])
    def test_layers_to_transform_filters_by_layer_not_expert_index(self, layers_pattern):
        # Test fix to issue #3016
        # The layer-index regex used a greedy ".*" prefix, so for MoE paths like
        # "model.layers.1.mlp.experts.0.up_proj" it captured the expert index instead of the layer
        # index, making layers_to_transform target the wrong modules.
        class ToyMoEBlock(nn.Module):
            def __init__(self):
                super().__init__()
                self.self_attn = nn.Module()
                self.self_attn.q_proj = nn.Linear(4, 4, bias=False)

                self.mlp = nn.Module()
                self.mlp.experts = nn.ModuleList([nn.Module() for _ in range(2)])
                for e in range(2):
                    self.mlp.experts[e].up_proj = nn.Linear(4, 4, bias=False)

        class ToyMoEModel(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = nn.Module()
                self.model.layers = nn.ModuleList([ToyMoEBlock() for _ in range(4)])

        config = LoraConfig(
            target_modules=["q_proj", "up_proj"],
            layers_pattern=layers_pattern,
            layers_to_transform=[1],
            r=2,
            lora_alpha=4,
        )
        model = get_peft_model(ToyMoEModel(), config)

        # only layer 1's modules should be targeted, both experts included.
        # Under the bug, layers.1.experts.0 was misread as layer 0 and dropped, and a
        # layers.2.experts.1 module could be misread as layer 1 and wrongly included.
        expected = {
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.mlp.experts.0.up_proj",
            "model.layers.1.mlp.experts.1.up_proj",
        }
        assert set(model.targeted_module_names) == expected


class TestTargetedParameterNames:
    """Check that the attribute targeted_parameter_names (via target_parameters) is correctly set.

    This is only implemented for LoRA. Regex matching is currently not implemented.
    """

    def test_one_targeted_parameters_list(self):
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_parameters=["lin0.weight"]))
        assert model.targeted_parameter_names == ["lin0.weight"]

    def test_two_targeted_parameters_list(self):
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_parameters=["lin0.weight", "lin1.weight"]))
        assert model.targeted_parameter_names == ["lin0.weight", "lin1.weight"]

    def test_realistic_example(self):
        model_id = "trl-internal-testing/tiny-random-LlamaForCausalLM"
        with hub_online_once(model_id):
            model = AutoModelForCausalLM.from_pretrained(model_id)
        config = LoraConfig(target_modules=[], task_type="CAUSAL_LM", target_parameters=["v_proj.weight"])
        model = get_peft_model(model, config)
        expected = [
            f"model.layers.{i}.self_attn.v_proj.weight" for i in range(len(model.base_model.model.model.layers))
        ]
        assert model.targeted_parameter_names == expected


class TestExcludedModuleNames:
    """Check that the attribute exclude_module is correctly set.

    This checks LoRA and IA³, but this should be sufficient, testing all other tuners is not necessary.
    """

    def test_two_excluded_module_regex(self):
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_modules=("lin.*"), exclude_modules="lin0"))
        assert model.targeted_module_names == ["lin1"]

    def test_two_excluded_module_list(self):
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_modules=["lin0", "lin1"], exclude_modules="lin0"))
        assert model.targeted_module_names == ["lin1"]

    def test_multiple_excluded_modules_list(self):
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_modules=["lin0", "lin1"], exclude_modules=["lin0"]))
        assert model.targeted_module_names == ["lin1"]

    def test_ia3_two_excluded_module_regex(self):
        model = MLP()
        model = get_peft_model(
            model, IA3Config(target_modules=".*lin.*", feedforward_modules=".*lin.*", exclude_modules="lin0")
        )
        assert model.targeted_module_names == ["lin1"]

    def test_ia3_multiple_excluded_modules_list(self):
        model = MLP()
        model = get_peft_model(
            model, IA3Config(target_modules=["lin0", "lin1"], feedforward_modules=".*lin.*", exclude_modules=["lin1"])
        )
        assert model.targeted_module_names == ["lin0"]

    def test_all_modules_excluded(self):
        model = MLP()
        with pytest.raises(ValueError, match="All modules were excluded"):
            get_peft_model(
                model,
                LoraConfig(
                    target_modules=["lin0", "lin1", "relu", "drop", "sm"],
                    exclude_modules=["lin0", "lin1", "relu", "drop", "sm"],
                ),
            )

    def test_no_modules_matched(self):
        model = MLP()
        with pytest.raises(ValueError, match="Target modules .* not found in the base model"):
            get_peft_model(model, LoraConfig(target_modules=["non_existent_module"]))

    def test_no_modules_matched_second_adapter(self):
        # A second adapter whose target_modules match nothing must raise just like the first adapter does
        # (test_no_modules_matched). The no-match check used to read targeted_module_names, which accumulates
        # across adapters, so once the first adapter matched a module the second was silently accepted.
        # See https://github.com/huggingface/peft/issues/3533.
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_modules=["lin0"]))
        with pytest.raises(NoMatchingPeftModuleError, match="Target modules .* not found in the base model"):
            model.add_adapter("other", LoraConfig(target_modules=["non_existent_module"]))

    def test_second_adapter_only_modules_to_save_raises(self):
        # A second adapter is held to the same standard as a first one: if its target_modules match nothing, it
        # raises even when modules_to_save matches.
        # See https://github.com/huggingface/peft/issues/3533.
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_modules=["lin0"]))
        with pytest.raises(NoMatchingPeftModuleError, match="No modules were targeted for adaptation"):
            model.add_adapter("other", LoraConfig(target_modules=["non_existent_module"], modules_to_save=["lin1"]))

    def test_no_matching_peft_module_error_hierarchy(self):
        # NoMatchingPeftModuleError stays a ValueError for backwards compatibility and a PeftError for interception
        assert issubclass(NoMatchingPeftModuleError, ValueError)
        assert issubclass(NoMatchingPeftModuleError, PeftError)

    def test_targeted_module_names_unique_across_adapters(self):
        # targeted_module_names records each module once, even when several adapters target the same module
        model = MLP()
        model = get_peft_model(model, LoraConfig(target_modules=["lin1"]))
        model.add_adapter("other", LoraConfig(target_modules=["lin0", "lin1"]))
        assert model.base_model.targeted_module_names == ["lin1", "lin0"]

    def test_some_modules_excluded_some_unmatched(self):
        model = MLP()
        with pytest.raises(ValueError, match="No modules were targeted for adaptation"):
            get_peft_model(model, LoraConfig(target_modules=["lin0", "non_existent_module"], exclude_modules=["lin0"]))

    def test_exclude_modules_not_used(self):
        model = MLP()
        with pytest.warns(UserWarning, match="You have passed exclude_modules=.* but no modules were excluded"):
            get_peft_model(model, LoraConfig(target_modules=["lin1"], exclude_modules=["non_existent_module"]))

    def test_realistic_example(self):
        model_id = "peft-internal-testing/tiny-random-BloomForCausalLM"
        with hub_online_once(model_id):
            model = AutoModelForCausalLM.from_pretrained(model_id)
        config = LoraConfig(task_type="CAUSAL_LM", exclude_modules="transformer.h.2.self_attention.query_key_value")
        model = get_peft_model(model, config)
        expected = [
            f"transformer.h.{i}.self_attention.query_key_value"
            for i in range(len(model.base_model.transformer.h))
            if i != 2
        ]
        assert model.targeted_module_names == expected

