"""Tiny random-weight builders for the classes of transformers-stale-loss-kwargs.

One function per class (BUILDERS: class name -> builder), each building the model from its public
config class with explicit small kwargs, on every release where the class is measured: text vocab
32 (_grad_accum.VOCAB), hidden 16, one or two layers, tiny vision / audio towers; every special
multimodal token id is in 17..31, never one of the examples' ids (3..16). Each seeds torch with 0
first and imports inside the function (nothing of transformers at import). EXTRA: per-example input
columns a class requires in training (name -> make(length)).
"""

VOCAB = 32  # = _grad_accum.VOCAB
# Special multimodal token ids, all >= 17 and < 32.
IMG, VID, VSTART, VEND = 20, 21, 22, 23

GEMMA_TEXT = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64)


def gemma4():
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    torch.manual_seed(0)
    text = dict(GEMMA_TEXT, vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=4)
    return Gemma4ForConditionalGeneration(Gemma4Config(text_config=text, vision_config=None, audio_config=None))


def gemma4_unified():
    import torch
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration

    torch.manual_seed(0)
    return Gemma4UnifiedForConditionalGeneration(Gemma4UnifiedConfig(text_config=dict(GEMMA_TEXT), vision_config=None,
                                                                     audio_config=None))


def gemma3n():
    """Gemma3n always builds a timm vision tower and an audio tower: stubbed (text-only batches never
    call them; timm is not needed)."""
    import torch
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration
    from transformers.models.gemma3n import modeling_gemma3n

    torch.manual_seed(0)
    text = dict(GEMMA_TEXT, num_hidden_layers=2, vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=4,
                num_kv_shared_layers=0, laurel_rank=4, altup_num_inputs=2,
                activation_sparsity_pattern=[0.0, 0.0], layer_types=["full_attention"] * 2)
    auto = modeling_gemma3n.AutoModel
    real = auto.__dict__["from_config"]

    def from_config(config, *args, **kwargs):
        if config.model_type in ("timm_wrapper", "gemma3n_vision", "gemma3n_audio"):
            return torch.nn.Linear(1, 1)
        return real.__get__(None, auto)(config, *args, **kwargs)

    auto.from_config = from_config
    try:
        return Gemma3nForConditionalGeneration(Gemma3nConfig(text_config=text))
    finally:
        auto.from_config = real


def _mrope(**more):
    """mRoPE over head_dim 8 (rotary half-dim 4 = sum of the sections); every release from 5.0.0rc0
    reads it from the text config's `rope_parameters`."""
    return {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2], **more}}


def qwen2_5_vl():
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    # head_dim = 16 / 2 = 8 -> rotary half-dim 4 = sum(mrope_section)
    text = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                **_mrope())
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                  fullatt_block_indexes=[0], patch_size=2, window_size=8)
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=IMG, video_token_id=VID,
        vision_start_token_id=VSTART, vision_end_token_id=VEND))


def qwen3_vl():
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    torch.manual_seed(0)
    text = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8, max_position_embeddings=64, pad_token_id=0,
                **_mrope(mrope_interleaved=True))
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=2,
                  num_position_embeddings=16, deepstack_visual_indexes=[0])
    return Qwen3VLForConditionalGeneration(Qwen3VLConfig(
        text_config=text, vision_config=vision, image_token_id=IMG, video_token_id=VID,
        vision_start_token_id=VSTART, vision_end_token_id=VEND))


def qwen3_vl_moe():
    import torch
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration
    torch.manual_seed(0)
    text = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, moe_intermediate_size=16, num_experts=4,
                num_experts_per_tok=2, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                max_position_embeddings=64, pad_token_id=0,
                **_mrope(mrope_interleaved=True))
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=2,
                  num_position_embeddings=16, deepstack_visual_indexes=[0])
    return Qwen3VLMoeForConditionalGeneration(Qwen3VLMoeConfig(
        text_config=text, vision_config=vision, image_token_id=IMG, video_token_id=VID,
        vision_start_token_id=VSTART, vision_end_token_id=VEND))


def _qwen3_5_text(**more):
    # hybrid: layer 0 linear attention, layer 1 full attention (needs at least one full-attention layer).
    # partial_rotary_factor 1.0 (default 0.25): head_dim 8 -> rotary half-dim 4 = sum(mrope_section).
    return dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8, max_position_embeddings=64, pad_token_id=0,
                layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=2, linear_key_head_dim=8,
                linear_value_head_dim=8, linear_num_key_heads=1, linear_num_value_heads=2,
                **_mrope(mrope_interleaved=True, partial_rotary_factor=1.0), **more)


_QWEN3_5_VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=2,
                       num_position_embeddings=16)


def qwen3_5():
    import torch
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
    torch.manual_seed(0)
    return Qwen3_5ForConditionalGeneration(Qwen3_5Config(
        text_config=_qwen3_5_text(), vision_config=dict(_QWEN3_5_VISION), image_token_id=IMG,
        video_token_id=VID, vision_start_token_id=VSTART, vision_end_token_id=VEND))


def qwen3_5_moe():
    import torch
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration
    torch.manual_seed(0)
    text = _qwen3_5_text(moe_intermediate_size=16, shared_expert_intermediate_size=16,
                         num_experts=4, num_experts_per_tok=2)
    text.pop("intermediate_size")
    return Qwen3_5MoeForConditionalGeneration(Qwen3_5MoeConfig(
        text_config=text, vision_config=dict(_QWEN3_5_VISION), image_token_id=IMG,
        video_token_id=VID, vision_start_token_id=VSTART, vision_end_token_id=VEND))


# GLM-4V family. Special ids in 17..31.
_GLM_IDS = dict(image_token_id=IMG, video_token_id=VID, image_start_token_id=24, image_end_token_id=25,
                video_start_token_id=26, video_end_token_id=27)
_GLM_VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=2,
                   image_size=8)


def _glm_text(**more):
    # head_dim = 16 / 2 = 8; partial_rotary_factor 1.0 (GLM-4V-MoE defaults to 0.5) -> rotary half-dim 4
    # = sum(mrope_section).
    return dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
                **_mrope(partial_rotary_factor=1.0), **more)


def glm4v():
    import torch
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration
    torch.manual_seed(0)
    return Glm4vForConditionalGeneration(Glm4vConfig(
        text_config=_glm_text(), vision_config=dict(_GLM_VISION), **_GLM_IDS))


def glm46v():
    import torch
    from transformers import Glm46VConfig, Glm46VForConditionalGeneration
    torch.manual_seed(0)
    # Glm46VConfig builds its sub-configs as glm4v_text / glm4v_vision
    return Glm46VForConditionalGeneration(Glm46VConfig(
        text_config=dict(_glm_text(), model_type="glm4v_text"),
        vision_config=dict(_GLM_VISION, model_type="glm4v_vision"), **_GLM_IDS))


def glm4v_moe():
    import torch
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration
    torch.manual_seed(0)
    # 2 layers: layer 0 dense (first_k_dense_replace=1), layer 1 MoE
    text = _glm_text(moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2,
                     n_shared_experts=1, first_k_dense_replace=1)
    text["num_hidden_layers"] = 2
    return Glm4vMoeForConditionalGeneration(Glm4vMoeConfig(
        text_config=text, vision_config=dict(_GLM_VISION), **_GLM_IDS))



def qwen4_exp():
    import torch
    from transformers import Qwen4ExpConfig, Qwen4ExpForConditionalGeneration
    torch.manual_seed(0)
    # Same hybrid text stack as Qwen3.5-MoE; "full_attention" is renamed "indexed_attention" by the config
    # whose QSA indexer needs all five indexer_* fields (kv heads 1; head dim >= rotary dim 8; budget 16 >= the
    # 10-token examples, so every token stays visible). hc_count must be > 1 (hyper-connections); no PLE layers.
    text = _qwen3_5_text(moe_intermediate_size=16, shared_expert_intermediate_size=16,
                         num_experts=4, num_experts_per_tok=2, hc_count=2, hc_lowrank=4, indexer_n_heads=2,
                         indexer_kv_heads=1, indexer_head_dim=8, indexer_budget=16, indexer_compress_ratio=2)
    text.pop("intermediate_size")
    return Qwen4ExpForConditionalGeneration(Qwen4ExpConfig(
        text_config=text, vision_config=dict(_QWEN3_5_VISION), image_token_id=IMG,
        video_token_id=VID, vision_start_token_id=VSTART, vision_end_token_id=VEND))


def glm_ocr():
    import torch
    from transformers import GlmOcrConfig, GlmOcrForConditionalGeneration
    torch.manual_seed(0)
    return GlmOcrForConditionalGeneration(GlmOcrConfig(
        text_config=_glm_text(), vision_config=dict(_GLM_VISION), **_GLM_IDS))


def glm_image():
    import torch
    from transformers import GlmImageConfig, GlmImageForConditionalGeneration
    torch.manual_seed(0)
    # lm_head has vision_vocab_size outputs while the loss is called with vocab_size=text vocab: both 32.
    # pad/eos defaults (167841/16385) moved below 32; image start/end ids (defaults 16384/16385) -> 24/25.
    text = _glm_text(vision_vocab_size=VOCAB, eos_token_id=2)
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=2, image_size=8)
    vq = dict(embed_dim=8, num_embeddings=32, latent_channels=16)
    return GlmImageForConditionalGeneration(GlmImageConfig(
        text_config=text, vision_config=vision, vq_config=vq, image_token_id=IMG, image_start_token_id=24,
        image_end_token_id=25))


def ernie4_5_vl_moe():
    import torch
    from transformers import Ernie4_5_VLMoeConfig, Ernie4_5_VLMoeForConditionalGeneration
    torch.manual_seed(0)
    # head_dim 8 -> rotary half-dim 4 = sum(mrope_section); Ernie pairs the h and w sections: they must be equal.
    # 2 layers: dense then sparse (text + vision experts; text-only input routes to the text experts).
    text = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                moe_intermediate_size=[16, 16], moe_k=2, moe_num_experts=4, moe_num_shared_experts=1,
                mlp_layer_types=["dense", "sparse"], **_mrope())
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=2)
    return Ernie4_5_VLMoeForConditionalGeneration(Ernie4_5_VLMoeConfig(
        text_config=text, vision_config=vision, image_token_id=IMG, video_token_id=VID, image_start_token_id=24,
        image_end_token_id=25, video_start_token_id=26, video_end_token_id=27))


def exaone4_5():
    import torch
    from transformers import Exaone4_5_Config, Exaone4_5_ForConditionalGeneration

    torch.manual_seed(0)
    cfg = Exaone4_5_Config(
        text_config=dict(model_type="exaone4", vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=2, pad_token_id=None, sliding_window=None,
                         layer_types=["full_attention"]),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, num_key_value_heads=1,
                           out_hidden_size=16, fullatt_block_indexes=[0]),
        image_token_id=20, video_token_id=21)
    return Exaone4_5_ForConditionalGeneration(cfg)


def kimi_k25():
    import torch
    from transformers import Kimi_K25Config, Kimi_K25ForConditionalGeneration

    torch.manual_seed(0)
    cfg = Kimi_K25Config(
        text_config=dict(model_type="deepseek_v3", vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                         moe_intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         n_shared_experts=1, n_routed_experts=4, n_group=1, topk_group=1, num_experts_per_tok=2,
                         first_k_dense_replace=0, kv_lora_rank=8, q_lora_rank=None, qk_rope_head_dim=4,
                         qk_nope_head_dim=4, v_head_dim=8, max_position_embeddings=64, bos_token_id=0,
                         eos_token_id=1, pad_token_id=None),
        vision_config=dict(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                           pos_emb_height=4, pos_emb_width=4, pos_emb_time=2),
        projection_hidden_size=16, image_token_id=20, video_token_id=21, vision_start_token_id=22,
        vision_end_token_id=23)
    return Kimi_K25ForConditionalGeneration(cfg)


def hyperclovax_vision_v2():
    import torch
    from transformers import HyperCLOVAXVisionV2Config, HyperCLOVAXVisionV2ForConditionalGeneration

    torch.manual_seed(0)
    cfg = HyperCLOVAXVisionV2Config(
        text_config=dict(model_type="hyperclovax", vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=None),
        vision_config=dict(model_type="qwen2_5_vl_vision", depth=1, hidden_size=16, intermediate_size=32,
                           num_heads=2, out_hidden_size=16, fullatt_block_indexes=[0]),
        image_token_id=20, video_token_id=21)
    return HyperCLOVAXVisionV2ForConditionalGeneration(cfg)


def cosmos3_omni():
    import torch
    from transformers import Cosmos3OmniConfig, Cosmos3OmniForConditionalGeneration

    torch.manual_seed(0)
    cfg = Cosmos3OmniConfig(
        text_config=dict(model_type="qwen3_vl_text", vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=64, **_mrope(mrope_interleaved=True)),
        vision_config=dict(model_type="qwen3_vl_vision", depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
                           out_hidden_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0]),
        image_token_id=20, video_token_id=21, vision_start_token_id=22, vision_end_token_id=23)
    return Cosmos3OmniForConditionalGeneration(cfg)


def molmo2():
    import torch
    from transformers import Molmo2Config, Molmo2ForConditionalGeneration

    torch.manual_seed(0)
    cfg = Molmo2Config(
        text_config=dict(vocab_size=VOCAB, additional_vocab_size=4, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=64),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, head_dim=8, image_size=[28, 28], patch_size=14),
        adapter_config=dict(vision_feature_layer=[-1], hidden_size=16, num_attention_heads=2, num_key_value_heads=2,
                            head_dim=8, intermediate_size=32, text_hidden_size=16),
        image_start_token_id=17, low_res_image_start_token_id=18, image_end_token_id=19, image_patch_id=20,
        frame_start_token_id=21, frame_end_token_id=22)
    return Molmo2ForConditionalGeneration(cfg)


def cosmos3_edge():
    import torch
    from transformers import Cosmos3EdgeConfig, Cosmos3EdgeForConditionalGeneration

    torch.manual_seed(0)
    cfg = Cosmos3EdgeConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, **_mrope()),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           num_patches=16),
        projector_hidden_size=16, image_token_id=19, video_token_id=18, vision_start_token_id=20,
        vision_end_token_id=21)
    return Cosmos3EdgeForConditionalGeneration(cfg)


_INKLING2_TEXT = dict(vocab_size=VOCAB, unpadded_vocab_size=VOCAB, hidden_size=16, num_attention_heads=2,
                      num_key_value_heads=1,
                      head_dim=8, swa_num_attention_heads=2, swa_num_key_value_heads=1, swa_head_dim=8,
                      sliding_window_size=4, d_rel=4, rel_extent=8, moe_intermediate_size=16, n_routed_experts=4,
                      num_experts_per_tok=2, max_position_embeddings=64, eos_token_id=2, pad_token_id=None,
                      bos_token_id=None, n_layers_per_attn_res_block=1)
_INKLING2_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        posemb_grid_size=4, projection_hidden_dim=16, text_hidden_size=16)


def inkling2():
    import torch
    from transformers import Inkling2Config, Inkling2ForConditionalGeneration

    torch.manual_seed(0)
    # two layers: one sliding, one full ("hybrid") attention
    cfg = Inkling2Config(
        text_config=dict(_INKLING2_TEXT, num_hidden_layers=2, layer_types=["hybrid_sliding", "hybrid"]),
        vision_config=dict(_INKLING2_VISION), image_token_id=20)
    return Inkling2ForConditionalGeneration(cfg)


def inkling2_loop():
    import torch
    from transformers import Inkling2LoopConfig, Inkling2LoopForConditionalGeneration

    torch.manual_seed(0)
    # three layers, the middle one (full attention) looped twice
    cfg = Inkling2LoopConfig(
        text_config=dict(_INKLING2_TEXT, num_hidden_layers=3,
                         layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding"],
                         loop_layer_index_start=1, loop_layer_index_end=2, loop_num_passes=2, loop_gate_rank=4),
        vision_config=dict(_INKLING2_VISION, model_type="inkling2_vision"), image_token_id=20)
    return Inkling2LoopForConditionalGeneration(cfg)


def inkling():
    import torch
    from transformers import InklingConfig, InklingForConditionalGeneration

    torch.manual_seed(0)
    # two layers: sliding + full ("hybrid") attention, dense + sparse (MoE) MLP
    cfg = InklingConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=8, swa_num_attention_heads=2, swa_num_key_value_heads=1,
                         swa_head_dim=8, sliding_window_size=4, d_rel=4, rel_extent=8,
                         layer_types=["hybrid_sliding", "hybrid"], mlp_layer_types=["dense", "sparse"],
                         intermediate_size=32, moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2,
                         n_shared_experts=1, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                         pad_token_id=None),
        # patch 2 x temporal 2 gives 3 scales: 3 vision layers keep plan_out_scales off scipy (not installed);
        # one channel keeps the planned widths small (the tower is unused by text-only batches)
        vision_config=dict(patch_size=2, temporal_patch_size=2, num_channels=1, hidden_size=16, num_hidden_layers=3,
                           num_attention_heads=2),
        audio_config=dict(n_mel_bins=4, mel_vocab_size=8),
        image_token_id=20, audio_token_id=21, image_bos_token_id=22, audio_bos_token_id=23)
    return InklingForConditionalGeneration(cfg)


def muse_glimmer():
    import torch
    from transformers import MuseGlimmerConfig, MuseGlimmerForConditionalGeneration

    torch.manual_seed(0)
    # two text layers: sliding (RoPE) + full attention (NoPE), the default pattern for 2 layers
    cfg = MuseGlimmerConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                         sliding_window=4, pad_token_id=None, bos_token_id=0, eos_token_id=1),
        vision_config=dict(patch_size=14, pos_emb_height=4, pos_emb_width=4, max_position_embeddings=16,
                           num_attention_heads=2, num_hidden_layers=1, hidden_size=16, intermediate_size=32),
        out_hidden_size=16, projector_hidden_size=16, image_token_id=20, video_token_id=21)
    return MuseGlimmerForConditionalGeneration(cfg)


def cohere_compass():
    import torch
    from transformers import CohereCompassConfig, CohereCompassForConditionalGeneration

    torch.manual_seed(0)
    # per-layer-type rope (the text model allows NoPE layers): sliding with RoPE, full without (None)
    rope = {"sliding_attention": _mrope()["rope_parameters"], "full_attention": None}
    cfg = CohereCompassConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         layer_types=["sliding_attention", "full_attention"], sliding_window=4, rope_parameters=rope,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           num_position_embeddings=16, deepstack_visual_indexes=[0]),
        image_token_id=20, video_token_id=21, vision_start_token_id=22, vision_end_token_id=23)
    return CohereCompassForConditionalGeneration(cfg)


def glm5_next():
    import torch
    from transformers import Glm5NextConfig, Glm5NextForConditionalGeneration

    torch.manual_seed(0)
    # two layers: KDA linear attention + DSA (indexed) MLA attention; dense then sparse (MoE) MLP.
    # "full_attention" is mapped by the config to the DSA layer type, whose name changed between releases
    # ("deepseek_sparse_attention" in 5.16.1, "indexed_attention" in 5.24.0).
    cfg = Glm5NextConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, moe_intermediate_size=16,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, n_shared_experts=1,
                         n_routed_experts=4, num_experts_per_tok=2, kv_lora_rank=8, q_lora_rank=8,
                         qk_rope_head_dim=0, qk_nope_head_dim=8, v_head_dim=8, max_position_embeddings=64,
                         layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"],
                         index_topk=8, index_kpool=4, index_head_dim=8, index_n_heads=2, linear_head_dim=8,
                         linear_num_heads=2, hc_mult=2, hc_sinkhorn_iters=3, pad_token_id=0, bos_token_id=None,
                         eos_token_id=1),
        vision_config=dict(depth=1, hidden_size=16, num_heads=2, image_size=28, patch_size=14, out_hidden_size=16,
                           intermediate_size=32, projection_intermediate_size=32),
        image_token_id=20, video_token_id=21, image_start_token_id=22, image_end_token_id=23,
        video_start_token_id=24, video_end_token_id=25)
    return Glm5NextForConditionalGeneration(cfg)


def muse_spark():
    import torch
    from transformers import MuseSparkConfig, MuseSparkForConditionalGeneration

    torch.manual_seed(0)
    # two text layers: sliding (RoPE) + full attention (NoPE); dense then sparse (MoE) MLP
    cfg = MuseSparkConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                         sliding_window=4, moe_intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
                         moe_hidden_size=16, mlp_layer_types=["dense", "sparse"], pad_token_id=None,
                         bos_token_id=0, eos_token_id=1),
        vision_config=dict(patch_size=14, pos_emb_height=4, pos_emb_width=4, max_position_embeddings=16,
                           num_attention_heads=2, num_hidden_layers=1, hidden_size=16, intermediate_size=32),
        audio_config=dict(patch_sizes=[2], hidden_sizes=[16], depths=[1], num_hidden_layers=1, conv_kernel_size=3,
                          out_hidden_size=16),
        out_hidden_size=16, projector_hidden_size=16, image_token_id=20, video_token_id=21, audio_token_id=22)
    return MuseSparkForConditionalGeneration(cfg)


def ovis2_5():
    import torch
    from transformers import Ovis2_5Config, Ovis2_5ForConditionalGeneration

    torch.manual_seed(0)
    # Qwen3 text model; a one-layer SigLIP-style tower with a visual vocabulary of 8 (unused by text batches)
    cfg = Ovis2_5Config(
        text_config=dict(model_type="qwen3", vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           patch_size=2, image_size=8, window_size=4, vocab_size=8, max_position_embeddings=16),
        image_token_id=20, video_token_id=21, image_start_token_id=22, image_end_token_id=23,
        video_start_token_id=24, video_end_token_id=25)
    return Ovis2_5ForConditionalGeneration(cfg)


# ----- TTS models: NOT measured with the harness (labels are float audio latents, the loss is the LSD flow loss +
# end-of-speech BCE, PocketTTSForConditionalGenerationLoss, which swallows **kwargs and ignores num_items_in_batch).
# Built only for the direct check in tts_check.py. Audio special ids 17..20, latent_dim 4.


BUILDERS = {
    "CohereCompassForConditionalGeneration": cohere_compass,
    "Cosmos3EdgeForConditionalGeneration": cosmos3_edge,
    "Cosmos3OmniForConditionalGeneration": cosmos3_omni,
    "Ernie4_5_VLMoeForConditionalGeneration": ernie4_5_vl_moe,
    "Exaone4_5_ForConditionalGeneration": exaone4_5,
    "Gemma3nForConditionalGeneration": gemma3n,
    "Gemma4ForConditionalGeneration": gemma4,
    "Gemma4UnifiedForConditionalGeneration": gemma4_unified,
    "Glm46VForConditionalGeneration": glm46v,
    "Glm4vForConditionalGeneration": glm4v,
    "Glm4vMoeForConditionalGeneration": glm4v_moe,
    "Glm5NextForConditionalGeneration": glm5_next,
    "GlmImageForConditionalGeneration": glm_image,
    "GlmOcrForConditionalGeneration": glm_ocr,
    "HyperCLOVAXVisionV2ForConditionalGeneration": hyperclovax_vision_v2,
    "Inkling2ForConditionalGeneration": inkling2,
    "Inkling2LoopForConditionalGeneration": inkling2_loop,
    "InklingForConditionalGeneration": inkling,
    "Kimi_K25ForConditionalGeneration": kimi_k25,
    "Molmo2ForConditionalGeneration": molmo2,
    "MuseGlimmerForConditionalGeneration": muse_glimmer,
    "MuseSparkForConditionalGeneration": muse_spark,
    "Qwen2_5_VLForConditionalGeneration": qwen2_5_vl,
    "Qwen3VLForConditionalGeneration": qwen3_vl,
    "Qwen3VLMoeForConditionalGeneration": qwen3_vl_moe,
    "Qwen3_5ForConditionalGeneration": qwen3_5,
    "Qwen3_5MoeForConditionalGeneration": qwen3_5_moe,
    "Qwen4ExpForConditionalGeneration": qwen4_exp,
    "Ovis2_5ForConditionalGeneration": ovis2_5,
}
# Releases where a class exists but no config of it builds (upstream bugs), both before the class's
# first affected release: (class, release) -> why.
UNBUILDABLE = {
    ("Gemma4ForConditionalGeneration", "5.5.0"): "rope validation rejects this tiny Gemma4 text config",
    ("Ernie4_5_VLMoeForConditionalGeneration", "5.4.0"): "the text config types use_bias `int | None` and "
                                                         "rejects its own default False",
}
# Molmo2 raises in training without mm_token_type_ids: all text (0)
EXTRA = {"Molmo2ForConditionalGeneration": {"mm_token_type_ids": lambda n: [0] * n}}
