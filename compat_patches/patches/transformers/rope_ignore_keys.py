"""transformers-rope-ignore-keys: accept a list for ``ignore_keys_at_rope_validation``.

Transformers 5 treats the RoPE ignore-keys as a set. A list breaks it in two places:

* the union with ``{"partial_rotary_factor"}`` in ``convert_rope_params_to_dict``
  (``TypeError: unsupported operand type(s) for |: 'list' and 'set'``): 5.2.0 (keyword
  parameter) and 5.4.0 - 5.9.0 (class/instance attribute);
* the subtraction in ``_check_received_keys``, reached from RoPE validation
  (``TypeError: unsupported operand type(s) for -=: 'set' and 'list'``): 5.0.0rc0 - 5.4.0.

Trigger A: vLLM 0.17.0 - 0.18.1 ``Qwen3_5TextConfig`` / ``Qwen3_5MoeTextConfig`` pass a list to
``PretrainedConfig.__init__`` (vLLM 0.19.0 passes a set). Trigger B: a config dict whose
``ignore_keys_at_rope_validation`` is a list (JSON written by export tooling) loads back as a list
instance attribute; the next ``convert_rope_params_to_dict`` raises (transformers issue 46121).

The fix (upstream PR 46142, in 5.10.0 [yanked] and 5.10.1) coerces with ``set(...)``. This patch
does the same at each place an affected release reads the keys, and changes nothing else:

* up to 5.3: the ``ignore_keys_at_rope_validation`` argument of
  ``RotaryEmbeddingConfigMixin.convert_rope_params_to_dict``;
* 5.4 - 5.9: the ``ignore_keys_at_rope_validation`` attribute, read by
  ``convert_rope_params_to_dict(self, **kwargs)``;
* up to 5.4: the ``ignore_keys`` argument of the static ``_check_received_keys``. It is wrapped
  rather than ``validate_rope`` because from 5.4 ``validate_rope`` is a strict-dataclass class
  validator captured by function object when each config class is defined: a wrapper on it would
  miss every class defined before the patch and stay inside those defined during it.

Nothing heavy is imported here: the wrappers only touch the objects they are handed.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces

_ATTRIBUTE = "ignore_keys_at_rope_validation"
_MODULE = "transformers.modeling_rope_utils:RotaryEmbeddingConfigMixin."


def as_key_set(value):
    """`value` as transformers 5 expects the RoPE ignore-keys: a set.

    None and sets (frozenset too) are returned unchanged, any other iterable (list, tuple) becomes
    ``set(value)``, exactly what the fixed releases do.
    """
    if value is None or isinstance(value, (set, frozenset)):
        return value
    return set(value)


def _replace_argument(args, kwargs, name, position):
    """Coerce argument `name` (keyword, else positional `position`) with as_key_set."""
    if name in kwargs:
        kwargs[name] = as_key_set(kwargs[name])
    elif len(args) > position:
        args = args[:position] + (as_key_set(args[position]),) + args[position + 1:]
    return args, kwargs


def _convert_keyword(wrapped, instance, args, kwargs):
    """<5.4: convert_rope_params_to_dict(self, ignore_keys_at_rope_validation=None, **kwargs)."""
    args, kwargs = _replace_argument(args, kwargs, _ATTRIBUTE, 0 if instance is not None else 1)
    return wrapped(*args, **kwargs)


def _convert_attribute(wrapped, instance, args, kwargs):
    """5.4 - 5.9: convert_rope_params_to_dict(self, **kwargs) computes `self.<attr> | {...}`."""
    config = instance if instance is not None else (args[0] if args else None)
    if config is not None:
        value = getattr(config, _ATTRIBUTE, None)
        if not isinstance(value, (set, frozenset)):
            # the fixed releases compute set(value or []); only the instance is written, never a class
            setattr(config, _ATTRIBUTE, set(value or ()))
    return wrapped(*args, **kwargs)


def _check_received_keys(wrapped, instance, args, kwargs):
    """<=5.4: staticmethod _check_received_keys(rope_type, received_keys, required_keys,
    optional_keys=None, ignore_keys=None) runs `received_keys -= ignore_keys`."""
    args, kwargs = _replace_argument(args, kwargs, "ignore_keys", 4)
    return wrapped(*args, **kwargs)


_REPLACES = Replaces(
    symbols=(
        "transformers.modeling_rope_utils:RotaryEmbeddingConfigMixin.convert_rope_params_to_dict",
        "transformers.configuration_utils:PreTrainedConfig.convert_rope_params_to_dict",
        "transformers.configuration_utils:PretrainedConfig.convert_rope_params_to_dict",
        "transformers.modeling_rope_utils:RotaryEmbeddingConfigMixin._check_received_keys",
    ),
    copies=(
        Copy("modelscope/ms-swift", "swift/infer_engine/vllm_engine.py",
             "_patch_rope_validation_ignore_keys", commit="3602360a5623", inventory=10,
             what="patches `transformers:PretrainedConfig.convert_rope_params_to_dict` inside a "
                  "context manager (RoPE ignore-keys list to set; cites vllm#37338)."),
    ),
    note="Adopting this record, a user deletes that context manager and enters "
         "`compat_patches.patched(\"transformers-rope-ignore-keys\")` where it was entered (or applies "
         "the record once at start-up).",
)

PATCH = Patch(
    name="transformers-rope-ignore-keys",
    summary="accept a list (vLLM 0.17-0.18 Qwen3.5 configs, JSON-loaded configs) as RoPE "
            "ignore_keys_at_rope_validation in transformers 5.0.0rc0-5.9",
    upstream="https://github.com/huggingface/transformers/pull/46142",
    # Measured on every 5.x release: trigger A fails on 5.0.0rc0-5.4.0, trigger B on 5.4.0-5.9.0;
    # 5.10.0 (yanked) and newer carry the fix. `<=5.10.0.dev0` keeps source installs of the 5.10
    # development cycle (some of which predate the fix) in range; PEP 440 would drop them from `<5.10.0`.
    affected={"transformers": ">=5.0.0rc0,<=5.10.0.dev0"},
    fixed_in="transformers 5.10.1 (5.10.0 carried it but was yanked)",
    targets=(
        Target(
            _MODULE + "convert_rope_params_to_dict",
            wrapper=_convert_keyword,
            params=("self", "ignore_keys_at_rope_validation", "kwargs"),
            versions="<5.4.0.dev0",
        ),
        Target(
            _MODULE + "convert_rope_params_to_dict",
            wrapper=_convert_attribute,
            params=("self", "kwargs"),
            versions=">=5.4.0.dev0",
        ),
        Target(
            _MODULE + "_check_received_keys",
            wrapper=_check_received_keys,
            params=("rope_type", "received_keys", "required_keys", "optional_keys", "ignore_keys"),
            versions="<=5.5.0.dev0",
        ),
    ),
    upstream_tests=(
        "tests/upstream/transformers/test_modeling_rope_utils.py::TestRope::"
        "test_convert_rope_params_to_dict_with_list_ignore_keys",
    ),
    differences="Before 5.4 (5.0.0rc0 - 5.3.x) the ignore-keys are the keyword argument of "
                "convert_rope_params_to_dict and no config stores them: the patch coerces that argument "
                "and never creates or rewrites a config attribute, so the upstream regression test, which "
                "asserts the 5.4+ attribute (a set holding 'partial_rotary_factor'), fails there with the "
                "patch too. Writing that set would make every config with partial_rotary_factor fail "
                "to_json_string() / save_pretrained() on those releases (they serialize the attribute; "
                "5.4 and later leave it out of the JSON). From 5.4 the patch writes the set onto "
                "the instance whenever it is not one, with or without partial_rotary_factor (upstream: "
                "only with it), because 5.4's validation `-=` needs a set too; the class attribute is "
                "never written. Beyond PR 46142 it also coerces _check_received_keys's `ignore_keys` up "
                "to 5.4 (the `-=` fix of transformers PR 45069, released in 5.5.0).",
    notes="Model configs that override convert_rope_params_to_dict up to 5.3 (gemma3, gpt_neox, "
          "qwen2_vl, deepseek_v3, ...) hand the keys on to validate_rope and get the `-=` fix "
          "through _check_received_keys; Mistral4Config's own override in 5.4.0 "
          "(`self.ignore_keys_at_rope_validation | argument`) is not patched.",
    replaces=_REPLACES,
)
