"""vllm-fused-expert-kwargs: fused MoE expert weights reach keyword-only weight loaders.

The bug (read from every vLLM wheel 0.10.2 - 0.33.0; table in the README): Qwen3.5 / Qwen3.5-MTP /
Qwen3-VL-MoE checkpoints store the experts fused (``[E, ...]``), and
``load_fused_expert_weights(self, name, params_dict, loaded_weight, shard_id, num_experts)`` splits
them and calls the parameter's loader once per expert as::

    weight_loader(param, curr_expert_weight, name, shard_id, expert_id, return_success=True)

``shard_id`` and ``expert_id`` go POSITIONALLY. vLLM's own ``FusedMoE.weight_loader`` happens to
accept that, but loaders that take them by keyword (runai model streamer, TPU, wrappers of the form
``loader(param, w, *args, **kwargs)`` reading ``kwargs.get("expert_id")``) never see them: the TPU
hook then fails with ``AssertionError: Expecting expert_id argument``, a loader defaulting to ``None``
loads nothing and reports "no local expert"; a keyword-only loader raises ``TypeError``.
vLLM 0.22.0 passes ``shard_id=shard_id, expert_id=expert_id`` (vllm#42521 for ``qwen3_5.py``, #42671
for ``qwen3_vl_moe.py``, #42716 for ``qwen3_5_mtp.py``; nothing else changed in those methods);
from 0.25.0 the methods are gone (the models load through ``Qwen3MoeModel``/``FusedMoE``).

Affected methods (identical body in every affected release):

* ``vllm.model_executor.models.qwen3_vl_moe.Qwen3MoeLLMModel.load_fused_expert_weights``
  (0.11.0 - 0.21.0)
* ``vllm.model_executor.models.qwen3_5.Qwen3_5Model.load_fused_expert_weights`` (0.17.0 - 0.21.0)
* ``vllm.model_executor.models.qwen3_5_mtp.Qwen3_5MultiTokenPredictor.load_fused_expert_weights``
  (0.17.0 - 0.21.0)

Technique: body substitution, i.e. the wrapper runs the upstream 0.22.0 body (a verbatim backport:
same statements, only the call passes ``shard_id=``/``expert_id=`` by keyword) instead of the
original. It is exactly right because the ``check`` fingerprint refuses (status ``drifted``) any
original whose body is not, statement for statement, the buggy body below; so "the fixed body" and
"the original body with keywords" are the same program. A build inside the range whose body is
already the fixed one (a source build after the upstream PRs, a vendor backport) is reported ``not-needed``
(``fixed=``), not drifted. The alternatives were rejected:

* handing the original a ``params_dict`` proxy whose parameters' ``weight_loader`` re-maps
  positional to keyword arguments would let a proxy object stand where vLLM expects the real
  ``nn.Parameter`` (the loader receives ``param`` back) unless yet another unwrapping layer is
  added: more moving parts for the same result;
* temporarily replacing ``param.weight_loader`` on the real Parameter mutates shared state
  (other threads, a loader that is a bound method shared by all experts, restore on exceptions).

The wrapper never touches a Parameter, adds no object to vLLM's data, and returns exactly what the
upstream method returns (``True`` if any expert was loaded locally, honouring ``return_success``).
A method that someone else already wrapped (another tool's wrapper underneath ours) is reported as
drift rather than silently bypassed.

The body, the fingerprint and the wrapper live in ``_fused_expert_loading.py``, shared with
vllm-hyv4-fused-expert-kwargs (the same buggy body in HY-V4, 0.29.0 on, unfixed).
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Replaces

from . import _fused_expert_loading as _shared

#: The method body (docstring excluded) in every affected release, as ``ast.unparse`` prints it.
BUGGY_BODY = _shared.BUGGY_BODY

#: The same body as released in vLLM 0.22.0 (what the wrapper runs): only the call differs.
FIXED_BODY = _shared.keyword_body(BUGGY_BODY)

PARAMS = _shared.PARAMS


def fixed_body(original):
    """Why `original` already carries the upstream fix (a source build or a backport), or None."""
    return _shared.already_fixed(original, FIXED_BODY,
                                 "passes shard_id/expert_id by keyword already (the vLLM 0.22.0 body)")


def check_body(original):
    """Drift reason, or None when `original` is the buggy 0.11 - 0.21 method exactly."""
    return _shared.drift(original, BUGGY_BODY, "vLLM 0.11 - 0.21 load_fused_expert_weights")


def _target(path, versions=None):
    return Target(path, wrapper=_shared.load_fused_expert_weights, params=PARAMS, check=check_body,
                  fixed=fixed_body, versions=versions)


_TARGETS = (
    "vllm.model_executor.models.qwen3_vl_moe:Qwen3MoeLLMModel.load_fused_expert_weights",
    "vllm.model_executor.models.qwen3_5:Qwen3_5Model.load_fused_expert_weights",
    "vllm.model_executor.models.qwen3_5_mtp:Qwen3_5MultiTokenPredictor.load_fused_expert_weights",
)

_REPLACES = Replaces(
    symbols=_TARGETS,
    note="No hand patch of this bug was found by the field inventory of framework mirrors (2026-11-28): "
         "it lists \"vLLM fused-expert kwargs\" among the known items that do not appear as monkey-patches "
         "at those mirrors' HEAD.",
)

PATCH = Patch(
    name="vllm-fused-expert-kwargs",
    summary="Qwen3.5 / Qwen3.5-MTP / Qwen3-VL-MoE fused-expert loading passes shard_id and "
            "expert_id to weight_loader by keyword (keyword-only loaders no longer drop them)",
    upstream="https://github.com/vllm-project/vllm/pull/42521",
    affected={"vllm": ">=0.11.0.dev0,<0.22.0"},
    fixed_in="vllm 0.22.0",
    targets=(
        _target(_TARGETS[0]),
        _target(_TARGETS[1], versions=">=0.17.0.dev0"),
        _target(_TARGETS[2], versions=">=0.17.0.dev0"),
    ),
    notes="Backports vllm#42521 (qwen3_5), #42671 (qwen3_vl_moe) and #42716 (qwen3_5_mtp), all "
          "released in 0.22.0. Body substitution guarded by a source fingerprint (see the module "
          "docstring). The methods are gone from 0.25.0 on.",
    replaces=_REPLACES,
)
