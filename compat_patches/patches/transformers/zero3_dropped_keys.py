"""transformers-zero3-dropped-keys: a DeepSpeed ZeRO-3 load keeps the keys the normal load keeps.

Under ZeRO-3, ``from_pretrained`` sends each checkpoint shard through
``transformers.integrations.deepspeed._apply_weight_conversions_to_state_dict`` instead of
``core_model_loading``. Both rename every key with the model's conversion mapping, but only the
normal load falls back to the checkpoint's own name when the renamed key names no parameter and the
original does (``convert_and_load_state_dict_in_model``: "Key should probably not have been renamed").
On 5.4.0 - 5.5.4 the ``qwen3_5_text`` mapping renames ``^model.language_model`` to ``model``, and
``get_model_conversion_mapping`` applies it to the VL models that contain that text model, so a
``Qwen3_5ForConditionalGeneration`` / ``Qwen3_5MoeForConditionalGeneration`` checkpoint in the hub
layout loses every language-model weight (embed_tokens, each layer, norm): ZeRO-3 trains on a random
language model and the load report only says MISSING. 5.5.4 (its ``^model.language_model.`` rename)
drops the save_pretrained layout too. 5.6.0 replaced the rename by an anchored ``PrefixChange``.
5.0.0, the function's first release, has a second cause: for a model with converters (Qwen2-MoE,
Mixtral...) it collects every plain key as a renaming, skips renamings when it converts, and its
closing loop reads the dict it has already emptied, so only the converted experts survive (a fused
checkpoint loses every key). 5.1.x rewrote that path but unpacks ``WeightConverter.convert``'s dict
as a pair (5.0.0's return shape): every converted layer raises, so a per-expert MoE checkpoint (the
hub layout of Qwen2/Qwen3-MoE, Mixtral...) cannot load under ZeRO-3; 5.2.0 fixed that line.

The patch wraps that function and applies the normal load's fallback to what it dropped: a
checkpoint key that, renamed as the normal load renames it (falling back to its own name), names a
parameter and needs no converter is kept under that name, the same tensor object. Keys the release
converted or kept are untouched. On 5.1.x the release gets every key but the converted layers',
which are converted as 5.2.0 converts them.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces

FUNCTION = "transformers.integrations.deepspeed:_apply_weight_conversions_to_state_dict"
PARAMS = ("model", "state_dict", "weight_mapping")
TEXT_MAPPING = "qwen3_5_text"
LANGUAGE_MODEL_RENAME = "^model.language_model"  # 5.4.0's source pattern; 5.5.x adds a trailing "."


def _bind(args, kwargs):
    values = dict(zip(PARAMS, args))
    values.update(kwargs)
    return values["model"], values["state_dict"], values["weight_mapping"]


def _split(weight_mapping):
    """(renamings, converters) of a conversion mapping, as the release splits it."""
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    return ([entry for entry in weight_mapping if isinstance(entry, WeightRenaming)],
            [entry for entry in weight_mapping if isinstance(entry, WeightConverter)])


def _keep_named_keys(wrapped, instance, args, kwargs):
    model, state_dict, weight_mapping = _bind(args, kwargs)
    checkpoint = list(state_dict.items())  # the release pops the caller's dict as it goes
    result = wrapped(*args, **kwargs)
    from transformers.core_model_loading import rename_source_key

    renamings, converters = _split(weight_mapping)
    params = dict.fromkeys(model.state_dict(), True)  # names only: rename_source_key tests `.get() is not None`
    prefix = model.base_model_prefix
    for key, tensor in checkpoint:
        # the normal load's step 1 (core_model_loading): rename, else keep a key that names a parameter
        renamed, pattern = rename_source_key(key, renamings, converters, prefix, params)
        if renamed not in params and key in params:
            renamed, pattern = rename_source_key(key, [], [], prefix, params)
        if renamed in params and pattern is None:  # converted keys stay the release's
            result.setdefault(renamed, tensor)
    return result


def _convert_layers_as_5_2(wrapped, instance, args, kwargs):
    """5.1.x: the converted layers as 5.2.0 converts them; every other key through the release."""
    model, state_dict, weight_mapping = _bind(args, kwargs)
    from transformers.core_model_loading import WeightConverter, dot_natural_key, rename_source_key

    renamings, converters = _split(weight_mapping)
    if not converters:  # the release's fast path converts nothing
        return wrapped(*args, **kwargs)
    params = dict.fromkeys(model.state_dict(), True)
    layers = {}
    for key in sorted(state_dict, key=dot_natural_key):
        renamed, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, params)
        if pattern is not None and renamed in params:
            layers.setdefault(renamed, []).append((key, pattern, state_dict.pop(key)))
    result = wrapped(model, state_dict, weight_mapping)  # its checks, renames and metadata; no layer left
    by_pattern = {pattern: converter for converter in converters for pattern in converter.source_patterns}
    for renamed, sources in layers.items():
        converter = by_pattern[sources[0][1]]
        layer = WeightConverter(source_patterns=converter.source_patterns,
                                target_patterns=converter.target_patterns, operations=converter.operations)
        for key, pattern, tensor in sources:
            layer.add_tensor(renamed, key, pattern, tensor)
        try:
            realized = layer.convert(renamed, model=model, config=model.config)
        except Exception as exc:  # the release's own message
            raise RuntimeError(
                f"Failed to apply weight conversion for '{renamed}'. This likely means the checkpoint format is "
                f"incompatible with the current model version. Error: {exc}") from exc
        for target, value in realized.items():
            result[target] = value[0] if isinstance(value, list) else value
    return result


def _returns_a_dict(original):
    """The wrapper adds to the returned dict: a release that streams (a generator, 5.23.0 on) differs."""
    import inspect  # not at import time: importing us pulls in none of inspect's dependencies

    if inspect.isgeneratorfunction(original):
        return "_apply_weight_conversions_to_state_dict is a generator here, not a dict-returning function"
    return None


def _drops_keys(original):
    """Neither cause here: 5.0.0's function (it skips every renamed key of a model with converters)
    or a qwen3_5_text mapping that renames ^model.language_model (5.6.0 made it a PrefixChange)."""
    import importlib
    import sys

    code = getattr(original, "__code__", None)
    if code is not None and "converted_renamed_keys" in code.co_varnames:
        return None
    partial = sys.modules.get("transformers.conversion_mapping")
    if partial is not None and not hasattr(partial, "get_checkpoint_conversion_mapping"):
        return None  # hooked while conversion_mapping itself imports: the measured range decides
    get_checkpoint_conversion_mapping = importlib.import_module(
        "transformers.conversion_mapping").get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    for entry in get_checkpoint_conversion_mapping(TEXT_MAPPING) or ():
        if isinstance(entry, WeightRenaming) and any(
                pattern.startswith(LANGUAGE_MODEL_RENAME) for pattern in entry.source_patterns):
            return None
    return (f"the function keeps renamed keys and the {TEXT_MAPPING!r} mapping no longer renames "
            f"{LANGUAGE_MODEL_RENAME!r}")


def _unpacks_a_pair(original):
    """5.1.0's ``realized_value, _ = mapping.convert(...)``; a build without it converts (None: unreadable)."""
    import inspect

    try:
        source = inspect.getsource(original)
    except (OSError, TypeError):
        return None
    if "realized_value, _ = mapping.convert(" in source:
        return None
    return "the function takes WeightConverter.convert's result as the dict it is"


_REPLACES = Replaces(
    symbols=("transformers.integrations.deepspeed:_apply_weight_conversions_to_state_dict",),
    copies=(
        Copy("OpenRLHF/OpenRLHF", "openrlhf/models/actor.py", "_patch_zero3_weight_mapping", inventory=43,
             what="wraps the function and `.update()`s its result with the checkpoint keys that name a "
                  "parameter; applied on every release, so it breaks where the function became a "
                  "generator (5.23.0 on) and never reverts."),
    ),
    use="compat_patches.apply_all()  # before from_pretrained under a ZeRO-3 DeepSpeed config",
)

PATCH = Patch(
    name="transformers-zero3-dropped-keys",
    summary="DeepSpeed ZeRO-3 from_pretrained keeps Qwen3.5 (MoE) VL language-model weights and loads 5.0/5.1 MoE",
    upstream="https://github.com/huggingface/transformers/issues/45313",
    # measured by calling the function on tiny Qwen3.5 VL, Qwen3.5-MoE VL and Qwen2-MoE checkpoints
    # in every release 5.0.0 - 5.10.0 and 5.15.1, 5.22.2, 5.24.0, 5.25.0 (the rcs have no such
    # function): keys dropped on 5.0.0 (MoE), 5.4.0 and 5.5.0 - 5.5.4 (Qwen3.5 VL), a per-expert MoE
    # checkpoint raises on 5.1.0 (5.1.0 is the only 5.1 release). torch:
    # transformers builds no model without it.
    affected={"transformers": ">=5.0.0,!=5.2.*,!=5.3.*,<5.6.0.dev0", "torch": ">=2.4"},
    targets=(Target(FUNCTION, wrapper=_keep_named_keys, params=PARAMS, check=_returns_a_dict, fixed=_drops_keys,
                    versions="!=5.1.*"),
             Target(FUNCTION, wrapper=_convert_layers_as_5_2, params=PARAMS, check=_returns_a_dict,
                    fixed=_unpacks_a_pair, versions="==5.1.*")),
    differences="The fallback runs after the release's conversion, so a kept key is added at the end "
                "of the returned dict (the loader looks keys up by name; order does not matter there).",
    replaces=_REPLACES,
)
