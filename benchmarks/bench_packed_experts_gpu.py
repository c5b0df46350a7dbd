"""GPU: stream Qwen3-30B-A3B-shaped packed experts from an FSDP2 module into per-expert receivers.

What an FSDP trainer's weight sync does for a colocated vLLM (one rank, one GPU): for each packed
parameter, ``full = param.full_tensor()`` (FSDP2 DTensor, world size 1), expand it to per-expert
tensors, and copy each into a per-expert receiver buffer (vLLM's own expert parameters stand-in).

Shapes: 128 experts, hidden 2048, moe_intermediate 768, bf16: gate_up_proj [128, 1536, 2048] and
down_proj [128, 2048, 768] = 1.21 GB per layer; as many of the 48 layers as fit twice in GPU memory
(sharded parameters + receivers).

Variants (the copy into receivers is the same for all; what differs is what feeds it):
  zero-copy     compat_patches.moe.expand_packed_experts: views, receiver.copy_(view)
  .contiguous() verl 0.9's unfuse_moe_params (chunk, index, .contiguous() per expert) -- the views
                are already contiguous, so .contiguous() returns them: no extra copy
  clone         a real copy per expert (view.clone()) before receiver.copy_ -- the "copying variant"
  fused         one device-to-device copy of the whole packed tensor into one flat buffer (the limit)
GB/s = expert payload bytes / time (each byte is read once and written once by the copy).
Times: CUDA events around expand+copy of each parameter (gather excluded), summed over the stream;
the gather (full_tensor) is timed separately and end to end.

    torchrun-free: python benchmarks/bench_packed_experts_gpu.py [--layers N] [--repeat 3] [--out FILE]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_packed_experts import verl_09_unfuse  # noqa: E402  (one copy of verl 0.9's function)

EXPERTS, HIDDEN, INTER, MAX_LAYERS = 128, 2048, 768, 48


class _FakeCuda:
    """CPU stand-in for the few torch.cuda calls (smoke runs only)."""

    class Event:
        def __init__(self, enable_timing=True):
            self.t = None

        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    @staticmethod
    def synchronize():
        pass

    @staticmethod
    def memory_allocated():
        return 0

    max_memory_allocated = memory_allocated

    @staticmethod
    def reset_peak_memory_stats():
        pass

    @staticmethod
    def mem_get_info():
        return 4 * 2**30, 4 * 2**30


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=0, help="0: as many as fit (at most 48)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="CPU/gloo, tiny shapes: checks the script runs")
    args = parser.parse_args()
    global HIDDEN, INTER, EXPERTS

    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from compat_patches.moe import expand_packed_experts

    store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
    if args.smoke:
        HIDDEN, INTER, EXPERTS = 64, 24, 8
        dev = torch.device("cpu")
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        cuda = _FakeCuda()
    else:
        assert torch.cuda.is_available(), "needs a CUDA GPU"
        torch.cuda.set_device(0)
        dev = torch.device("cuda", 0)
        dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=dev)
        cuda = torch.cuda

    dtype = torch.bfloat16
    item = torch.tensor([], dtype=dtype).element_size()
    gate_up_bytes = EXPERTS * 2 * INTER * HIDDEN * item
    down_bytes = EXPERTS * HIDDEN * INTER * item
    layer_bytes = gate_up_bytes + down_bytes
    free, total = cuda.mem_get_info()
    # sharded params + receivers (3 MiB receivers pack 6 to a 20 MiB allocator segment: +11%), the
    # gathered full tensor, the flat buffer and slack
    fit = int((free - 4 * gate_up_bytes - 4 * 2**30) // (2.2 * layer_bytes))
    layers = args.layers or max(1, min(MAX_LAYERS, fit))

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.empty(EXPERTS, 2 * INTER, HIDDEN, device=dev, dtype=dtype))
            self.down_proj = torch.nn.Parameter(torch.empty(EXPERTS, HIDDEN, INTER, device=dev, dtype=dtype))

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Module()
            self.mlp.experts = Experts()

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(Layer() for _ in range(layers))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.normal_(generator=torch.Generator(device=dev).manual_seed(i))
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    sharded = [(f"model.{k}", v) for k, v in model.state_dict().items()]
    assert all(type(v).__name__ == "DTensor" for _, v in sharded)

    receivers = {}
    for name, param in sharded:
        shape = param.shape
        base = name.rsplit(".", 1)[0]
        for e in range(EXPERTS):
            if name.endswith("gate_up_proj"):
                receivers[f"{base}.{e}.gate_proj.weight"] = torch.empty(INTER, HIDDEN, device=dev, dtype=dtype)
                receivers[f"{base}.{e}.up_proj.weight"] = torch.empty(INTER, HIDDEN, device=dev, dtype=dtype)
            else:
                receivers[f"{base}.{e}.down_proj.weight"] = torch.empty(HIDDEN, INTER, device=dev, dtype=dtype)
        del shape
    flat = torch.empty(2 * INTER * HIDDEN * EXPERTS, device=dev, dtype=dtype)  # reused, fused limit
    payload = layers * layer_bytes

    def feed_zero_copy(name, full):
        for n, t in expand_packed_experts([(name, full)]):
            receivers[n].copy_(t)

    def feed_contiguous(name, full):
        for n, t in verl_09_unfuse([(name, full)]):
            receivers[n].copy_(t)

    def feed_clone(name, full):
        for n, t in expand_packed_experts([(name, full)]):
            receivers[n].copy_(t.clone())

    def feed_fused(name, full):
        flat[: full.numel()].view_as(full).copy_(full)

    variants = {"zero-copy (ours)": feed_zero_copy, ".contiguous() per expert (verl 0.9)": feed_contiguous,
                "clone per expert (copying)": feed_clone, "fused D2D copy (limit)": feed_fused}

    def run(feed):
        """(expand+copy seconds summed over params, end-to-end seconds, peak extra bytes)"""
        cuda.synchronize()
        base_alloc = cuda.memory_allocated()
        pairs = []
        extra_during_expand = 0
        t0 = time.perf_counter()
        for name, param in sharded:
            full = param.full_tensor()
            cuda.reset_peak_memory_stats()
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            before = cuda.memory_allocated()
            start.record()
            feed(name, full)
            end.record()
            extra_during_expand = max(extra_during_expand, cuda.max_memory_allocated() - before)
            pairs.append((start, end))
            del full
        cuda.synchronize()
        wall = time.perf_counter() - t0
        copy_s = sum(s.elapsed_time(e) for s, e in pairs) / 1e3
        return copy_s, wall, extra_during_expand, cuda.memory_allocated() - base_alloc

    def gather_only():
        cuda.synchronize()
        t0 = time.perf_counter()
        for _, param in sharded:
            full = param.full_tensor()
            del full
        cuda.synchronize()
        return time.perf_counter() - t0

    # correctness first (CUDA): views share storage, receivers get the exact bits
    name0, p0 = sharded[0]
    full0 = p0.full_tensor()
    before = cuda.memory_allocated()
    views = list(expand_packed_experts([(name0, full0)]))
    assert cuda.memory_allocated() == before, "expansion allocated GPU memory"
    assert all(v.untyped_storage().data_ptr() == full0.untyped_storage().data_ptr() and v.is_contiguous()
               for _, v in views)
    del views, full0

    results = {}
    for label, feed in variants.items():
        run(feed)  # warm-up
        reps = [run(feed) for _ in range(args.repeat)]
        results[label] = reps
        if label.startswith("zero-copy"):
            for name, param in sharded[:2] + sharded[-2:]:
                full = param.full_tensor()
                for n, t in expand_packed_experts([(name, full)]):
                    assert torch.equal(receivers[n], t), n
    gathers = [gather_only() for _ in range(args.repeat)]

    if args.smoke:
        device_line, nccl = "CPU smoke run (gloo, tiny shapes): numbers mean nothing", "-"
    else:
        props = torch.cuda.get_device_properties(0)
        device_line = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), {props.multi_processor_count} SMs"
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    lines = [
        "# Packed-experts weight sync on GPU: FSDP2 full_tensor -> expand -> per-expert receivers",
        "",
        f"- device: {device_line}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {nccl}, "
        f"python {sys.version.split()[0]}",
        f"- model: {layers} of 48 Qwen3-30B-A3B layers ({EXPERTS} experts, H={HIDDEN}, I={INTER}, bf16), "
        f"FSDP2 fully_shard, world size 1 (NCCL); {layer_bytes / 1e9:.3f} GB of experts per layer, "
        f"{payload / 1e9:.2f} GB per stream; {len(receivers)} per-expert receivers",
        f"- median of {args.repeat} streams after one warm-up; 'expand+copy' = CUDA-event time of expand + "
        "copy for each parameter after its full_tensor(), summed; 'end to end' = wall time of the whole "
        "stream including full_tensor() and Python",
        "",
        "| variant | expand+copy (ms) | GB/s (payload) | end to end (ms) | GB/s end to end | "
        "peak extra GPU memory during expand+copy (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, reps in results.items():
        copy_s = statistics.median(r[0] for r in reps)
        wall = statistics.median(r[1] for r in reps)
        extra = max(r[2] for r in reps)
        lines.append(f"| {label} | {copy_s * 1e3:.1f} | {payload / copy_s / 1e9:.0f} | {wall * 1e3:.1f} | "
                     f"{payload / wall / 1e9:.0f} | {extra / 1e6:.1f} |")
    g = statistics.median(gathers)
    lines.append(f"| full_tensor() alone (gather, world size 1) | - | - | {g * 1e3:.1f} | {payload / g / 1e9:.0f} | - |")
    lines += ["", "GB/s counts each payload byte once; a device-to-device copy reads and writes it, so the "
              "memory traffic is twice that.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
