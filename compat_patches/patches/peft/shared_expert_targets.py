"""peft-shared-expert-targets: list/set targets naming real modules stay on those modules under Transformers 5.

PEFT's Transformers-5 MoE conversion (``peft.utils.transformers_weight_conversion``, peft >= 0.19) maps every
``target_modules`` entry that ENDS with a pre-fusion expert name (``gate_proj``, ``up_proj``, ``down_proj``,
Mixtral's ``w1/w2/w3``, the router ``gate``) to the fused parameter leaf (``gate_up_proj``, ``down_proj``,
``gate.weight``) of EVERY layer, and drops the entry from ``target_modules``. Measured (peft 0.19.0 - 0.21.2,
transformers 5.17.0 / 5.24.0):

- DeepSeek-V3 (and GLM-4-MoE, Qwen3-Next, ... every converted family with shared experts):
  ``["model.layers.1.mlp.shared_experts.gate_proj", "...up_proj", "...down_proj"]`` puts LoRA on the routed
  experts of every layer and on no shared expert (peft issue 3711); naming gate+down only raises
  ``Cannot convert PEFT target(s) ...``.
- bare names (``["gate_proj", "up_proj", "down_proj"]``, and ``"all-linear"`` on 0.20+) lose the dense MLPs
  (DeepSeek-V3 ``first_k_dense_replace`` layers) and the shared experts, which they named in v4; a v4 adapter
  trained that way loads without those weights.
- ``"all-linear"`` on 0.19.x raises (the string becomes a set of characters).

The wrapper resolves the entries with PEFT's own matcher (``check_target_module_exists``: suffix match,
``exclude_modules``, ``layers_to_transform``) against the model, in the converter shared with
``peft-moe-regex-targets`` (``compat_patches/patches/peft/_moe_conversion.py``): an entry that names real
modules keeps them; the fused parameters whose rebuilt pre-fusion names an entry selects become
``target_parameters`` (gate+up: rank and alpha doubled). The config is written in PEFT's representation
wherever that has the same scope (entries, leaf parameter names, PEFT's ``.*\\.gate_up_proj`` rank key),
otherwise with full names. Regex strings go to what the wrapper wraps (record ``peft-moe-regex-targets``).

No heavy import at module level.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Replaces

from . import _moe_conversion as _conv

__all__ = ["PATCH"]

NAME = "peft-shared-expert-targets"

_REPLACES = Replaces(
    symbols=(_conv.TARGET,),
    note="No hand patch of this bug was found by the field inventory of framework mirrors "
         "(2026-11-28): it lists \"peft DeepSeek-V3 shared experts\" among the known items that do "
         "not appear as monkey-patches at those mirrors' HEAD. A user who worked around it by "
         "targeting the shared experts through `target_parameters` / a regex, or by renaming "
         "targets, can go back to the plain module names.",
)

PATCH = Patch(
    name=NAME,
    summary=(
        "list/set/\"all-linear\" target_modules on Transformers-5 fused MoE models: entries naming real modules "
        "(DeepSeek-V3 shared experts, dense MLPs) keep them instead of moving onto every layer's routed experts"
    ),
    upstream="https://github.com/huggingface/peft/issues/3711",  # fix PR 3715, unreleased
    affected={"peft": ">=0.19.0.dev0", "transformers": ">=5.0.0rc0"},
    verified_through={"peft": "0.21.2", "transformers": "5.24.0"},
    fixed_in=None,
    targets=(
        Target(
            _conv.TARGET,
            wrapper=_conv.make_wrapper(_conv.LISTS, NAME),
            params=_conv.PARAMS,
            check=_conv.check_tables,
        ),
    ),
    notes=(
        "Measured on peft 0.19.0-0.21.2 with transformers 5.17.0 and 5.24.0; peft 0.18.x has no conversion. "
        "Shares its converter with peft-moe-regex-targets (regex strings); the two compose in any order. "
        "Qwen2-MoE is not in PEFT's conversion table (its shared_expert is untouched by PEFT and by this patch). "
        "PEFT's own tests of 0.21.2 run with this record applied too (tests/upstream/peft, ALSO_PATCHED)."
    ),
    differences=(
        "Bare names (gate_proj, up_proj, down_proj, and \"all-linear\") also keep the dense MLPs and shared experts "
        "they name, as they did before fusion; PEFT 0.19.0-0.21.2 drops those modules, and the proposal in peft "
        "issue 3711 leaves bare names on PEFT's parameter path. Fully qualified names of real modules stay module "
        "targets, as that proposal does."
    ),
    replaces=_REPLACES,
)
