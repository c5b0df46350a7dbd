"""broadcast_tensor with a real NCCL broadcast on 2 CUDA GPUs (skipped without them).

The communicator stands in for vLLM's ``PyNcclCommunicator`` (``device`` + ``broadcast(tensor, src,
stream)``) on top of torch.distributed's NCCL group. Each rank makes a NON-default stream current on
its GPU and then makes the OTHER GPU the process's current device, so the test can only pass when
the helper enters the communicator's device context and takes that device's current stream.

Also runnable as a script (``python3 tests/test_distributed_sync_nccl.py``) where pytest or the
package's dependencies are missing (the GPU machine).
"""

import importlib.util
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

try:
    import pytest
except ImportError:  # script mode
    pytest = None

if pytest is not None:
    torch = pytest.importorskip("torch")
else:
    import torch


def _helper():
    try:
        from compat_patches.distributed_sync import broadcast_tensor
    except ImportError:  # package dependencies (wrapt) absent: load the module file alone
        path = Path(__file__).resolve().parents[1] / "compat_patches" / "distributed_sync.py"
        spec = importlib.util.spec_from_file_location("_distributed_sync", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        broadcast_tensor = module.broadcast_tensor
    return broadcast_tensor


class TorchDistNcclCommunicator:
    def __init__(self, device):
        self.device = device
        self.seen = []

    def broadcast(self, tensor, src, stream=None):
        self.seen.append({"current_device": torch.cuda.current_device(),
                          "stream_is_current": stream == torch.cuda.current_stream(),
                          "stream_id": stream.stream_id if stream is not None else None})
        with torch.cuda.stream(stream):
            torch.distributed.broadcast(tensor, src)


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(f"cuda:{rank}")
    torch.distributed.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    broadcast_tensor = _helper()
    side = torch.cuda.Stream(device=device)
    torch.cuda.set_stream(side)                       # current stream of cuda:rank = side
    torch.cuda.set_device((rank + 1) % world)         # process's current device = the other GPU
    n = 1 << 20
    tensor = (torch.arange(n, dtype=torch.float32, device=device) * 3 if rank == 0
              else torch.zeros(n, dtype=torch.float32, device=device))
    comm = TorchDistNcclCommunicator(device)
    with torch.cuda.device(device):
        torch.cuda.current_stream().wait_stream(torch.cuda.default_stream())
    broadcast_tensor(comm, tensor, src=0)
    torch.cuda.synchronize(device)
    expected = torch.arange(n, dtype=torch.float32, device=device) * 3
    result = {"rank": rank, "seen": comm.seen, "side_stream_id": side.stream_id,
              "equal": bool(torch.equal(tensor, expected)),
              "current_device_after": torch.cuda.current_device()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def run_two_gpu_broadcast():
    world = 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:
        torch.multiprocessing.spawn(_worker, args=(world, port, out_dir), nprocs=world, join=True)
        results = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]
    for r in results:
        assert r["equal"], r
        (call,) = r["seen"]
        assert call["current_device"] == r["rank"], r          # inside the communicator's device
        assert call["stream_is_current"] and call["stream_id"] == r["side_stream_id"], r
        assert r["current_device_after"] == (r["rank"] + 1) % world, r   # context left afterwards
    return results


if pytest is not None:
    @pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                        reason="needs 2 CUDA GPUs (NCCL)")
    def test_real_nccl_broadcast_on_the_communicators_device_and_current_stream():
        run_two_gpu_broadcast()


if __name__ == "__main__":
    print(json.dumps(run_two_gpu_broadcast(), indent=1))
    print("OK")
    sys.exit(0)
