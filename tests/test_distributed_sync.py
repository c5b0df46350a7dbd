"""compat_patches.distributed_sync.broadcast_tensor on CPU, with fake device namespaces.

The fake communicator records, at the moment ``broadcast`` runs, which device context is active and
which stream it was handed; the fake ``torch.npu`` / ``torch.cuda`` namespaces hand out per-device
stream sentinels only inside their ``device(...)`` context.
"""

import contextlib
import types

import pytest

torch = pytest.importorskip("torch")

from compat_patches.distributed_sync import broadcast_tensor  # noqa: E402


class FakeNamespace:
    def __init__(self, kind):
        self.kind = kind
        self.active = None
        self.entered = []

    @contextlib.contextmanager
    def device(self, device):
        previous, self.active = self.active, str(device)
        self.entered.append(self.active)
        try:
            yield
        finally:
            self.active = previous

    def current_stream(self, device=None):
        return ("stream", self.kind, str(device or self.active))


class FakeCommunicator:
    def __init__(self, device, namespaces):
        self.device = device   # a string: torch.device("npu") parses only with torch_npu
        self.namespaces = namespaces
        self.calls = []

    def broadcast(self, tensor, src, stream=None):
        active = {k: (str(ns.active) if ns.active is not None else None)
                  for k, ns in self.namespaces.items()}
        self.calls.append({"src": src, "stream": stream, "active": active})
        tensor.fill_(src + 1)


@pytest.fixture
def namespaces(monkeypatch):
    npu, cuda = FakeNamespace("npu"), FakeNamespace("cuda")
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.setattr(torch.cuda, "device", cuda.device)
    monkeypatch.setattr(torch.cuda, "current_stream", cuda.current_stream)
    return {"npu": npu, "cuda": cuda}


def test_npu_broadcast_runs_in_the_communicators_device_context_on_the_npu_stream(namespaces):
    comm = FakeCommunicator("npu:3", namespaces)
    tensor = torch.zeros(4)
    assert broadcast_tensor(comm, tensor, src=2) is tensor
    (call,) = comm.calls
    assert call["src"] == 2
    assert call["stream"] == ("stream", "npu", "npu:3")
    assert call["active"] == {"npu": "npu:3", "cuda": None}      # inside torch.npu.device(npu:3)
    assert namespaces["npu"].active is None                          # context left afterwards
    assert torch.equal(tensor, torch.full((4,), 3.0))


def test_cuda_broadcast_uses_the_current_cuda_stream(namespaces):
    comm = FakeCommunicator("cuda:1", namespaces)
    broadcast_tensor(comm, torch.zeros(2), src=0)
    (call,) = comm.calls
    assert call["stream"] == ("stream", "cuda", "cuda:1")
    assert call["active"] == {"npu": None, "cuda": "cuda:1"}
    assert namespaces["npu"].entered == []


def test_device_falls_back_to_the_tensor_and_cpu_gets_no_stream(namespaces):
    comm = FakeCommunicator(None, namespaces)
    broadcast_tensor(comm, torch.zeros(2), src=1)
    (call,) = comm.calls
    assert call["stream"] is None and call["active"] == {"npu": None, "cuda": None}


def test_npu_without_torch_npu_is_a_clear_import_error(monkeypatch):
    monkeypatch.delattr(torch, "npu", raising=False)
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torch_npu":
            raise ImportError("No module named 'torch_npu'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    comm = types.SimpleNamespace(device="npu:0", broadcast=lambda *a, **k: None)
    with pytest.raises(ImportError, match="torch_npu"):
        broadcast_tensor(comm, torch.zeros(1))
