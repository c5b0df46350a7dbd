# Copyright 2026 Bytedance Ltd. and/or its affiliates
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
# Copied for compat_patches (record "fsdp-packed-experts") from
#   repository: https://github.com/verl-project/verl
#   file:       tests/workers/rollout/test_vllm_moe_param_converter_on_cpu.py
#   release:    v0.9.0 (tag; commit 483b8a009), unchanged up to main 1dda039b9 (the verl sdists do
#               not ship this file). History: PR 6896 (8c2fa6383, the fix: packed MoE experts
#               expanded for vLLM) added no test; this file came with the GPT-OSS follow-up (commit
#               0ec19ba0a, merged in PR 7109) testing the converter `_iter_vllm_compatible_moe_params`,
#               and PR 7161 (f66328232) moved the converter to verl/workers/engine/fsdp/utils.py as
#               `unfuse_moe_params`, which verl 0.9.0's FSDPEngine.get_per_tensor_param applies.
# What the file tests is the converter FUNCTION on a list of tensors; verl 0.8.0 has no such function
# (the fix is its absence), so the test is run against what the patch applies instead:
#   * `from verl.workers.engine.fsdp.utils import unfuse_moe_params` ->
#     `from compat_patches.moe import expand_packed_experts`, and `_collect` calls
#     `expand_packed_experts(weights, model_type=model_type)` (the call the fsdp-packed-experts
#     wrapper makes on the engine's stream): converter "helper". It does not depend on the patch, so
#     it passes in both modes everywhere and is not a regression test.
#   * where it can, the test also exercises the engine: `test_qwen_moe_packed_weights_are_expanded_per_expert`
#     is parametrized with converter "engine" (one added decorator and one added argument of
#     `_collect`), which streams the same tensors through verl's REAL FSDPEngine.get_per_tensor_param
#     (tests/verl_engine.py). That variant is the regression test: on verl 0.6.0 - 0.8.x
#     it fails without the patch (packed names) and passes with it; on verl >= 0.9.0 it passes with
#     verl's own unfuse_moe_params (the patch: not-needed).
#   * `test_gpt_oss_packed_weights_are_not_expanded` stays on the helper only: it asserts the very
#     tensor objects come back (`is`), which no engine stream can do (FSDP gathers copies).
#   * `PATCH` names the record (read by tests/upstream/conftest.py).
# ---------------------------------------------------------------------------------------------------


import pytest

torch = pytest.importorskip("torch")

from compat_patches.moe import expand_packed_experts  # noqa: E402

PATCH = "fsdp-packed-experts"


def _collect(weights, model_type, converter="helper"):
    if converter == "engine":
        from ...verl_engine import stream_through_fsdp_engine

        return stream_through_fsdp_engine(weights, model_type)
    return [item for item in expand_packed_experts(weights, model_type=model_type)]


@pytest.mark.parametrize("converter", [
    "helper",
    pytest.param("engine", marks=[pytest.mark.upstream_regression, pytest.mark.requires(verl=">=0.6.0")]),
], indirect=True)
def test_qwen_moe_packed_weights_are_expanded_per_expert(converter):
    gate_up = torch.randn(2, 6, 8)
    down = torch.randn(2, 8, 3)

    converted = _collect(
        [
            ("model.layers.0.mlp.experts.gate_up_proj", gate_up),
            ("model.layers.0.mlp.experts.down_proj", down),
        ],
        "qwen3_moe",
        converter,
    )

    assert [name for name, _ in converted] == [
        "model.layers.0.mlp.experts.0.gate_proj.weight",
        "model.layers.0.mlp.experts.0.up_proj.weight",
        "model.layers.0.mlp.experts.1.gate_proj.weight",
        "model.layers.0.mlp.experts.1.up_proj.weight",
        "model.layers.0.mlp.experts.0.down_proj.weight",
        "model.layers.0.mlp.experts.1.down_proj.weight",
    ]
    assert [tensor.shape for _, tensor in converted] == [
        (3, 8),
        (3, 8),
        (3, 8),
        (3, 8),
        (8, 3),
        (8, 3),
    ]


def test_gpt_oss_packed_weights_are_not_expanded():
    gate_up = torch.randn(2, 8, 6)
    down = torch.randn(2, 3, 8)
    weights = [
        ("model.layers.0.mlp.experts.gate_up_proj", gate_up),
        ("model.layers.0.mlp.experts.down_proj", down),
    ]

    converted = _collect(weights, "gpt_oss")

    assert [name for name, _ in converted] == [name for name, _ in weights]
    assert converted[0][1] is gate_up
    assert converted[1][1] is down
    assert converted[0][1].shape == (2, 8, 6)
    assert converted[1][1].shape == (2, 3, 8)
