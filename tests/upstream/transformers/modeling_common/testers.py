"""Tiny model testers for transformers' own ModelTesterMixin (copied into the assembled tree as
``tests/compat_testers.py``; run.py writes one ``tests/models/<family>/test_modeling_<family>.py`` per
family that only calls :func:`build`).

Why ours and not upstream's: the transformers sdists ship ``tests/test_modeling_common.py`` (the
mixin, verbatim here) but not ``tests/models/``, ``tests/causal_lm_tester.py`` nor the
``tests/generation`` / ``tests/exporters`` modules the mixin imports (run.py stubs those two). Each
family below is the same shape as upstream's tester of that model: a few float32 layers of every
kind the records wrap (the first layer is a wrapped GDN / Mamba2 layer, since the mixin's
checkpointing test watches ``next(GradientCheckpointingLayer)``), a batch of 3 rows of 7 tokens, a
right-padded ``torch.tril`` attention mask as upstream's CausalLM testers use, labels for training.
Where a hybrid model outputs attentions for its attention layers only, ``test_attention_outputs``
runs the mixin's test with that count, as upstream's model tests do.

Nothing here imports compat_patches: whether the records are applied is decided by the pytest
command line alone (``--compat-patches=...``), so [unpatched] and [patched] run the same file.
"""

import inspect
import unittest

import transformers
from transformers import is_torch_available

from .generation.test_utils import GenerationTesterMixin
from .test_modeling_common import ModelTesterMixin, ids_tensor

if is_torch_available():
    import torch

GDN = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_attention_heads=2, num_key_value_heads=1,
           head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
           linear_value_head_dim=8, linear_conv_kernel_dim=4, max_position_embeddings=64)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16)
MAMBA = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_attention_heads=2, num_key_value_heads=1,
             mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2,
             mamba_chunk_size=8, max_position_embeddings=64)
TWO = ["linear_attention", "full_attention"]
# the VL models: text-only inputs (ids below the vision tokens 95-98), 3-row mRoPE positions built by the model
MROPE = {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True, "rope_theta": 10000.0,
         "partial_rotary_factor": 0.5}
# depth 0: no vision block, so that the mixin's checkpointing test watches the first text layer (a GDN
# layer; text-only inputs never run a vision block) and output capture counts text layers only
VISION = dict(depth=0, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4, spatial_merge_size=1,
              temporal_patch_size=1, out_hidden_size=32, num_position_embeddings=16)
VL_TOKENS = dict(image_token_id=95, video_token_id=96, vision_start_token_id=97, vision_end_token_id=98, input_vocab=90)

# family: (config class, config kwargs, model classes (absent ones are left out), attention layers)
FAMILIES = {
    "qwen3_next": ("Qwen3NextConfig", dict(GDN, **MOE, decoder_sparse_step=1, num_hidden_layers=2, layer_types=TWO),
                   ("Qwen3NextModel", "Qwen3NextForCausalLM", "Qwen3NextForSequenceClassification",
                    "Qwen3NextForTokenClassification", "Qwen3NextForQuestionAnswering"), 1),
    "qwen3_5": ("Qwen3_5TextConfig", dict(GDN, num_hidden_layers=2, layer_types=TWO),
                ("Qwen3_5TextModel", "Qwen3_5ForCausalLM", "Qwen3_5TextForSequenceClassification"), 1),
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", dict(GDN, **MOE, num_hidden_layers=2, layer_types=TWO),
                    ("Qwen3_5MoeTextModel", "Qwen3_5MoeForCausalLM"), 1),
    "qwen3_5_vl": ("Qwen3_5Config", dict(VL_TOKENS, vision_config=VISION, text_config=dict(
                       GDN, num_hidden_layers=2, layer_types=TWO, rope_parameters=MROPE, pad_token_id=0)),
                   ("Qwen3_5Model", "Qwen3_5ForConditionalGeneration", "Qwen3_5ForSequenceClassification",
                    "Qwen3_5ForTokenClassification"), 1),
    "qwen3_5_moe_vl": ("Qwen3_5MoeConfig", dict(VL_TOKENS, vision_config=VISION, text_config=dict(
                           GDN, **MOE, num_hidden_layers=2, layer_types=TWO, rope_parameters=MROPE, pad_token_id=0)),
                       ("Qwen3_5MoeModel", "Qwen3_5MoeForConditionalGeneration"), 1),
    "olmo_hybrid": ("OlmoHybridConfig", dict(GDN, num_hidden_layers=2, layer_types=TWO),
                    ("OlmoHybridModel", "OlmoHybridForCausalLM"), 1),
    "lara_mini": ("LaraMiniConfig", dict(GDN, **MOE, num_hidden_layers=3,
                                         layer_types=["linear_attention", "sliding_attention", "full_attention"],
                                         sliding_window=4),
                  ("LaraMiniModel", "LaraMiniForCausalLM"), 2),
    "nemotron_h": ("NemotronHConfig", dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_attention_heads=2,
                                           num_key_value_heads=1, head_dim=16, mamba_num_heads=4, mamba_head_dim=16,
                                           n_groups=1, ssm_state_size=8, conv_kernel=4, expand=2, chunk_size=8,
                                           max_position_embeddings=64, num_hidden_layers=3,
                                           layers_block_type=["mamba", "attention", "moe"], n_routed_experts=4,
                                           num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16,
                                           moe_shared_expert_intermediate_size=16),
                   ("NemotronHModel", "NemotronHForCausalLM"), 1),
    "bamba": ("BambaConfig", dict(MAMBA, num_hidden_layers=2, attn_layer_indices=[1]),
              ("BambaModel", "BambaForCausalLM"), 1),
    "granitemoehybrid": ("GraniteMoeHybridConfig", dict(MAMBA, num_hidden_layers=2, num_local_experts=4, intermediate_size=32,
                                                        num_experts_per_tok=2, shared_intermediate_size=32,
                                                        position_embedding_type="rope",
                                                        layer_types=["mamba", "attention"]),
                         ("GraniteMoeHybridModel", "GraniteMoeHybridForCausalLM"), 1),
    "falcon_h1": ("FalconH1Config", dict(MAMBA, num_hidden_layers=2, mamba_d_ssm=64),
                  ("FalconH1Model", "FalconH1ForCausalLM"), 2),  # attention and Mamba2 in every layer
}


def family_classes(family):
    """The model classes of `family` this release has (None: the release lacks the model)."""
    config_name, _, class_names, _ = FAMILIES[family]
    if not hasattr(transformers, config_name):
        return None
    return tuple(getattr(transformers, name) for name in class_names if hasattr(transformers, name))


class HybridModelTester:
    batch_size = 3
    seq_length = 7
    is_training = True
    use_input_mask = True
    use_labels = True
    num_labels = 3
    type_sequence_label_size = 2
    pad_token_id = 0

    def __init__(self, parent, family):
        self.parent = parent
        self.family = family
        config_name, kwargs, _, attention_layers = FAMILIES[family]
        self.config_class = getattr(transformers, config_name)
        self.kwargs = dict(kwargs)
        self.input_vocab = self.kwargs.pop("input_vocab", None)
        text = kwargs.get("text_config", kwargs)
        self.vocab_size = text["vocab_size"]
        self.hidden_size = text["hidden_size"]
        self.num_attention_heads = text["num_attention_heads"]
        self.layers = text["num_hidden_layers"]
        self.num_hidden_layers = self.layers  # the mixin's count of attentions (see test_attention_outputs)
        self.expected_num_hidden_layers = self.layers + 1
        self.attention_layers = attention_layers

    def get_config(self):
        params = inspect.signature(self.config_class.__init__).parameters
        kwargs = dict(self.kwargs, pad_token_id=self.pad_token_id, num_labels=self.num_labels, use_cache=False)
        if "layers_block_type" in kwargs and "layers_block_type" not in params and "layer_types" in params:
            kwargs["layer_types"] = kwargs.pop("layers_block_type")
        if "layer_types" in kwargs and "layer_types" not in params and "layers_block_type" in params:
            kwargs["layers_block_type"] = kwargs.pop("layer_types")
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in kwargs.items() if k in params or accepts_any}
        config = self.config_class(**kwargs)
        if "text_config" not in kwargs:
            config.num_hidden_layers = self.layers
        return config

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.input_vocab or self.vocab_size)
        input_mask = torch.tril(torch.ones_like(input_ids)) if self.use_input_mask else None
        return self.get_config(), input_ids, input_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}


def build(family):
    """The unittest class running ModelTesterMixin on `family`'s classes (skipped if absent)."""
    classes = family_classes(family)
    bases = (ModelTesterMixin, GenerationTesterMixin, unittest.TestCase)
    name = FAMILIES[family][0].replace("Config", "") + "ModelTest"
    if classes is None:
        return type(name, (unittest.TestCase,), {"test_release_has_the_model": unittest.skip(
            f"transformers {transformers.__version__} has no {FAMILIES[family][0]}")(lambda self: None)})

    def setUp(self):
        self.model_tester = HybridModelTester(self, family)

    def test_attention_outputs(self):
        # the hybrid models return attentions of their attention layers only (upstream overrides alike)
        self.model_tester.num_hidden_layers = self.model_tester.attention_layers
        ModelTesterMixin.test_attention_outputs(self)

    # text-only inputs leave the vision tower's parameters without a gradient (the checkpointing test
    # would fail on that, patched or not)
    all_params_have_gradient = "vision_config" not in FAMILIES[family][1]
    return type(name, bases, {"all_model_classes": classes, "setUp": setUp,
                              "test_attention_outputs": test_attention_outputs,
                              "test_all_params_have_gradient": all_params_have_gradient,
                              "__module__": f"tests.models.{family}.test_modeling_{family}"})
