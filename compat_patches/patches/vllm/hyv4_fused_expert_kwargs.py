"""vllm-hyv4-fused-expert-kwargs: HY-V4 fused MoE expert weights reach keyword-only weight loaders.

The bug (read with ``ast`` in every vLLM wheel 0.28.0 - 0.34.0, run on CPU on 0.33.0 and 0.34.0; table
on the docs page): HY-V4 checkpoints store the routed experts fused (``[E, ...]``), and
``load_fused_expert_weights(self, name, params_dict, loaded_weight, shard_id, num_experts)`` splits
them and calls the parameter's loader once per expert as::

    weight_loader(param, curr_expert_weight, name, shard_id, expert_id, return_success=True)

``shard_id`` and ``expert_id`` go POSITIONALLY, the bug vLLM 0.22.0 fixed for Qwen3.5 / Qwen3.5-MTP /
Qwen3-VL-MoE (vllm#42521, #42671, #42716; record vllm-fused-expert-kwargs) but that HY-V4, added in
0.29.0, brought back: vLLM's own ``RoutedExperts.weight_loader`` accepts it, loaders that take the
ids by keyword do not (a keyword-only loader raises ``TypeError``; a ``(*args, **kwargs)`` hook
reading ``kwargs.get("expert_id")`` sees ``None``, loads nothing and reports "no local expert").
Unfixed through 0.34.0, so the range is open (``verified_through``).

Affected methods (identical body in every release that has them):

* ``vllm.models.hy_v4.nvidia.model.HYV4Model.load_fused_expert_weights`` (0.29.0 on): statement
  for statement the Qwen3.5 0.11 - 0.21 body;
* ``vllm.models.hy_v4.nvidia.mtp.HYV4MTP._load_fused_expert_weights`` (0.29.0 on; the MTP draft
  head, used on ROCm too): the same body after ``if name not in params_dict: return False``;
* ``vllm.models.hy_v4.amd.model.HYV4Model.load_fused_expert_weights`` (0.31.0 on, the ROCm model).

``vllm.models.hy_v4`` imports the NVIDIA model on CUDA and CPU and the AMD one on ROCm; the AMD
model and the MTP head import the NVIDIA model's modules, so every target module is imported once
HY-V4 is.

Technique: the body substitution of vllm-fused-expert-kwargs, sharing its code
(``_fused_expert_loading.py``): the wrapper runs the original statements with only the loader call
passing ``shard_id=`` / ``expert_id=`` by keyword, and the ``check`` fingerprint refuses (``drifted``)
any body that is not, statement for statement, the buggy one, so "the substituted body" and "the
original with keywords" are the same program. A build whose body already passes keywords (a future
upstream fix, a source build, a vendor backport) is reported ``not-needed`` (``fixed=``); a method
someone else already wrapped is drift. The wrapper never touches a Parameter and returns what the
original returns (``True`` if any expert was loaded on this rank).
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Replaces

from . import _fused_expert_loading as _shared

NAME = "vllm-hyv4-fused-expert-kwargs"

#: ``HYV4Model.load_fused_expert_weights`` (NVIDIA 0.29.0 - 0.34.0, AMD 0.31.0 - 0.34.0).
MODEL_BODY = _shared.BUGGY_BODY
#: ``HYV4MTP._load_fused_expert_weights`` (0.29.0 - 0.34.0).
MTP_BODY = _shared.GUARDED_BUGGY_BODY

PARAMS = _shared.PARAMS

_FIXED = "passes shard_id/expert_id by keyword already"

MODEL = "vllm.models.hy_v4.nvidia.model:HYV4Model.load_fused_expert_weights"
MTP = "vllm.models.hy_v4.nvidia.mtp:HYV4MTP._load_fused_expert_weights"
AMD_MODEL = "vllm.models.hy_v4.amd.model:HYV4Model.load_fused_expert_weights"


def check_model_body(original):
    """Drift reason, or None when `original` is the buggy 0.29 - 0.34 HYV4Model method exactly."""
    return _shared.drift(original, MODEL_BODY, "vLLM 0.29 - 0.34 HYV4Model.load_fused_expert_weights")


def fixed_model_body(original):
    """Why `original` already passes the ids by keyword (an upstream fix or a backport), or None."""
    return _shared.already_fixed(original, _shared.keyword_body(MODEL_BODY), _FIXED)


def check_mtp_body(original):
    """Drift reason, or None when `original` is the buggy 0.29 - 0.34 HYV4MTP method exactly."""
    return _shared.drift(original, MTP_BODY, "vLLM 0.29 - 0.34 HYV4MTP._load_fused_expert_weights")


def fixed_mtp_body(original):
    """Why `original` already passes the ids by keyword (an upstream fix or a backport), or None."""
    return _shared.already_fixed(original, _shared.keyword_body(MTP_BODY), _FIXED)


def _model_target(path, versions=None):
    return Target(path, wrapper=_shared.load_fused_expert_weights, params=PARAMS,
                  check=check_model_body, fixed=fixed_model_body, versions=versions)


_REPLACES = Replaces(
    symbols=(MODEL, MTP, AMD_MODEL),
    note="No hand patch of this bug was found: the field inventory of framework mirrors (2026-11-28) "
         "has no row for HY-V4 or these methods, and lists \"vLLM fused-expert kwargs\" (the Qwen3.5 / "
         "Qwen3-VL-MoE form) among the known items that do not appear as monkey-patches at those "
         "mirrors' HEAD.",
)

PATCH = Patch(
    name=NAME,
    summary="HY-V4 (and its MTP draft head) fused-expert loading passes shard_id and expert_id to "
            "weight_loader by keyword (keyword-only loaders no longer drop them)",
    upstream="https://github.com/vllm-project/vllm/pull/42521",  # the same fix for Qwen3.5; HY-V4 unfixed
    affected={"vllm": ">=0.29.0.dev0"},
    verified_through={"vllm": "0.34.0"},
    fixed_in=None,
    targets=(
        _model_target(MODEL),
        Target(MTP, wrapper=_shared.load_fused_expert_weights_if_present, params=PARAMS,
               check=check_mtp_body, fixed=fixed_mtp_body),
        _model_target(AMD_MODEL, versions=">=0.31.0.dev0"),
    ),
    notes="HY-V4 arrived in 0.29.0 (0.28.0 has no hy_v4 anywhere in the wheel) with the "
          "positional call vllm#42521 / #42671 / #42716 removed from Qwen3.5 / Qwen3-VL-MoE in 0.22.0; "
          "the ROCm model (amd/, 0.31.0 on) and the MTP head carry it too; unfixed through 0.34.0. Body "
          "substitution guarded by a source fingerprint, shared with vllm-fused-expert-kwargs.",
    replaces=_REPLACES,
)
