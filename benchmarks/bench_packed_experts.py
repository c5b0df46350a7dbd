"""CPU cost of expanding Transformers-5 packed MoE experts into per-expert vLLM keys.

Qwen3-30B-A3B-shaped layer stack: 48 layers x 128 experts, hidden 2048, moe_intermediate 768,
``mlp.experts.gate_up_proj`` [128, 1536, 2048] and ``mlp.experts.down_proj`` [128, 2048, 768] per
layer (18,432 per-expert tensors in all), plus the dense/attention tensors of each layer, which pass
through. Two measurements:

  1. per-yielded-tensor overhead, full shapes on the ``meta`` device (no data, so only the Python +
     view-creation cost is timed), for:
       ours          compat_patches.moe.expand_packed_experts (narrow + unbind views)
       verl-0.9      verl 0.9's unfuse_moe_params, written out (chunk, index, .contiguous())
       clone         per-expert .clone() (what a "safe" copy of each expert costs in Python alone)
  2. bytes allocated on the CPU allocator while streaming the same layer stack with small REAL
     tensors (hidden and intermediate sizes shrunk, layer/expert counts kept), measured by
     torch.profiler (profile_memory=True): must be 0 for the zero-copy expansion.

    python benchmarks/bench_packed_experts.py [--repeat 5] [--markdown]
"""

import argparse
import statistics
import time

LAYERS, EXPERTS, HIDDEN, INTER = 48, 128, 2048, 768


def stack(device, hidden=HIDDEN, inter=INTER, dtype=None):
    import torch

    dtype = dtype or torch.bfloat16
    pairs = []
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        pairs.append((p + "self_attn.q_proj.weight", torch.empty(4096 // 32, hidden, device=device, dtype=dtype)))
        pairs.append((p + "mlp.gate.weight", torch.empty(EXPERTS, hidden, device=device, dtype=dtype)))
        pairs.append((p + "mlp.experts.gate_up_proj", torch.empty(EXPERTS, 2 * inter, hidden, device=device, dtype=dtype)))
        pairs.append((p + "mlp.experts.down_proj", torch.empty(EXPERTS, hidden, inter, device=device, dtype=dtype)))
        if device != "meta":
            for _, t in pairs[-4:]:
                t.normal_()
    return pairs


def verl_09_unfuse(weights):
    """verl 0.9.0/0.9.1 verl/workers/engine/fsdp/utils.py:unfuse_moe_params (non-GPT-OSS branch)."""
    for name, tensor in weights:
        if name.endswith(".mlp.experts.gate_up_proj") and tensor.dim() == 3:
            gate, up = tensor.chunk(2, dim=1)
            base = name.removesuffix(".gate_up_proj")
            for expert_id in range(tensor.size(0)):
                yield f"{base}.{expert_id}.gate_proj.weight", gate[expert_id].contiguous()
                yield f"{base}.{expert_id}.up_proj.weight", up[expert_id].contiguous()
            continue
        if name.endswith(".mlp.experts.down_proj") and tensor.dim() == 3:
            base = name.removesuffix(".down_proj")
            for expert_id in range(tensor.size(0)):
                yield f"{base}.{expert_id}.down_proj.weight", tensor[expert_id].contiguous()
            continue
        yield name, tensor


def clone_each(weights):
    from compat_patches.moe import expand_packed_experts

    for name, tensor in expand_packed_experts(weights):
        yield name, (tensor.clone() if ".mlp.experts." in name else tensor)


def variants():
    from compat_patches.moe import expand_packed_experts

    return {"ours": expand_packed_experts, "verl-0.9": verl_09_unfuse, "clone": clone_each}


def time_variant(fn, pairs, repeat):
    times, count = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = 0
        for _ in fn(iter(pairs)):
            count += 1
        times.append(time.perf_counter() - start)
    return count, min(times), statistics.median(times)


def allocated_bytes(fn, pairs):
    """Bytes the CPU allocator handed out while the stream was consumed (profiler, not RSS)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        kept = [t for _, t in fn(iter(pairs))]  # keep them alive: nothing is freed in between
    total = sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())
    sources = {t.untyped_storage().data_ptr() for _, t in pairs}
    new_storages = {t.untyped_storage().data_ptr() for t in kept} - sources
    new_bytes = sum(t.untyped_storage().nbytes() for t in kept
                    if t.untyped_storage().data_ptr() in new_storages)
    del kept
    return total, new_bytes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    import platform

    import torch

    torch.set_num_threads(1)
    meta = stack("meta")
    small = stack("cpu", hidden=32, inter=12, dtype=torch.float32)
    experts_total = LAYERS * EXPERTS * 3

    rows = []
    for label, fn in variants().items():
        count, best, median = time_variant(fn, meta if label != "clone" else small, args.repeat)
        total, new_bytes = allocated_bytes(fn, small)
        rows.append((label, count, best, median, best / experts_total * 1e9, total, new_bytes))

    print(f"# packed-experts expansion, CPU ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, 1 thread, best and median of {args.repeat}")
    print(f"stack: {LAYERS} layers x {EXPERTS} experts, H={HIDDEN}, I={INTER} (timing: meta device; "
          f"'clone' timed on the small real stack H=32, I=12); {experts_total} expert tensors")
    print()
    print("| variant | tensors yielded | stream time best / median (ms) | per expert tensor, best (ns) | "
          "allocator bytes (small real stack) | bytes in new storages |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, count, best, median, per, total, new_bytes in rows:
        print(f"| {label} | {count} | {best * 1e3:.1f} / {median * 1e3:.1f} | {per:.0f} | {total} | {new_bytes} |")
    ours = rows[0]
    assert ours[5] == 0 and ours[6] == 0, "zero-copy expansion allocated memory"


if __name__ == "__main__":
    main()
