"""Hand patches the field still carries that current releases no longer call for, as data.

Each entry says what the hand patch does, the symbols it assigns (what ``python -m compat_patches
scan`` looks for), where it lives downstream, the releases where it may still be needed, and the
evidence. Sources: ../shared/FIELD.md "Not needed any more" (measured or read in the wheels
there) and the field inventory's "still needed on newest? no" rows (read in the newest wheels,
2026-11-28; row numbers are that inventory's). Importing this module imports no library.
"""

from .core.record import Copy, NotNeeded

_VERL = "verl-project/verl"
_VERL_AT = "1dda039b9c63"
_SWIFT = "modelscope/ms-swift"
_SWIFT_AT = "3602360a5623"
_TF = "transformers.models."

NOT_NEEDED = (
    # ---- FIELD.md, "Not needed any more" -------------------------------------------------------
    NotNeeded(
        "verl-fast-pos-embed-device",
        "Qwen3-VL / Qwen3.5 vision models' fast_pos_embed_interpolate replaced so the position "
        "indices follow the pos_embed weight's device (FSDP2 cpu_offload device mismatch)",
        symbols=(
            _TF + "qwen3_vl.modeling_qwen3_vl:Qwen3VLVisionModel.fast_pos_embed_interpolate",
            _TF + "qwen3_vl_moe.modeling_qwen3_vl_moe:Qwen3VLMoeVisionModel.fast_pos_embed_interpolate",
            _TF + "qwen3_5.modeling_qwen3_5:Qwen3_5VisionModel.fast_pos_embed_interpolate",
            _TF + "qwen3_5_moe.modeling_qwen3_5_moe:Qwen3_5MoeVisionModel.fast_pos_embed_interpolate",
        ),
        copies=(
            Copy(_VERL, "verl/models/transformers/qwen3_vl.py", "fast_pos_embed_interpolate",
                 commit=_VERL_AT, inventory=2),
            Copy(_VERL, "verl/models/transformers/qwen3_5.py", "fast_pos_embed_interpolate",
                 commit=_VERL_AT, inventory=2),
        ),
        needed_in={"transformers": "<5.20.0"},
        fixed_in="transformers 5.20.0 (the method is gone)",
        evidence="The method is gone by 5.20.0; its replacement builds the indices on "
                 "grid_thw.device (read in 5.20.0 and 5.25.0).",
        verified="read",
    ),
    NotNeeded(
        "verl-trl-value-head-state-dict",
        "trl's AutoModelForCausalLMWithValueHead.state_dict reset to nn.Module.state_dict for FSDP",
        symbols=("trl.models.modeling_value_head:AutoModelForCausalLMWithValueHead.state_dict",),
        copies=(Copy(_VERL, "verl/models/transformers/monkey_patch.py", commit=_VERL_AT, inventory=3,
                     what="inside apply_monkey_patch, only where trl is installed"),),
        needed_in={"trl": "<1.16.0"},
        fixed_in="trl 1.16.0 (no AutoModelForCausalLMWithValueHead at all)",
        evidence="trl 1.16.0 has no AutoModelForCausalLMWithValueHead (neither trl nor "
                 "trl.experimental.ppo); on older trl the patch's need is unknown.",
        verified="read",
    ),
    NotNeeded(
        "fsdp-module-abc-swap",
        "torch's FSDPModule swapped for an ABC subclass while fully_shard wraps a transformers "
        "model (models with an ABC metaclass, transformers 4.54+)",
        symbols=("torch.distributed.fsdp._fully_shard._fully_shard:FSDPModule",),
        copies=(
            Copy(_VERL, "verl/utils/fsdp_utils.py", "maybe_patch_fsdp_module", commit=_VERL_AT,
                 inventory=5),
            Copy("inclusionAI/AReaL", "areal/engine/fsdp_utils/__init__.py", "maybe_patch_fsdp_module",
                 commit="4aef98d8d818", inventory=44),
        ),
        needed_in={"transformers": "<5.0.0"},
        fixed_in="transformers 5 (model classes use the plain `type` metaclass)",
        evidence="fully_shard on transformers-5 models works without the swap on torch 2.13 "
                 "(measured on 5.0.0 and 5.25.0; the metaclass is `type`).",
        verified="measured",
    ),
    NotNeeded(
        "swift-qwen3-vl-moe-expert-dtype",
        "Qwen3VLMoeTextExperts.forward wrapped to cast the expert output back to the input dtype",
        symbols=(_TF + "qwen3_vl_moe.modeling_qwen3_vl_moe:Qwen3VLMoeTextExperts.forward",),
        copies=(Copy(_SWIFT, "swift/model/models/qwen.py", "patch_Qwen3VLMoeTextExperts_dtype",
                     commit=_SWIFT_AT, inventory=11),),
        needed_in={"transformers": "<5.1.0"},
        fixed_in="the transformers 5 MoE rewrite (bf16 in, bf16 out)",
        evidence="Measured bf16 output for bf16 input on 5.1.0 through 5.25.0.",
        verified="measured",
    ),
    NotNeeded(
        "prime-rl-harmony-stop-tokens",
        "vLLM's ChatCompletionRequest.to_sampling_params wrapped to merge the harmony stop tokens "
        "(<|call|>, <|return|>) into each request's SamplingParams",
        symbols=("vllm.entrypoints.openai.chat_completion.protocol:"
                 "ChatCompletionRequest.to_sampling_params",),
        copies=(Copy("PrimeIntellect-ai/prime-rl", "src/prime_rl/inference/patches.py",
                     "monkey_patch_harmony_stop_token_propagation", commit="559b44772e47",
                     inventory=37),),
        needed_in={"vllm": "<0.34.0"},
        fixed_in="vllm 0.34.0 (PR 35076 merges the default stop tokens)",
        evidence="vLLM PR 35076; 0.34.0 merges the defaults (read).",
        verified="read",
    ),
    NotNeeded(
        "verl-compute-logits-vocab-guard",
        "a vLLM model instance's compute_logits wrapped to mask padded-vocabulary ids (and ban "
        "vision placeholder tokens)",
        copies=(Copy(_VERL, "verl/workers/rollout/vllm_rollout/utils.py",
                     "monkey_patch_compute_logits", commit=_VERL_AT, inventory=9),),
        needed_in={},
        fixed_in="not a bug fix: a sampling policy (keep it if you want the policy)",
        evidence="It changes which ids may be sampled; no upstream bug to fix (vllm#13175 "
                 "discussion). compat_patches has no record for it and needs none.",
        verified="read",
    ),
    NotNeeded(
        "openrlhf-zero3-weight-mapping",
        "transformers' _apply_weight_conversions_to_state_dict wrapped under ZeRO-3 to keep "
        "checkpoint keys that already name a model parameter",
        symbols=("transformers.integrations.deepspeed:_apply_weight_conversions_to_state_dict",),
        copies=(Copy("OpenRLHF/OpenRLHF", "openrlhf/models/actor.py", "_patch_zero3_weight_mapping",
                     commit="3c3be6234e0c", inventory=43),),
        needed_in={"transformers": ">=5.4.0,<5.6.0"},
        fixed_in="transformers 5.6.0 (the keys are dropped only on 5.4.0 - 5.5.x)",
        evidence="Qwen3.5 (MoE) VL language-model keys dropped on 5.4.0 and 5.5.4, kept on 5.2.0, "
                 "5.3.0, 5.6.0 - 5.25.0 (FIELD F-1, measured). The hand patch calls .update() on "
                 "the result and breaks on 5.24+, where the function is a generator.",
        verified="measured",
    ),
    # ---- field inventory rows answered "no" (read in the newest wheels) -----------------------
    NotNeeded(
        "verl-qwen3-vl-moe-router-weights",
        "Qwen3VLMoeTextSparseMoeBlock.forward replaced to build router_weights from router_logits",
        symbols=(_TF + "qwen3_vl_moe.modeling_qwen3_vl_moe:Qwen3VLMoeTextSparseMoeBlock.forward",),
        copies=(Copy(_VERL, "verl/models/transformers/qwen3_vl.py",
                     "patch_qwen3_vl_moe_sparse_moe_block_forward", commit=_VERL_AT, inventory=1),),
        needed_in={"transformers": "<5.0.0"},
        fixed_in="transformers 5 (the MoE rewrite has no such line; verl gates it to <= 4.57.3)",
        evidence="The line is absent from the transformers 5 MoE block (read in 5.24.0).",
    ),
    NotNeeded(
        "swift-ovis-hybrid-cache-update",
        "HybridCache.update wrapped to move the KV-cache tensors to the incoming device",
        symbols=("transformers.cache_utils:HybridCache.update",),
        copies=(Copy(_SWIFT, "swift/model/models/qwen.py", commit=_SWIFT_AT, inventory=12,
                     what="Ovis1.6 get_model, skipped on ImportError"),),
        needed_in={"transformers": "<5.0.0rc3"},
        fixed_in="transformers 5.0.0rc3 (HybridCache removed: the patch is dead code)",
        evidence="HybridCache is gone from transformers 5 (5.0.0rc3 on; read).",
    ),
    NotNeeded(
        "swift-guided-decoding-params-alias",
        "vllm.sampling_params.GuidedDecodingParams aliased to StructuredOutputsParams for old trl",
        symbols=("vllm.sampling_params:GuidedDecodingParams",),
        copies=(Copy(_SWIFT, "swift/rlhf_trainers/grpo_trainer.py", commit=_SWIFT_AT, inventory=14,
                     what="module level, only if the import fails"),),
        needed_in={"trl": "<1.16.0"},
        fixed_in="trl 1.16.0 no longer imports GuidedDecodingParams",
        evidence="trl 1.16.0 does not import the class (read); vLLM removed it in PR 22772.",
    ),
    NotNeeded(
        "swift-trl-is-vllm-ascend-available",
        "trl.import_utils.is_vllm_ascend_available made to return a bool (it returned a tuple)",
        symbols=("trl.import_utils:is_vllm_ascend_available",),
        copies=(Copy(_SWIFT, "swift/rlhf_trainers/grpo_trainer.py", commit=_SWIFT_AT, inventory=15,
                     what="module level, only if the result is not a bool"),),
        needed_in={"trl": "<1.16.0"},
        fixed_in="trl 1.16.0 (the function is gone)",
        evidence="No is_vllm_ascend_available in trl 1.16.0 (read).",
    ),
    NotNeeded(
        "swift-repeat-sampler-len",
        "trl's RepeatSampler.__len__ replaced so the last checkpoint is saved",
        symbols=("trl.trainer.grpo_trainer:RepeatSampler.__len__",),
        copies=(Copy(_SWIFT, "swift/rlhf_trainers/utils.py", "patch_save_last_checkpoint",
                     commit=_SWIFT_AT, inventory=16),),
        needed_in={"trl": "<0.20"},
        fixed_in="trl 0.20 (ms-swift's own gate)",
        evidence="ms-swift returns early on trl >= 0.20 (its gate, read).",
    ),
    NotNeeded(
        "trl-parallelism-config-alias",
        "transformers.training_args.ParallelismConfig set to Any so get_type_hints works with "
        "accelerate < 1.10.1",
        symbols=("transformers.training_args:ParallelismConfig",),
        copies=(Copy("huggingface/trl", "trl/_compat.py", "_patch_transformers_parallelism_config",
                     commit="f2cd57710ae3", inventory=46),),
        needed_in={"transformers": "<4.57.0"},
        fixed_in="transformers 4.57.0 (transformers#40818)",
        evidence="Fixed in transformers 4.57.0 (read).",
    ),
    NotNeeded(
        "llamafactory-qwen3-omni-moe-sparse-block",
        "Qwen3OmniMoeThinkerTextSparseMoeBlock replaced for DeepSpeed ZeRO-2 / FSDP2 "
        "(unused-expert parameters)",
        symbols=(_TF + "qwen3_omni_moe.modeling_qwen3_omni_moe:Qwen3OmniMoeThinkerTextSparseMoeBlock",),
        copies=(Copy("hiyouga/LlamaFactory", "src/llamafactory/model/patcher.py",
                     "patch_qwen3_omni_moe_thinker_text_sparse_moe_block", commit="ff6d4d12eeb0",
                     inventory=48),),
        needed_in={"transformers": ">=4.57.0,<4.58.0"},
        fixed_in="transformers 5 (MoE rewrite; LlamaFactory gates it to 4.57)",
        evidence="LlamaFactory's own gate (4.57 <= transformers < 4.58) and the transformers 5 "
                 "MoE rewrite (read).",
    ),
    NotNeeded(
        "prime-rl-qwen3-5-text-position-ids",
        "Qwen3.5 (MoE) decoder layers' forward wrapped to receive 2-D text position_ids instead of "
        "3-D MRoPE ids",
        symbols=(_TF + "qwen3_5.modeling_qwen3_5:Qwen3_5DecoderLayer.forward",
                 _TF + "qwen3_5_moe.modeling_qwen3_5_moe:Qwen3_5MoeDecoderLayer.forward"),
        copies=(Copy("PrimeIntellect-ai/prime-rl", "src/prime_rl/trainer/model.py",
                     "_patch_qwen3_5_text_position_ids", commit="559b44772e47", inventory=40),),
        needed_in={"transformers": "<5.24.0"},
        fixed_in="transformers 5.24.0 or earlier (passes text_position_ids; transformers#44399)",
        evidence="5.24.0 passes text_position_ids to the layers (read); the first fixed release "
                 "was not bracketed.",
    ),
    NotNeeded(
        "axolotl-initialize-missing-keys-fsdp",
        "PreTrainedModel._initialize_missing_keys wrapped so non-rank-0 processes do not "
        "re-initialise every parameter under cpu_ram_efficient_loading",
        symbols=("transformers.modeling_utils:PreTrainedModel._initialize_missing_keys",),
        copies=(Copy("axolotl-ai-cloud/axolotl", "src/axolotl/monkeypatch/accelerate/fsdp2.py",
                     "patch_initialize_missing_keys_for_fsdp", commit="067b021c8b87", inventory=54),),
        needed_in={"transformers": "<5.24.0"},
        fixed_in="transformers 5.24.0 or earlier (transformers#44473)",
        evidence="5.24.0 has the `is_fsdp_enabled() and not is_local_dist_rank_0()` guard (read); "
                 "the first fixed release was not bracketed.",
    ),
)
