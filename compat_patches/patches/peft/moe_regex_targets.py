"""peft-moe-regex-targets: a regex ``target_modules`` keeps its exact scope on Transformers-5 fused MoE experts.

Transformers 5 packs the experts of Qwen-style and Mixtral-style MoE blocks into 3-D parameters
(``mlp.experts.gate_up_proj`` = gate_proj + up_proj of every expert, ``mlp.experts.down_proj``). PEFT
rewrites a LoRA config written for the per-expert (v4) names into ``target_parameters`` on the fused
names in ``peft.utils.transformers_weight_conversion.convert_peft_config_for_transformers``. With a
regex string as ``target_modules`` that rewrite is wrong in every release that has it (measured,
transformers 5.17.0):

- peft 0.19.0 - 0.19.1: ``set(peft_config.target_modules)`` turns the regex into a set of single
  characters; layer-index modules (``model.layers.0``) then "end with" ``.0`` and PEFT raises
  ``Target module Qwen3MoeDecoderLayer(...) is not supported``, even for a regex naming only attention.
- peft 0.20.0 - 0.21.2 (newest): ``_resolve_string_target_modules`` reduces the regex to LEAF names
  (``q_proj``, ``gate_up_proj``...), so ``model\\.layers\\.0\\.self_attn\\.q_proj`` puts LoRA on the
  ``q_proj`` of EVERY layer, and the experts of every layer get LoRA; ``".*"`` raises
  ``target_modules should not contain an empty string``.

The wrapper resolves the regex once (compiled once) against the model: real module names stay targeted
through the user's own regex (PEFT fullmatches it later, exactly as without fusion); fused expert
parameters whose reconstructed pre-fusion names (``...mlp.experts.gate_proj``, or all of
``...mlp.experts.<e>.gate_proj``) match become ``target_parameters`` by FULL name; a fused gate+up pair
gets doubled rank and alpha (alpha/r unchanged) through one ``rank_pattern``/``alpha_pattern`` key that
matches exactly those parameters. ``"all-linear"``, lists/sets, invalid regexes and models PEFT does
not convert go to PEFT's own converter unchanged. A regex selecting half of a fused pair, or some
experts of a packed tensor, raises ValueError naming the parameter.

No heavy import at module level.
"""

import sys

from compat_patches.core import Patch, Target

__all__ = ["PATCH", "resolve_regex_targets", "convert_regex_peft_config"]

_CONVERSION_MODULE = "peft.utils.transformers_weight_conversion"
_PEFT_TABLES = (
    "_MODEL_TO_CONVERSION_PATTERN",
    "_MOE_TARGET_MODULE_MAPPING",
    "_MOE_FUSED_TARGETS",
    "get_checkpoint_conversion_mapping",
)
_ALL_LINEAR = "all-linear"


def _strip_base_layer(name):
    # a second adapter sees PEFT wrappers: model.layers.0.mlp.experts.base_layer.gate_up_proj
    if ".base_layer" in name:
        name = name.replace(".base_layer", "")
    return name


def _exclusion(exclude_modules):
    """A predicate mirroring PEFT's exclude_modules check (regex compiled once)."""
    if not exclude_modules:
        return None
    if isinstance(exclude_modules, str):
        import re

        return re.compile(exclude_modules).fullmatch
    names = set(exclude_modules)
    suffixes = tuple(f".{n}" for n in names)
    return lambda key: key in names or key.endswith(suffixes)


def resolve_regex_targets(
    pattern,
    model,
    target_module_mapping,
    fused_targets,
    *,
    exclude_modules=None,
    r=8,
    lora_alpha=8,
    rank_pattern=None,
    alpha_pattern=None,
    pattern_key=None,
):
    """Resolve a compiled `pattern` against `model` for a fused-MoE model family.

    Args:
        pattern: a compiled regex (``re.Pattern``), used with ``fullmatch`` like PEFT does.
        target_module_mapping: PEFT's ``{v4 name: v5 name}`` for the family (``{"gate_proj": "gate_up_proj", ...}``).
        fused_targets: PEFT's ``{v5 fused name: [v4 names, in order]}``.
        r, lora_alpha, rank_pattern, alpha_pattern: the LoRA config's values; per-branch rank/alpha of a
            fused pair come from the user's patterns applied to the reconstructed v4 names.
        pattern_key: PEFT's ``get_pattern_key`` (injected to keep this function import-free).

    Returns a dict:
        ``modules``: full names of real modules the regex matches (as PEFT will match them),
        ``converted_modules``: modules matched by their v4 name whose target is now a parameter (router),
        ``parameters``: ``{full parameter name: (rank, alpha, n_fused)}`` to target.
    Raises ValueError when the regex selects half of a fused pair or a subset of packed experts.
    """
    fullmatch = pattern.fullmatch
    excluded = _exclusion(exclude_modules)
    rank_pattern = rank_pattern or {}
    alpha_pattern = alpha_pattern or {}

    def branch_r_alpha(key):
        if pattern_key is None:
            return r, lora_alpha
        rk = pattern_key(rank_pattern.keys(), key) if rank_pattern else key
        ak = pattern_key(alpha_pattern.keys(), key) if alpha_pattern else key
        return rank_pattern.get(rk, r), alpha_pattern.get(ak, lora_alpha)

    # v5 name -> ordered v4 names fused into it; indexed by the last dotted component for speed
    new_to_olds = {}
    for old, new in target_module_mapping.items():
        new_to_olds.setdefault(new, [])
        if old not in new_to_olds[new]:
            new_to_olds[new].append(old)
    for new, olds in fused_targets.items():
        new_to_olds[new] = list(olds)
    by_leaf = {}
    for new, olds in new_to_olds.items():
        by_leaf.setdefault(new.rpartition(".")[2], []).append((new, tuple(olds)))

    modules = [name for name, _ in model.named_modules() if fullmatch(name)]

    def probe(prefix, old, param):
        key = f"{prefix}.{old}" if prefix else old
        if excluded is not None and excluded(key):
            return False
        if fullmatch(key):
            return True
        if param.dim() != 3:
            return False
        # v4 per-expert form: <prefix>.<expert>.<old>; packed experts share one LoRA, so all or none
        n_experts = param.shape[0]
        hits = [e for e in range(n_experts) if fullmatch(f"{prefix}.{e}.{old}")]
        if not hits:
            return False
        if len(hits) != n_experts:
            raise ValueError(
                f"peft-moe-regex-targets: target_modules regex {pattern.pattern!r} selects experts {hits} of "
                f"{n_experts} in {prefix}.<expert>.{old}, but Transformers 5 packs all experts into one "
                f"parameter and LoRA on it covers every expert. Select all experts or none."
            )
        return True

    parameters = {}
    converted_modules = []
    for raw_name, param in model.named_parameters():
        name = _strip_base_layer(raw_name)
        candidates = by_leaf.get(name.rpartition(".")[2])
        if not candidates:
            continue
        for new, olds in candidates:
            if name == new:
                prefix = ""
            elif name.endswith("." + new):
                prefix = name[: -len(new) - 1]
            else:
                continue
            matched = [old for old in olds if probe(prefix, old, param)]
            if not matched:
                continue
            if len(matched) != len(olds):
                missing = [old for old in olds if old not in matched]
                raise ValueError(
                    f"peft-moe-regex-targets: fused parameter {name!r}: target_modules regex "
                    f"{pattern.pattern!r} matches {', '.join(f'{prefix}.{m}' for m in matched)} but not "
                    f"{', '.join(f'{prefix}.{m}' for m in missing)}. Transformers 5 fuses "
                    f"{' and '.join(olds)} into this one parameter, which takes one LoRA for all of them: "
                    f"match all of {list(olds)} there, or none."
                )
            branches = {branch_r_alpha(f"{prefix}.{old}" if prefix else old) for old in olds}
            if len(branches) != 1:
                raise ValueError(
                    f"peft-moe-regex-targets: rank_pattern/alpha_pattern give different (r, alpha) {sorted(branches)} "
                    f"to {list(olds)} under {prefix!r}, which are fused into {name!r}; a fused parameter has one "
                    f"rank and one scaling. Give them the same r and lora_alpha."
                )
            (br, ba), = branches
            parameters[name] = (br * len(olds), ba * len(olds), len(olds))
            if "." in new:
                # e.g. the router: v4 module `mlp.gate` -> v5 parameter `mlp.gate.weight`
                converted_modules.append(name[: -len(new.rpartition(".")[2]) - 1])
    return {"modules": modules, "converted_modules": converted_modules, "parameters": parameters}


def _family_tables(conversion_module, model):
    """PEFT's own tables for this model, or None when PEFT's converter would leave the config alone."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        return None
    if conversion_module.get_checkpoint_conversion_mapping(model_type) is None:
        return None
    base = conversion_module._MODEL_TO_CONVERSION_PATTERN.get(model_type)
    if base is None:
        return None
    mapping = conversion_module._MOE_TARGET_MODULE_MAPPING.get(base)
    fused = conversion_module._MOE_FUSED_TARGETS.get(base, {})
    if not mapping or not fused:
        return None
    return mapping, fused


def convert_regex_peft_config(peft_config, model, conversion_module=None):
    """Convert `peft_config` in place for a regex `target_modules`; return False if not ours to handle.

    False means: hand the call to PEFT's original converter (not LoRA, not a regex string, "all-linear",
    invalid regex, or a model family PEFT does not convert).
    """
    import re

    if conversion_module is None:
        conversion_module = sys.modules.get(_CONVERSION_MODULE)
        if conversion_module is None:
            return False
    peft_type = getattr(peft_config, "peft_type", None)
    if getattr(peft_type, "value", peft_type) != "LORA":
        return False
    target = getattr(peft_config, "target_modules", None)
    if not isinstance(target, str) or target.lower() == _ALL_LINEAR:
        return False
    try:
        pattern = re.compile(target)
    except re.error:
        return False
    tables = _family_tables(conversion_module, model)
    if tables is None:
        return False
    mapping, fused = tables

    try:
        from peft.utils.other import get_pattern_key
    except ImportError:  # pragma: no cover - present in every affected release
        get_pattern_key = None

    resolved = resolve_regex_targets(
        pattern,
        model,
        mapping,
        fused,
        exclude_modules=getattr(peft_config, "exclude_modules", None),
        r=peft_config.r,
        lora_alpha=peft_config.lora_alpha,
        rank_pattern=getattr(peft_config, "rank_pattern", None),
        alpha_pattern=getattr(peft_config, "alpha_pattern", None),
        pattern_key=get_pattern_key,
    )
    parameters = resolved["parameters"]
    if not parameters:
        # no fused parameter selected: the regex keeps plain PEFT semantics on real modules (and PEFT's own
        # "not found" error when it matches nothing)
        return True

    converted = sorted(set(resolved["converted_modules"]))
    if converted:
        # these matched as modules by their v4 name but are now targeted as parameters: keep them out
        excluded = "|".join(re.escape(n) for n in converted)
        peft_config.target_modules = rf"(?!(?:{excluded})\Z)(?:{target})"

    existing = getattr(peft_config, "target_parameters", None) or []
    peft_config.target_parameters = set(existing) | set(parameters)

    # one rank/alpha key per (rank, alpha) value for the fused params, matching exactly their full names;
    # first in the dicts so that get_pattern_key (first match wins) picks it over a broader user key
    groups = {}
    for name, (rank, alpha, n_fused) in parameters.items():
        if n_fused > 1:
            groups.setdefault((rank, alpha), []).append(name)
    rank_pattern = {}
    alpha_pattern = {}
    for (rank, alpha), names in sorted(groups.items()):
        key = "(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")"
        rank_pattern[key] = rank
        alpha_pattern[key] = alpha
    rank_pattern.update({k: v for k, v in (getattr(peft_config, "rank_pattern", None) or {}).items()
                         if k not in rank_pattern})
    alpha_pattern.update({k: v for k, v in (getattr(peft_config, "alpha_pattern", None) or {}).items()
                          if k not in alpha_pattern})
    peft_config.rank_pattern = rank_pattern
    peft_config.alpha_pattern = alpha_pattern
    return True


def _convert_wrapper(wrapped, instance, args, kwargs):
    peft_config = args[0] if args else kwargs.get("peft_config")
    model = args[1] if len(args) > 1 else kwargs.get("model")
    module = sys.modules.get(getattr(wrapped, "__module__", None) or _CONVERSION_MODULE)
    if peft_config is not None and model is not None and module is not None:
        if convert_regex_peft_config(peft_config, model, module):
            return None
    return wrapped(*args, **kwargs)


def _check_tables(original):
    module = sys.modules.get(getattr(original, "__module__", None) or "")
    if module is None:
        return f"module of {original!r} is not imported"
    missing = [name for name in _PEFT_TABLES if not hasattr(module, name)]
    if missing:
        return f"{module.__name__} lacks {', '.join(missing)} (PEFT's MoE conversion tables moved)"
    return None


PATCH = Patch(
    name="peft-moe-regex-targets",
    summary=(
        "regex target_modules on Transformers-5 fused MoE experts: LoRA on exactly the matched modules and "
        "expert parameters (layer scope kept, gate+up fused rank/alpha doubled), not a char set (0.19) or "
        "every layer (0.20+)"
    ),
    upstream="https://github.com/huggingface/peft/pull/3232",  # fixed the 0.19 crash only; the scope loss is unfixed
    affected={"peft": ">=0.19.0.dev0", "transformers": ">=5.0.0rc0"},
    fixed_in=None,
    targets=(
        Target(
            f"{_CONVERSION_MODULE}:convert_peft_config_for_transformers",
            wrapper=_convert_wrapper,
            params=("peft_config", "model", "conversions"),
            check=_check_tables,
        ),
    ),
    notes=(
        "Measured with transformers 5.17.0: peft 0.19.0/0.19.1 raise (regex -> set of characters); peft "
        "0.20.0-0.21.2 lose the layer scope of the regex (leaf-name resolution). PEFT 0.18 and older have "
        "no conversion. Qwen3.5-MoE (model_type qwen3_5_moe_text) is not in PEFT's conversion table: "
        "untouched by PEFT and by this patch."
    ),
)
