"""Transformers-5 packed MoE experts -> per-expert checkpoint keys: zero-copy views, no patching.

Transformers 5 keeps the experts of Qwen-style MoE models (every model type whose checkpoint
conversion is ``qwen2_moe``'s: Qwen2/3-MoE, Qwen3.5-MoE, Qwen3-Next, DeepSeek-V2/V3, GLM-4-MoE,
...) packed into two 3-D parameters per layer:

    ...mlp.experts.gate_up_proj   [E, 2 * I, H]     rows 0:I are gate_proj, rows I:2I are up_proj
    ...mlp.experts.down_proj      [E, H, I]

while the checkpoints on the Hub (the "original" v4 format, which ``save_pretrained`` writes back by
default) and vLLM's weight-reload path use one 2-D tensor per expert:

    ...mlp.experts.{e}.gate_proj.weight   [I, H]
    ...mlp.experts.{e}.up_proj.weight     [I, H]
    ...mlp.experts.{e}.down_proj.weight   [H, I]

:func:`expand_packed_experts` turns a stream of ``(name, tensor)`` pairs (a state dict's ``items()``,
an FSDP trainer's weight-sync generator) into the second form. Every expert tensor it yields is a
*view* of the packed tensor: ``gate_up_proj[e, :I]``, ``gate_up_proj[e, I:]`` and ``down_proj[e]``
are row blocks of a contiguous ``[E, 2I, H]`` / ``[E, H, I]`` tensor, hence already contiguous, so
no ``.contiguous()`` and no copy is needed: the expansion allocates no tensor memory at all. It
works on any device and for plain tensors, including what ``DTensor.full_tensor()`` returns.

Everything else (dense weights, router gates, shared experts, already per-expert keys, LoRA
tensors, GPT-OSS's natively packed experts when ``model_type="gpt_oss"`` is passed) is yielded
unchanged: the very same ``(name, tensor)`` objects.

Importing this module imports no torch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = [
    "PACKED_NATIVE_MODEL_TYPES",
    "expand_packed_experts",
    "iter_vllm_compatible_moe_params",
    "packed_expert_kind",
]

#: Model types whose vLLM loader consumes the packed 3-D expert tensors as they are (GPT-OSS's
#: checkpoints are packed; its ``gate_up_proj`` is ``[E, H, 2I]`` with interleaved gate/up columns
#: and splitting it would be wrong). :func:`expand_packed_experts` passes their tensors through.
PACKED_NATIVE_MODEL_TYPES = frozenset({"gpt_oss"})

_GATE_UP = "mlp.experts.gate_up_proj"
_DOWN = "mlp.experts.down_proj"


def _stem(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def packed_expert_kind(name: str) -> Optional[str]:
    """``"gate_up_proj"`` / ``"down_proj"`` if `name` is a packed-experts parameter, else None.

    Matches ``...mlp.experts.gate_up_proj`` and ``...mlp.experts.down_proj`` (the target patterns of
    transformers' ``qwen2_moe`` weight conversion), with or without a trailing ``.weight``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (a parameter name), got {name!r:.80}")
    stem = _stem(name)
    for suffix, kind in ((_GATE_UP, "gate_up_proj"), (_DOWN, "down_proj")):
        if stem == suffix or stem.endswith("." + suffix):
            return kind
    return None


def _is_dtensor(tensor) -> bool:
    # torch.distributed.tensor is only consulted if something already imported it.
    for module_name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        module = sys.modules.get(module_name)
        dtensor = getattr(module, "DTensor", None) if module is not None else None
        if dtensor is not None and isinstance(tensor, dtensor):
            return True
    return False


def _check(name: str, tensor, kind: str) -> None:
    shape = tuple(getattr(tensor, "shape", ()))
    if _is_dtensor(tensor):
        raise TypeError(
            f"packed MoE expert parameter {name!r} with shape {shape} is a DTensor: expand its "
            "full tensor (DTensor.full_tensor()), or its local shard if that is what you stream"
        )
    expected = "[num_experts, 2 * intermediate, hidden]" if kind == "gate_up_proj" else (
        "[num_experts, hidden, intermediate]"
    )
    torch = sys.modules.get("torch")  # not imported: `tensor` cannot be a torch.Tensor
    if torch is None or not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"packed MoE expert parameter {name!r}: tensor must be a torch.Tensor {expected}, "
            f"got {type(tensor).__name__}"
        )
    if tensor.dim() != 3:
        raise ValueError(
            f"packed MoE expert parameter {name!r} has shape {shape} (rank {tensor.dim()}); "
            f"expected a rank-3 tensor {expected}"
        )
    if kind == "gate_up_proj" and shape[1] % 2:
        raise ValueError(
            f"packed MoE expert parameter {name!r} has shape {shape}: dimension 1 ({shape[1]}) "
            "must be 2 * intermediate_size (gate rows then up rows), but it is odd"
        )


def _expand_gate_up(base: str, tensor) -> Iterator[Tuple[str, "torch.Tensor"]]:
    inter = tensor.shape[1] // 2
    # Two narrow() + unbind() calls make all 2E views up front (cheaper than 2E index ops).
    gates = tensor.narrow(1, 0, inter).unbind(0)
    ups = tensor.narrow(1, inter, inter).unbind(0)
    for expert, (gate, up) in enumerate(zip(gates, ups)):
        yield f"{base}.{expert}.gate_proj.weight", gate
        yield f"{base}.{expert}.up_proj.weight", up


def _expand_down(base: str, tensor) -> Iterator[Tuple[str, "torch.Tensor"]]:
    for expert, down in enumerate(tensor.unbind(0)):
        yield f"{base}.{expert}.down_proj.weight", down


def iter_vllm_compatible_moe_params(name: str, tensor) -> Iterator[Tuple[str, "torch.Tensor"]]:
    """The vLLM-checkpoint-compatible ``(name, tensor)`` pairs for ONE parameter.

    A packed ``...mlp.experts.gate_up_proj`` ``[E, 2I, H]`` gives ``2E`` pairs
    ``...mlp.experts.{e}.gate_proj.weight`` / ``up_proj.weight`` ``[I, H]`` (gate then up, per
    expert); a packed ``...mlp.experts.down_proj`` ``[E, H, I]`` gives ``E`` pairs
    ``...mlp.experts.{e}.down_proj.weight`` ``[H, I]``. Each tensor is a view of `tensor` (shared
    storage, no copy; contiguous whenever `tensor` is). Any other parameter gives the single pair
    ``(name, tensor)`` unchanged.

    The shape is checked eagerly, when this is called (not at the first ``next()``): a packed
    parameter that is not a torch.Tensor, is not rank 3, has an odd ``2I`` dimension, or is still a
    DTensor raises ValueError/TypeError naming the parameter and its shape; so does a `name` that is
    not a str.
    """
    kind = packed_expert_kind(name)
    if kind is None:
        return iter(((name, tensor),))
    _check(name, tensor, kind)
    base = _stem(name)[: -len("." + kind)]
    if kind == "gate_up_proj":
        return _expand_gate_up(base, tensor)
    return _expand_down(base, tensor)


def expand_packed_experts(
    named_tensors: Iterable[Tuple[str, "torch.Tensor"]], *, model_type: Optional[str] = None
) -> Iterator[Tuple[str, "torch.Tensor"]]:
    """Lazily expand every packed-experts pair of a ``(name, tensor)`` stream (see module doc).

    Streaming: one input pair is pulled at a time and nothing is buffered, so this can wrap a
    weight-sync generator that gathers one FSDP parameter at a time. Pairs that are not packed
    experts are yielded as the very same tuple object. With ``model_type`` in
    :data:`PACKED_NATIVE_MODEL_TYPES` (``"gpt_oss"``) every pair is passed through.

    The arguments are checked when this is called (TypeError); each pair when it is pulled.
    """
    if model_type is not None and not isinstance(model_type, str):
        raise TypeError(f"model_type must be a str such as 'qwen3_moe', or None, got "
                        f"{model_type!r:.80}")
    # A state dict iterates over its keys, and a 2-character key unpacks into a "pair".
    if isinstance(named_tensors, Mapping):
        raise TypeError(f"named_tensors must be an iterable of (name, tensor) pairs, got a "
                        f"{type(named_tensors).__name__}: pass its .items()")
    try:
        pairs = iter(named_tensors)
    except TypeError:
        raise TypeError(f"named_tensors must be an iterable of (name, tensor) pairs, got "
                        f"{named_tensors!r:.80}") from None
    return _expand(pairs, model_type in PACKED_NATIVE_MODEL_TYPES)


def _expand(pairs, pass_through: bool) -> Iterator[Tuple[str, "torch.Tensor"]]:
    if pass_through:
        yield from pairs
        return
    for pair in pairs:
        try:
            name, tensor = pair
        except (TypeError, ValueError):
            raise TypeError(
                f"named_tensors must yield (name, tensor) pairs, got {pair!r:.80}") from None
        if packed_expert_kind(name) is None:
            yield pair
        else:
            yield from iter_vllm_compatible_moe_params(name, tensor)
