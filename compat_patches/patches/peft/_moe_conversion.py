"""One converter for PEFT's Transformers-5 MoE target conversion, shared by two records.

PEFT rewrites a LoRA config written for the per-expert (v4) module names into ``target_parameters`` on
the fused v5 parameters in ``peft.utils.transformers_weight_conversion.convert_peft_config_for_transformers``
(peft >= 0.19). It reduces every target to its LAST name component before mapping it, which loses the
scope of a regex (record ``peft-moe-regex-targets``) and moves fully qualified names of real modules that
happen to end in an expert name (DeepSeek-V3 ``shared_experts.gate_proj``, a dense ``mlp.gate_proj``) onto
the routed experts of every layer (record ``peft-shared-expert-targets``).

Both records wrap that one function with a wrapper made here (:func:`make_wrapper`); each wrapper handles
only its own kind of ``target_modules`` (a regex string / a list, set or tuple) and hands every other call
to what it wraps, so the two compose in any order, and reverting either leaves the other working.

The resolution is one function for every kind (:func:`resolve`): PEFT's own matcher
(``check_target_module_exists``: regex fullmatch, suffix match of list entries, ``exclude_modules``,
``modules_to_save``, ``layers_to_transform``) is asked about every real module name and about the pre-fusion
names rebuilt from every fused parameter (``<container>.gate_proj``, or all of ``<container>.<e>.gate_proj``).
What it selects is written back in PEFT's own representation where that has the same scope (leaf names in
``target_modules`` / ``target_parameters``, PEFT's ``.*\\.gate_up_proj`` rank key), otherwise as full
names (:func:`write_config`).

No heavy import at module level (every patched process imports the records).
"""

import sys

from compat_patches.core.log import WARNING, log

CONVERSION_MODULE = "peft.utils.transformers_weight_conversion"
TARGET = f"{CONVERSION_MODULE}:convert_peft_config_for_transformers"
PARAMS = ("peft_config", "model", "conversions")
PEFT_TABLES = (
    "_MODEL_TO_CONVERSION_PATTERN",
    "_MOE_TARGET_MODULE_MAPPING",
    "_MOE_FUSED_TARGETS",
    "get_checkpoint_conversion_mapping",
)
ALL_LINEAR = "all-linear"
REGEX = "regex"
LISTS = "lists"
_PATTERN_WARNING = "did not match any targeted module"
_peft_warns_on_parameter_keys = []  # cache: [bool] once PEFT's source was read


def target_kind(target_modules):
    """REGEX for a regex string; LISTS for a non-empty list/set/tuple of names or "all-linear" (which PEFT
    itself resolves to a set of leaf names first); else None (left to PEFT)."""
    if isinstance(target_modules, str):
        return LISTS if target_modules.lower() == ALL_LINEAR else REGEX
    if isinstance(target_modules, (list, set, tuple, frozenset)) and target_modules:
        if all(isinstance(t, str) for t in target_modules):
            return LISTS
    return None


def strip_base_layer(name):
    # a second adapter sees PEFT wrappers: model.layers.0.mlp.experts.base_layer.gate_up_proj
    while ".base_layer" in name:
        name = name.replace(".base_layer", "")
    return name


def family_tables(conversion_module, model):
    """PEFT's ``(mapping, fused)`` tables for this model, or None where PEFT's converter does nothing."""
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


class Resolution:
    """What a config selects on a model: real modules, and converted parameters with their (r, alpha, n)."""

    __slots__ = ("modules", "parameters", "module_names", "parameter_names", "converted_modules", "rebuilt",
                 "used_keys")

    def __init__(self, modules, parameters, module_names, parameter_names, converted_modules, rebuilt,
                 used_keys=()):
        self.modules = modules                    # full names of real modules selected (as PEFT will match)
        self.parameters = parameters              # {full v5 parameter name: (rank, alpha, n_fused)}
        self.module_names = module_names          # every module name of the model (PEFT's key list)
        self.parameter_names = parameter_names    # every parameter name, `.base_layer` stripped
        self.converted_modules = converted_modules  # modules PEFT targets as a parameter now (the router)
        self.rebuilt = rebuilt                    # the v4 names (rebuilt from v5 parameters) that matched
        self.used_keys = set(used_keys)           # user rank/alpha keys applied to rebuilt v4 names


def _new_to_olds(mapping, fused):
    """v5 name -> ordered v4 names fused into it, indexed by the last dotted component."""
    new_to_olds = {}
    for old, new in mapping.items():
        new_to_olds.setdefault(new, [])
        if old not in new_to_olds[new]:
            new_to_olds[new].append(old)
    for new, olds in fused.items():
        new_to_olds[new] = list(olds)
    by_leaf = {}
    for new, olds in new_to_olds.items():
        by_leaf.setdefault(new.rpartition(".")[2], []).append((new, tuple(olds)))
    return by_leaf


def _may_name_experts(target_modules):
    """Whether a list entry can select a per-expert v4 name (`<...>.<digits>.<name>`) that its base name
    (`<...>.<name>`) does not: only an entry whose next-to-last component is an expert index."""
    if isinstance(target_modules, str):
        return True
    for entry in target_modules:
        parts = entry.rsplit(".", 2)
        if len(parts) >= 2 and parts[-2].isdigit():
            return True
    return False


def resolve(peft_config, model, mapping, fused, *, matches, owner, pattern_key=None):
    """Resolve `peft_config`'s targets on `model` for a fused-MoE family.

    `matches(key)` is PEFT's ``check_target_module_exists(peft_config, key)`` (truthy when PEFT would target
    a module of that name); `mapping`/`fused` are PEFT's tables for the family; `pattern_key` is PEFT's
    ``get_pattern_key`` (per-branch r/alpha of a fused pair from the user's rank/alpha patterns, applied to
    the rebuilt v4 names). Raises ValueError when a target selects half of a fused pair (PEFT's own message
    first), a subset of the experts packed in one parameter, or different r/alpha for fused branches.
    """
    r, lora_alpha = peft_config.r, peft_config.lora_alpha
    rank_pattern = getattr(peft_config, "rank_pattern", None) or {}
    alpha_pattern = getattr(peft_config, "alpha_pattern", None) or {}
    target = peft_config.target_modules

    used_keys = set()

    def branch_r_alpha(key):
        if pattern_key is None:
            return r, lora_alpha
        rk = pattern_key(rank_pattern.keys(), key) if rank_pattern else key
        ak = pattern_key(alpha_pattern.keys(), key) if alpha_pattern else key
        used_keys.update(k for k in (rk, ak) if k != key)
        return rank_pattern.get(rk, r), alpha_pattern.get(ak, lora_alpha)

    rebuilt = set()
    per_expert = _may_name_experts(target)

    def probe(prefix, old, param):
        key = f"{prefix}.{old}" if prefix else old
        if matches(key):
            rebuilt.add(key)
            return True
        if param.dim() != 3 or not per_expert:
            return False
        # v4 per-expert form: <prefix>.<expert>.<old>; packed experts share one LoRA, so all or none
        n_experts = param.shape[0]
        hits = [e for e in range(n_experts) if matches(f"{prefix}.{e}.{old}")]
        if not hits:
            return False
        if len(hits) != n_experts:
            raise ValueError(
                f"{owner}: target_modules={target!r} selects experts {hits} of {n_experts} in "
                f"{prefix}.<expert>.{old}, but Transformers 5 packs all experts into one parameter and LoRA "
                f"on it covers every expert. Select all experts or none."
            )
        rebuilt.update(f"{prefix}.{e}.{old}" for e in hits)
        return True

    by_leaf = _new_to_olds(mapping, fused)
    parameters = {}
    converted_modules = set()
    parameter_names = []
    for raw_name, param in model.named_parameters():
        name = strip_base_layer(raw_name)
        parameter_names.append(name)
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
            if "." in new:  # the router: v4 module `mlp.gate` -> v5 parameter `mlp.gate.weight`
                converted_modules.add(name[: -len(new.rpartition(".")[2]) - 1])
            matched = [old for old in olds if probe(prefix, old, param)]
            if not matched:
                continue
            if len(matched) != len(olds):
                missing = [old for old in olds if old not in matched]
                raise ValueError(
                    # PEFT's own message first (its tests match it), then where and why
                    f"Cannot convert PEFT target(s) {', '.join(sorted(matched))} without also targeting "
                    f"{', '.join(sorted(missing))} because they are fused into {new.rpartition('.')[2]}. "
                    f"({owner}: in {name!r}, target_modules={target!r} selects "
                    f"{', '.join(f'{prefix}.{m}' for m in matched)} but not "
                    f"{', '.join(f'{prefix}.{m}' for m in missing)}; Transformers 5 fuses {' and '.join(olds)} "
                    f"into this one parameter, which takes one LoRA for all of them: select all of "
                    f"{list(olds)} there, or none.)"
                )
            branches = {branch_r_alpha(f"{prefix}.{old}" if prefix else old) for old in olds}
            if len(branches) != 1:
                raise ValueError(
                    f"{owner}: rank_pattern/alpha_pattern give different (r, alpha) {sorted(branches)} to "
                    f"{list(olds)} under {prefix!r}, which are fused into {name!r}; a fused parameter has one "
                    f"rank and one scaling. Give them the same r and lora_alpha."
                )
            (br, ba), = branches
            parameters[name] = (br * len(olds), ba * len(olds), len(olds))

    module_names = [name for name, _ in model.named_modules()]
    modules = [name for name in module_names
               if name and name not in converted_modules and matches(name)]
    return Resolution(modules, parameters, module_names, parameter_names, converted_modules, rebuilt, used_keys)


def _list_scope(entries, names, matches_with):
    return {n for n in names if n and matches_with(entries, n)}


def write_config(peft_config, resolution, kind, matches_with):
    """Write `resolution` into `peft_config` (in place), in PEFT's representation where it has the same scope.

    `matches_with(target_modules, key)` is PEFT's matcher on a copy of the config with other
    ``target_modules``. Returns the rank/alpha keys added for fused parameters.
    """
    import re

    modules = set(resolution.modules)
    # --- modules: PEFT's representation (leaf names of the regex's modules / the list's entries that were
    # not converted to parameters) where it selects exactly the same modules; full names otherwise
    if kind == REGEX:
        candidate = {name.rpartition(".")[2] for name in modules}
    else:
        entries = list(dict.fromkeys(peft_config.target_modules))
        candidate = set()
        for entry in entries:
            hits_module = any(n == entry or n.endswith("." + entry) for n in modules)
            hits_converted = _entry_converted(entry, resolution)
            if hits_module or not hits_converted:
                candidate.add(entry)
    if not modules:
        new_modules = set()  # only parameters selected: PEFT's own representation, and no "no module matched"
    elif kind == LISTS and not any(matches_with(candidate, n) for n in resolution.converted_modules):
        # the kept entries select what all entries select among real modules (the dropped ones selected
        # only rebuilt or converted names), so only the converted modules (the router) could differ
        new_modules = candidate
    elif kind == REGEX and _list_scope(candidate, resolution.module_names, matches_with) == modules:
        new_modules = candidate
    else:
        new_modules = set(modules)

    # --- parameters: PEFT's leaf names ("gate_up_proj", "gate.weight") where they select exactly these
    parameters = resolution.parameters
    default = all(rank == peft_config.r * n and alpha == peft_config.lora_alpha * n
                  for rank, alpha, n in parameters.values())
    leaf_of = {}
    for name in parameters:
        for leaf in _mapped_suffixes(name, resolution):
            leaf_of[name] = leaf
    leaves = set(leaf_of.values())
    leaf_scope = {p for p in resolution.parameter_names
                  if any(p == t or p.endswith("." + t) for t in leaves)}
    peft_form = default and len(leaf_of) == len(parameters) and leaf_scope == set(parameters)
    existing = set(getattr(peft_config, "target_parameters", None) or [])
    added_keys = []
    rank_pattern = {}
    alpha_pattern = {}
    if peft_form:
        new_parameters = existing | leaves
        for leaf in sorted(leaves):
            fused_n = {n for name, (_, _, n) in parameters.items() if leaf_of[name] == leaf}
            n = max(fused_n)
            if n > 1:
                key = rf".*\.{re.escape(leaf)}"  # PEFT's key, PEFT's value
                rank_pattern[key] = peft_config.r * n
                alpha_pattern[key] = peft_config.lora_alpha * n
                added_keys.append(key)
    else:
        new_parameters = existing | set(parameters)
        groups = {}
        for name, (rank, alpha, n) in parameters.items():
            if n > 1 or (rank, alpha) != (peft_config.r, peft_config.lora_alpha):
                groups.setdefault((rank, alpha), []).append(name)
        for (rank, alpha), names in sorted(groups.items()):
            key = "(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")"
            rank_pattern[key] = rank
            alpha_pattern[key] = alpha
            added_keys.append(key)
    # ours first: PEFT's get_pattern_key takes the first key that matches
    for attr, ours in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        user = dict(getattr(peft_config, attr, None) or {})
        merged = dict(ours)
        merged.update({k: v for k, v in user.items() if k not in merged})
        setattr(peft_config, attr, merged)
    peft_config.target_modules = new_modules
    peft_config.target_parameters = new_parameters
    return added_keys


def _mapped_suffixes(name, resolution):
    # the v5 name a converted parameter was matched by ("gate_up_proj", "down_proj", "gate.weight")
    leaf = name.rpartition(".")[2]
    if leaf == "weight":
        container = name.rpartition(".")[0]
        if container in resolution.converted_modules:
            return (f"{container.rpartition('.')[2]}.weight",)
    return (leaf,)


def _entry_converted(entry, resolution):
    """Whether a list entry selected a converted module (the router) or a rebuilt pre-fusion name."""
    suffix = "." + entry
    return any(key == entry or key.endswith(suffix) for key in resolution.rebuilt)


def _warns_on_parameter_keys():
    """Whether this PEFT warns about rank/alpha keys that match only parameters (its check reads modules)."""
    if not _peft_warns_on_parameter_keys:
        try:
            import inspect

            from peft.tuners.tuners_utils import BaseTuner

            _peft_warns_on_parameter_keys.append(_PATTERN_WARNING in inspect.getsource(BaseTuner.inject_adapter))
        except Exception:  # noqa: BLE001 - only decides whether to explain a warning
            _peft_warns_on_parameter_keys.append(False)
    return _peft_warns_on_parameter_keys[0]


def convert(peft_config, model, conversion_module, kind, owner):
    """Convert `peft_config` in place if its target_modules are of `kind`; False: hand the call to PEFT."""
    import copy

    peft_type = getattr(peft_config, "peft_type", None)
    if getattr(peft_type, "value", peft_type) != "LORA":
        return False
    target = getattr(peft_config, "target_modules", None)
    if target_kind(target) != kind:
        return False
    if kind == REGEX:
        import re

        try:
            re.compile(target)
        except re.error:
            return False
    tables = family_tables(conversion_module, model)
    if tables is None:
        return False
    mapping, fused = tables
    try:
        from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists
    except ImportError:  # pragma: no cover - present in every affected release
        return False
    if isinstance(target, str) and kind == LISTS:
        # "all-linear", as PEFT (>= 0.20) resolves it: the leaf names of the Linear layers, plus the v4 names
        # that were Linear before fusion (the experts, the router); then the list path
        resolved = _maybe_include_all_linear_layers(copy.copy(peft_config), model).target_modules
        peft_config.target_modules = {n.rpartition(".")[2] for n in resolved} | set(mapping)
    try:
        from peft.utils.other import get_pattern_key
    except ImportError:  # pragma: no cover
        get_pattern_key = None

    def matches(key):
        return bool(check_target_module_exists(peft_config, key))

    probe_config = copy.copy(peft_config)

    def matches_with(target_modules, key):
        probe_config.target_modules = target_modules
        return bool(check_target_module_exists(probe_config, key))

    resolution = resolve(peft_config, model, mapping, fused, matches=matches, owner=owner,
                         pattern_key=get_pattern_key)
    if not resolution.modules and not resolution.parameters:
        # nothing selected: leave the config alone for PEFT's own "Target modules ... not found" error
        return True
    added = write_config(peft_config, resolution, kind, matches_with)
    if added and _warns_on_parameter_keys():
        import re

        # the user's keys that set the rank of pre-fusion names and match no module target: PEFT warns on them too
        yours = sorted(k for k in resolution.used_keys
                       if not any(re.match(rf"(.*\.)?({k})$", m) for m in resolution.modules))
        fused = sorted(n for n, (_, _, k) in resolution.parameters.items() if k > 1)
        log(WARNING, "%s: expect PEFT's warning that rank_pattern/alpha_pattern keys %s 'did not match any "
                     "targeted module': PEFT checks these keys against module targets only, and they are applied "
                     "to the fused expert parameters (%s%s): rank and alpha doubled for a fused gate+up pair "
                     "(alpha/r unchanged)%s.", owner, added + yours, ", ".join(fused[:2]),
            ", ..." if len(fused) > 2 else "",
            f"; your keys {yours} set the rank of the pre-fusion names" if yours else "")
    return True


def make_wrapper(kind, owner):
    """The wrapt-style wrapper of ``convert_peft_config_for_transformers`` for one kind of target_modules."""

    def wrapper(wrapped, instance, args, kwargs):
        peft_config = args[0] if args else kwargs.get("peft_config")
        model = args[1] if len(args) > 1 else kwargs.get("model")
        module = sys.modules.get(getattr(wrapped, "__module__", None) or CONVERSION_MODULE)
        if peft_config is not None and model is not None and module is not None:
            if convert(peft_config, model, module, kind, owner):
                return None
        return wrapped(*args, **kwargs)

    wrapper.__name__ = f"_convert_{kind}_wrapper"
    wrapper.__qualname__ = wrapper.__name__
    return wrapper


def check_tables(original):
    """Drift check shared by both records: PEFT's conversion tables are still where the converter reads them."""
    from compat_patches.core.source_check import defines

    module = getattr(original, "__module__", None) or ""
    missing = [name for name in PEFT_TABLES if not defines(f"{module}:{name}")]
    if missing:
        return f"{module} lacks {', '.join(missing)} (PEFT's MoE conversion tables moved)"
    return None
