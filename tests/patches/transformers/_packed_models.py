"""Tiny models of every family the packed-samples records wrap, built from configs (random weights).

GDN: one GatedDeltaNet + one attention layer, hidden 32, 2 key / 4 value heads of 8, conv kernel 4.
Mamba2: one Mamba2 + one attention layer (Falcon-H1 runs both in its one layer), 4 heads of 16,
state 8, chunk 8, ``initializer_range=0.1`` and random ``A_log`` / ``dt_bias`` / ``D`` so a leak shows.
"""

import inspect

import torch

from compat_patches.core.versions import in_range, installed_version

GDN = "transformers-gdn-packed-samples"
MAMBA2 = "transformers-mamba2-packed-samples"
VOCAB = 64
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, head_dim=16, linear_num_key_heads=2,
              linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
              linear_conv_kernel_dim=4, layer_types=["linear_attention", "full_attention"])
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16)
CONV_KERNEL = 4
# family: (record, config class, causal-LM class, first release with the model)
FAMILIES = {
    "qwen3_next": (GDN, "Qwen3NextConfig", "Qwen3NextForCausalLM", "5.0.0rc0"),
    "qwen3_5": (GDN, "Qwen3_5TextConfig", "Qwen3_5ForCausalLM", "5.2.0"),
    "qwen3_5_moe": (GDN, "Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM", "5.2.0"),
    "olmo_hybrid": (GDN, "OlmoHybridConfig", "OlmoHybridForCausalLM", "5.3.0"),
    "lara_mini": (GDN, "LaraMiniConfig", "LaraMiniForCausalLM", "5.24.0"),
    "nemotron_h": (MAMBA2, "NemotronHConfig", "NemotronHForCausalLM", "5.3.0"),
    "bamba": (MAMBA2, "BambaConfig", "BambaForCausalLM", "5.0.0rc0"),
    "granitemoehybrid": (MAMBA2, "GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM", "5.0.0rc0"),
    "falcon_h1": (MAMBA2, "FalconH1Config", "FalconH1ForCausalLM", "5.0.0rc0"),
}


def present(record=None):
    """The families of `record` (all when None) this transformers release has."""
    version = installed_version("transformers")
    return [family for family, (owner, _, _, first) in FAMILIES.items()
            if (record is None or owner == record) and in_range(version, f">={first}")]


def _gdn_config(family):
    import transformers

    cls = getattr(transformers, FAMILIES[family][1])
    if family == "qwen3_next":
        return cls(**COMMON, **MOE, decoder_sparse_step=1)
    if family in ("qwen3_5_moe", "lara_mini"):
        return cls(**COMMON, **MOE)
    if family == "olmo_hybrid":
        return cls(**{k: v for k, v in COMMON.items() if k != "head_dim"}, pad_token_id=0, eos_token_id=1)
    return cls(**COMMON)


def mamba2_config(family):
    import transformers

    cls = getattr(transformers, FAMILIES[family][1])
    params = inspect.signature(cls.__init__).parameters
    kw = dict(initializer_range=0.1, vocab_size=VOCAB, hidden_size=32, intermediate_size=32,
              num_attention_heads=2, num_key_value_heads=1)
    mamba = dict(mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8,
                 mamba_d_conv=CONV_KERNEL, mamba_expand=2, mamba_chunk_size=8)
    if family == "nemotron_h":
        kw.update(mamba_num_heads=4, mamba_head_dim=16, n_groups=1, ssm_state_size=8,
                  conv_kernel=CONV_KERNEL, expand=2, chunk_size=8, head_dim=16, num_hidden_layers=2,
                  # 5.3.0's names of the same
                  mamba_n_groups=1, mamba_d_conv=CONV_KERNEL, mamba_expand=2, mamba_chunk_size=8)
        if "layers_block_type" in params:
            kw["layers_block_type"] = ["mamba", "attention"]
        else:
            kw["hybrid_override_pattern"] = "M*"
    elif family == "bamba":
        kw.update(mamba, num_hidden_layers=2, attn_layer_indices=[1])
    elif family == "granitemoehybrid":
        kw.update(mamba, num_hidden_layers=2, num_local_experts=0, shared_intermediate_size=32)
        kw["layer_types" if "layer_types" in params else "layers_block_type"] = ["mamba", "attention"]
    else:
        kw.update(mamba, num_hidden_layers=1, mamba_d_ssm=64)
    kw = {k: v for k, v in kw.items() if k in params or k == "num_hidden_layers"}
    try:
        config = cls(**kw)
    except Exception as error:  # 5.4.0: FalconH1Config's use_cache is annotated `int | None`
        if "use_cache" not in str(error):
            raise
        config = cls(**kw, use_cache=0)
    return config


def build(family, attn=None):
    """The tiny causal LM of `family`, float32, eval mode, seeded; attention eager (GDN) or sdpa."""
    import transformers

    record = FAMILIES[family][0]
    config = _gdn_config(family) if record == GDN else mamba2_config(family)
    config._attn_implementation = attn or ("eager" if record == GDN else "sdpa")
    torch.manual_seed(0)
    model = getattr(transformers, FAMILIES[family][2])(config).float().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if record == GDN and name.endswith("norm.weight"):
                # make the routers and norms non-trivial (random init leaves some at exact 0 / 1)
                parameter.add_(0.1 * torch.randn_like(parameter))
            elif record == MAMBA2 and name.endswith(("A_log", "dt_bias", "D")):
                parameter.uniform_(-0.5, 0.5)
    return model
