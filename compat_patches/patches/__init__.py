"""The registered patches, in report order: ``patches/<library>/<what_it_fixes>.py``, each
defining one ``PATCH`` record. Importing a record imports nothing of the library it fixes."""

from .peft import moe_regex_targets
from .transformers import (
    byte_level_tokenizer,
    gpt_oss_num_experts,
    missing_weights_init,
    rope_ignore_keys,
    vl_processor_ragged_batch,
)
from .verl import fsdp_packed_experts
from .vllm import fused_expert_kwargs
from .vllm_ascend import moe_layout

ALL_PATCHES = (
    rope_ignore_keys.PATCH,
    moe_regex_targets.PATCH,
    moe_layout.PATCH,
    fsdp_packed_experts.PATCH,
    fused_expert_kwargs.PATCH,
    byte_level_tokenizer.PATCH,
    missing_weights_init.PATCH,
    vl_processor_ragged_batch.PATCH,
    gpt_oss_num_experts.PATCH,
)
