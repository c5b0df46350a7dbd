"""Shared by vllm-fused-expert-kwargs and vllm-hyv4-fused-expert-kwargs: fused-expert loading that
passes ``shard_id`` / ``expert_id`` to ``weight_loader`` by keyword.

Several vLLM models split a fused ``[E, ...]`` checkpoint tensor in a method
``(self, name, params_dict, loaded_weight, shard_id, num_experts)`` and call the parameter's loader
once per expert as ``weight_loader(param, w, name, shard_id, expert_id, return_success=True)``:
``shard_id`` and ``expert_id`` go positionally, so loaders that take them by keyword never see them.
The records substitute the body: the wrapper runs the very statements of the buggy body with only
that call passing ``shard_id=`` / ``expert_id=`` by keyword (the body vLLM 0.22.0 released for
Qwen3.5 / Qwen3-VL-MoE). That is exactly right only where the installed body is, statement for
statement, the buggy one, which `drift` checks; `already_fixed` recognises the keyword body (an
upstream fix, a source build, a vendor backport).

Imports only ``compat_patches.core`` (record modules are imported by every patched process).
"""

from compat_patches.core.source import fingerprint

#: The signature of every such method.
PARAMS = ("self", "name", "params_dict", "loaded_weight", "shard_id", "num_experts")

#: The method body (docstring excluded), as ``ast.unparse`` prints it: Qwen3-VL-MoE / Qwen3.5 /
#: Qwen3.5-MTP 0.11 - 0.21 and ``HYV4Model.load_fused_expert_weights`` 0.29.0 - 0.34.0.
BUGGY_BODY = """\
param = params_dict[name]
weight_loader = typing.cast(Callable[..., bool], param.weight_loader)
loaded_local_expert = False
for expert_id in range(num_experts):
    curr_expert_weight = loaded_weight[expert_id]
    success = weight_loader(param, curr_expert_weight, name, shard_id, expert_id, return_success=True)
    if success:
        loaded_local_expert = True
return loaded_local_expert"""

#: The first statement of a body that skips a name it has no parameter for
#: (``HYV4MTP._load_fused_expert_weights``, 0.29.0 - 0.34.0), then is `BUGGY_BODY`.
MISSING_NAME_GUARD = """\
if name not in params_dict:
    return False"""

GUARDED_BUGGY_BODY = MISSING_NAME_GUARD + "\n" + BUGGY_BODY


def keyword_body(body):
    """`body` with the loader call passing ``shard_id`` / ``expert_id`` by keyword: what the
    wrappers run (for `BUGGY_BODY`, the vLLM 0.22.0 body)."""
    return body.replace("name, shard_id, expert_id, return_success",
                        "name, shard_id=shard_id, expert_id=expert_id, return_success")


_BYPASS = "substituting the body would bypass that wrapper"


def already_fixed(original, fixed_body, why):
    """`why` where `original`'s body is `fixed_body` (it passes the ids by keyword already), else None."""
    source, _ = fingerprint(original, _BYPASS)
    if source is not None and source[1] == fixed_body:
        return why
    return None


def drift(original, buggy_body, written_for):
    """Drift reason, or None when `original`'s body is `buggy_body` exactly (someone's wrapper or an
    unreadable source is drift too: the substituted body would bypass or guess it)."""
    source, reason = fingerprint(original, _BYPASS)
    if reason is not None or source[1] == buggy_body:
        return reason
    return f"body differs from the {written_for} it was written for"


def _arguments(name, params_dict, loaded_weight, shard_id, num_experts):
    return name, params_dict, loaded_weight, shard_id, num_experts


def _load_experts(name, params_dict, loaded_weight, shard_id, num_experts):
    param = params_dict[name]
    weight_loader = param.weight_loader
    loaded_local_expert = False
    for expert_id in range(num_experts):
        curr_expert_weight = loaded_weight[expert_id]
        success = weight_loader(
            param,
            curr_expert_weight,
            name,
            shard_id=shard_id,
            expert_id=expert_id,
            return_success=True,
        )
        if success:
            loaded_local_expert = True
    return loaded_local_expert


def load_fused_expert_weights(wrapped, instance, args, kwargs):
    """The wrapper of a `BUGGY_BODY` method: ``keyword_body(BUGGY_BODY)``, vLLM 0.22.0's
    ``load_fused_expert_weights``, for an instance of the patched class. Returns what the original
    returns: True if any expert was loaded on this rank."""
    return _load_experts(*_arguments(*args, **kwargs))


def load_fused_expert_weights_if_present(wrapped, instance, args, kwargs):
    """The wrapper of a `GUARDED_BUGGY_BODY` method: False for a name that has no parameter, as the
    original, else `load_fused_expert_weights`'s body."""
    name, params_dict, loaded_weight, shard_id, num_experts = _arguments(*args, **kwargs)
    if name not in params_dict:
        return False
    return _load_experts(name, params_dict, loaded_weight, shard_id, num_experts)
