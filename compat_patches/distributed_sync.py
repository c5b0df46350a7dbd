"""Device-aware tensor broadcast for server-mode weight sync (trainer -> vLLM / vLLM-Ascend workers).

Weight-sync clients (trl's ``VLLMClient``, ms-swift, verl's server mode) broadcast each tensor through
a vLLM communicator: ``PyNcclCommunicator`` on GPUs, vLLM-Ascend's ``PyHcclCommunicator`` on NPUs;
both expose ``device`` and ``broadcast(tensor, src, stream=None)``. Code written for CUDA reaches for
``torch.cuda.current_stream()``, which on an NPU is the wrong stream (or fails). This helper picks
the device namespace from the communicator's device: on an NPU it runs the broadcast inside the
communicator's device context (``torch.npu.device(comm.device)``) on the current NPU stream; on a CUDA
device inside ``torch.cuda.device(comm.device)`` on the current CUDA stream; on any other device
(CPU / gloo) it calls ``broadcast`` without a stream.

No patching: call it from your sync loop. Imports torch lazily (``torch_npu`` only on an NPU).
"""

from __future__ import annotations

__all__ = ["broadcast_tensor", "device_namespace"]


def _device_type(device):
    # a string is parsed by hand: torch.device("npu:0") only parses once torch_npu is imported
    if isinstance(device, str):
        return device.split(":", 1)[0]
    return getattr(device, "type", None)


def device_namespace(device_type):
    """``torch.npu`` (imports ``torch_npu`` to register it) or ``torch.cuda``; None for others."""
    import torch

    if device_type == "npu":
        namespace = getattr(torch, "npu", None)
        if namespace is None:
            import torch_npu  # noqa: F401  (registers torch.npu)

            namespace = torch.npu
        return namespace
    if device_type == "cuda":
        return torch.cuda
    return None


def broadcast_tensor(communicator, tensor, src=0):
    """Broadcast ``tensor`` from rank ``src`` through ``communicator`` on the right device stream.

    ``communicator`` needs ``broadcast(tensor, src, stream=...)`` and optionally ``device`` (falls
    back to ``tensor.device``). Returns ``tensor`` (filled in place on the receiving ranks)."""
    device = getattr(communicator, "device", None) or tensor.device
    namespace = device_namespace(_device_type(device))
    if namespace is None:
        communicator.broadcast(tensor, src=src)
        return tensor
    with namespace.device(device):
        stream = namespace.current_stream()
        communicator.broadcast(tensor, src=src, stream=stream)
    return tensor
