"""peft-moe-regex-targets: a regex ``target_modules`` keeps its exact scope on Transformers-5 fused MoE experts.

Transformers 5 packs the experts of Qwen-style and Mixtral-style MoE blocks into 3-D parameters
(``mlp.experts.gate_up_proj`` = gate_proj + up_proj of every expert, ``mlp.experts.down_proj``). PEFT
rewrites a LoRA config written for the per-expert (v4) names into ``target_parameters`` on the fused
names in ``peft.utils.transformers_weight_conversion.convert_peft_config_for_transformers``. With a
regex string as ``target_modules`` that rewrite is wrong in every release that has it (measured,
transformers 5.17.0 and 5.24.0):

- peft 0.19.0 - 0.19.1: ``set(peft_config.target_modules)`` turns the regex into a set of single
  characters; layer-index modules (``model.layers.0``) then "end with" ``.0`` and PEFT raises
  ``Target module Qwen3MoeDecoderLayer(...) is not supported``, even for a regex naming only attention.
- peft 0.20.0 - 0.21.2 (newest): ``_resolve_string_target_modules`` reduces the regex to LEAF names
  (``q_proj``, ``gate_up_proj``...), so ``model\\.layers\\.0\\.self_attn\\.q_proj`` puts LoRA on the
  ``q_proj`` of EVERY layer, and the experts of every layer get LoRA; ``".*"`` raises
  ``target_modules should not contain an empty string``.

The wrapper resolves the regex once with PEFT's own matcher against the model (the converter shared with
``peft-shared-expert-targets``: ``compat_patches/patches/peft/_moe_conversion.py``): real modules it
fullmatches stay module targets; fused expert parameters whose rebuilt pre-fusion names
(``...mlp.experts.gate_proj``, or all of ``...mlp.experts.<e>.gate_proj``) match become
``target_parameters``; a fused gate+up pair gets doubled rank and alpha (alpha/r unchanged). Where the
regex selects what PEFT's leaf names select (a regex covering every layer), the config is written exactly
as PEFT writes it (``target_modules={'q_proj', ...}``, ``target_parameters={'gate_up_proj', ...}``,
``rank_pattern={'.*\\\\.gate_up_proj': 2r}``); where it is narrower, as full names (a set of module names,
a set of parameter names, one rank/alpha key matching exactly the fused parameters). ``"all-linear"``,
lists (record ``peft-shared-expert-targets``), invalid regexes and models PEFT does not convert go to
what the wrapper wraps. Half a fused pair raises PEFT's ValueError with PEFT's wording (ours after it).

No heavy import at module level.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Replaces

from . import _moe_conversion as _conv

NAME = "peft-moe-regex-targets"

_REPLACES = Replaces(
    symbols=(_conv.TARGET,),
    note="No hand patch of this bug was found by the field inventory of framework mirrors "
         "(2026-11-28): it lists \"PEFT regex target_modules under tf5 fused MoE\" among the known "
         "items that do not appear as monkey-patches at those mirrors' HEAD.",
)

PATCH = Patch(
    name=NAME,
    summary=(
        "regex target_modules on Transformers-5 fused MoE experts: LoRA on exactly the matched modules and "
        "expert parameters (layer scope kept, gate+up fused rank/alpha doubled), not a char set (0.19) or "
        "every layer (0.20+)"
    ),
    upstream="https://github.com/huggingface/peft/pull/3232",  # fixed the 0.19 crash only; the scope loss is unfixed
    affected={"peft": ">=0.19.0.dev0", "transformers": ">=5.0.0rc0"},
    verified_through={"peft": "0.21.2", "transformers": "5.24.0"},
    fixed_in=None,
    targets=(
        Target(
            _conv.TARGET,
            wrapper=_conv.make_wrapper(_conv.REGEX, NAME),
            params=_conv.PARAMS,
            check=_conv.check_tables,
        ),
    ),
    notes=(
        "Measured with transformers 5.17.0 and 5.24.0: peft 0.19.0/0.19.1 raise (regex -> set of characters); "
        "peft 0.20.0-0.21.2 lose the layer scope of the regex (leaf-name resolution). PEFT 0.18 and older "
        "have no conversion. Qwen2-MoE and Qwen3.5-MoE are not in PEFT's conversion table: untouched by PEFT "
        "and by this patch. Shares its converter with peft-shared-expert-targets (lists and sets)."
    ),
    upstream_tests=(
        "tests/upstream/peft/test_integrations.py::TestTransformersV5::test_qwen3_moe_regex_target_modules_works",
        "tests/upstream/peft/test_integrations.py::TestTransformersV5::"
        "test_qwen3_moe_single_attention_regex_target_modules_works",
        "tests/upstream/peft/test_integrations.py::TestTransformersV5::"
        "test_qwen3_moe_regex_target_modules_save_load_roundtrip",
        "tests/upstream/peft/test_integrations.py::TestTransformersV5::test_qwen3_moe_partial_fusion_raises",
        "tests/upstream/peft/test_integrations.py::TestTransformersV5::test_qwen3_moe_all_linear_target_modules_works",
        "tests/upstream/peft/test_tuners_utils.py::TestTargetedModuleNames::test_two_targeted_module_regex",
    ),
    differences=(
        "A regex narrower than PEFT's leaf names (one layer, some layers) is written as full names "
        "(target_modules a set of module names, target_parameters a set of parameter names, one exact rank/alpha "
        "key) instead of PEFT's leaf names, which would widen it to every layer. Where the scopes agree the "
        "config is PEFT's own."
    ),
    replaces=_REPLACES,
)
