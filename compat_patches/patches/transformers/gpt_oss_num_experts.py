"""transformers-gpt-oss-num-experts: ``GptOssConfig.num_experts``, an alias of ``num_local_experts``.

Mixtral and MiniMax configs answer ``config.num_experts`` in transformers 5 (``attribute_map =
{"num_experts": "num_local_experts"}``); ``GptOssConfig`` does not until 5.6.0, so MoE code that
reads ``config.num_experts`` (trl's aux-loss in ``sft_trainer.py`` and ``trainer/utils.py``, trl
issue 5754) raises ``AttributeError: 'GptOssConfig' object has no attribute 'num_experts'`` on
5.0.0rc0 - 5.5.4. Transformers PR 45473 (released in 5.6.0) added exactly that ``attribute_map``
entry to ``GptOssConfig``.

``PreTrainedConfig`` applies ``attribute_map`` in two places, and this patch aliases the key at
both, on ``GptOssConfig`` only (subclasses inherit it, as they inherit ``attribute_map``):

* reading: ``GptOssConfig.__getattribute__`` (inherited from ``PreTrainedConfig``; wrapt puts the
  wrapper on ``GptOssConfig`` and revert removes it again) answers ``num_experts`` with
  ``num_local_experts``;
* writing: ``GptOssConfig.__setattr__`` stores a ``num_experts`` value as ``num_local_experts``
  (keyword arguments, ``from_dict`` and ``from_pretrained`` all set attributes this way). Up to
  5.3 the release's own ``__setattr__`` runs with the mapped name (nothing there validates it);
  from 5.4 ``__setattr__`` is huggingface_hub's strict-dataclass one, which validates a value under
  the name it is given *before* ``PreTrainedConfig`` maps it: 5.6 runs the validators of
  ``num_experts`` (none) and stores the value unvalidated, and so does this patch.

The class's ``attribute_map`` dict itself is not touched (the core wraps callables; see the record's
``differences``). Nothing heavy is imported here: the wrappers only touch the objects they are
handed.
"""

import sys

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces

ALIAS = "num_experts"
FIELD = "num_local_experts"
_MODULE = "transformers.models.gpt_oss.configuration_gpt_oss"
_CLASS = _MODULE + ":GptOssConfig."


def _name_position(args, kwargs, keyword):
    """Where __setattr__'s attribute name is: `keyword`, a negative index into `args`, or None."""
    if keyword in kwargs:
        return keyword
    position = -1 if "value" in kwargs else -2  # (self,) name, value
    return position if len(args) >= -position else None


def _name(args, kwargs, where):
    return None if where is None else kwargs[where] if isinstance(where, str) else args[where]


def _renamed(args, kwargs, where):
    """`args`/`kwargs` with the attribute name at `where` replaced by FIELD."""
    if isinstance(where, str):
        return args, dict(kwargs, **{where: FIELD})
    index = len(args) + where
    return args[:index] + (FIELD,) + args[index + 1:], kwargs


def _get(wrapped, instance, args, kwargs):
    """__getattribute__(self, key): `config.num_experts` reads num_local_experts."""
    if args and not kwargs and args[-1] == ALIAS:  # the one hot path: a positional key
        return wrapped(*args[:-1], FIELD)
    if not args and kwargs.get("key") == ALIAS:
        return wrapped(**dict(kwargs, key=FIELD))
    return wrapped(*args, **kwargs)


def _set(wrapped, instance, args, kwargs):
    """<5.4: __setattr__(self, key, value), unvalidated: a num_experts value lands in num_local_experts."""
    where = _name_position(args, kwargs, "key")
    if _name(args, kwargs, where) == ALIAS:
        args, kwargs = _renamed(args, kwargs, where)
    return wrapped(*args, **kwargs)


def _set_strict(wrapped, instance, args, kwargs):
    """>=5.4: huggingface_hub's strict __setattr__(self, name, value).

    As on 5.6: the validators registered under the name given (``num_experts``: none, it is no
    field) run, then PreTrainedConfig's own __setattr__ stores the value under num_local_experts
    with ``super(PreTrainedConfig, self).__setattr__``; a value for num_local_experts written
    through the alias is therefore not type-checked, exactly as on the fixed releases.
    """
    name = _name(args, kwargs, _name_position(args, kwargs, "name"))
    if name != ALIAS:
        return wrapped(*args, **kwargs)
    config = instance if instance is not None else args[0]
    value = kwargs["value"] if "value" in kwargs else args[-1]
    for validator in (getattr(type(config), "__validators__", None) or {}).get(name, ()):
        try:
            validator(value)
        except (ValueError, TypeError) as exc:
            from huggingface_hub.errors import StrictDataclassFieldValidationError

            raise StrictDataclassFieldValidationError(field=name, cause=exc) from exc
    base = sys.modules["transformers.configuration_utils"].PreTrainedConfig
    super(base, config).__setattr__(FIELD, value)


def _already_aliased(original):
    """A build inside the range that already carries PR 45473 (a 5.6.0.dev0 source install)."""
    from compat_patches.core.source_check import source_object

    try:
        mapping = source_object(f"{_MODULE}:GptOssConfig.attribute_map") or {}
    except LookupError:
        mapping = {}
    if mapping.get(ALIAS) == FIELD:
        return "GptOssConfig.attribute_map already maps num_experts to num_local_experts"
    return None


def _is_strict(original):
    """_set_strict re-enacts huggingface_hub's strict __setattr__: the target must be one."""
    if "__strict_setattr__" not in getattr(original, "__qualname__", ""):
        return f"expected huggingface_hub's strict __setattr__, found {original!r}"
    return None


def _is_not_strict(original):
    if "__strict_setattr__" in getattr(original, "__qualname__", ""):
        return "__setattr__ is huggingface_hub's strict one (5.4+ shape) in a <5.4 release"
    return None


_REPLACES = Replaces(
    symbols=(
        _CLASS + "attribute_map",
        _CLASS + "num_experts",
        _CLASS + "__getattribute__",
        _CLASS + "__setattr__",
    ),
    copies=(
        Copy("huggingface/trl", "trl/trainer/sft_trainer.py", commit="f2cd57710ae3",
             what="chunked-CE loss, `output_router_logits` branch: for `model_type == \"gpt_oss\"` on "
                  "transformers `>=5.0.0,<5.6.0` reads `self.num_experts` from the model instead of "
                  "`config.num_experts` (trl PR 5756)."),
        Copy("huggingface/trl", "trl/trainer/utils.py", commit="f2cd57710ae3",
             what="the shared aux-loss helper, the same branch (extended to GRPO/RLOO in trl PR "
                  "6083)."),
    ),
    note="No monkey-patch of this bug was found in the framework mirrors (the field inventory lists "
         "it as not found); trl works around it in its own code, above, rather than patching "
         "transformers. With this patch applied those branches are unnecessary (trl's "
         "`config.num_experts` path works on 5.0.0rc0 - 5.5.4), but they are trl's code and "
         "harmless: a user deletes only their own copies of such a branch, e.g. a "
         "`getattr(config, \"num_experts\", config.num_local_experts)` fallback for gpt-oss.",
)

PATCH = Patch(
    name="transformers-gpt-oss-num-experts",
    summary="GptOssConfig answers num_experts (alias of num_local_experts) as the fixed releases do",
    upstream="https://github.com/huggingface/transformers/pull/45473",
    # Measured on every release 5.0.0rc0 - 5.6.2: 5.0.0rc0 - 5.5.4 lack the alias, 5.6.0 has it.
    # `<=5.6.0.dev0` keeps source installs of the 5.6 development cycle in range (PEP 440 puts
    # 5.6.0.dev0 below 5.6.0 but `<5.6.0` would exclude it); those that already carry the fix report
    # not-needed through the `fixed` fingerprint. 4.55 - 4.57 lack it too, as does every 4.x MoE
    # config (Mixtral included): the alias is a transformers 5 convention, not patched there.
    affected={"transformers": ">=5.0.0rc0,<=5.6.0.dev0"},
    fixed_in="transformers 5.6.0",
    targets=(
        Target(_CLASS + "__getattribute__", wrapper=_get, params=("self", "key"),
               fixed=_already_aliased),
        Target(_CLASS + "__setattr__", wrapper=_set, params=("self", "key", "value"),
               check=_is_not_strict, fixed=_already_aliased, versions="<5.4.0.dev0"),
        Target(_CLASS + "__setattr__", wrapper=_set_strict, params=("self", "name", "value"),
               check=_is_strict, fixed=_already_aliased, versions=">=5.4.0.dev0"),
    ),
    differences="PR 45473 adds `attribute_map = {'num_experts': 'num_local_experts'}` to GptOssConfig; "
                "the core wraps callables, so this patch aliases the key in the two methods that read "
                "attribute_map (__getattribute__, __setattr__) instead, and `GptOssConfig.attribute_map` "
                "stays the inherited empty dict (code that inspects the dict itself, rather than reading "
                "the attribute, does not see the alias). Reads and writes of config.num_experts, keyword "
                "arguments, from_dict / from_pretrained and to_dict / to_json_string behave as on 5.6.0 "
                "(measured). A config created before the patch with an explicit num_experts keeps it in "
                "its __dict__ (and to_dict) while the alias reads num_local_experts; 5.6 never stores it.",
    notes="As on every fixed release (5.6.0 - 5.24.0, measured), a config that carries BOTH keys "
          "(e.g. {'num_experts': 4, 'num_local_experts': 128}, the old trl-internal-testing/"
          "tiny-GptOssForCausalLM config.json) loads with num_local_experts = 4: the alias write comes "
          "last and wins (transformers PR 45578 proposes removing the alias for that reason). "
          "Unpatched 5.0 - 5.5 keep num_local_experts = 128 and an unused extra num_experts = 4.",
    replaces=_REPLACES,
)
