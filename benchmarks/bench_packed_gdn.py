"""Packed samples through a Qwen3.5-shaped layer stack: unpatched packed, patched packed, one by one.

One row (or two) holds several samples, position_ids restarting at 0 for each (padding-free packing).
Variants, measured in one run on the same model and inputs:

  unpatched     the installed release's own forward on the packed row (fast, but every sample after
                the first is computed with its neighbour's conv and recurrent state: wrong)
  unpatched+cu  the same with cu_seq_lens_q/k passed too (5.9+ hands them to the delta rule, never
                to the conv; 5.20+'s torch fallback raises)
  patched       inside compat_patches.patched("transformers-gdn-packed-samples"): on CUDA with
                flash-linear-attention, fla's varlen causal conv1d and chunk_gated_delta_rule with
                cu_seqlens; on CPU the release's own forward on each sample (Packing.split_run)
  one-by-one    each sample its own forward: the reference every output is compared with

tokens/s = real tokens / median wall time (forward, or forward + backward of sum(out * fixed grad)).
"max diff" = max |output - one-by-one output| of the last hidden state over all tokens.

GPU (default on CUDA): bf16, hidden 2048, 4 layers (3 GatedDeltaNet + 1 attention, sdpa), linear
heads 16 key / 32 value of 128, attention 16 query / 2 kv heads of 256: rows of 8k-32k tokens
holding 4-64 samples. Backward where the installed fla allows it (fla 0.6.0 refuses the GDN backward
on Hopper with Triton >= 3.4.0, < 3.7.1, fla #640: then forward only, the refusal printed).
CPU: float32, a small stack (hidden 256), the torch path against one by one and unpatched.

    python benchmarks/bench_packed_gdn.py [--device cpu|cuda] [--repeat 5] [--quick]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

NAME = "transformers-gdn-packed-samples"


def build(device, dtype, hidden, layers, small):
    import torch
    import transformers

    if small:
        heads = dict(linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=32,
                     linear_value_head_dim=32, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    else:
        heads = dict(linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
                     linear_value_head_dim=128, num_attention_heads=16, num_key_value_heads=2, head_dim=256)
    layer_types = ["linear_attention" if (i + 1) % 4 else "full_attention" for i in range(layers)]
    config = transformers.Qwen3_5TextConfig(
        vocab_size=1024, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        layer_types=layer_types, linear_conv_kernel_dim=4, attn_implementation="sdpa", **heads)
    torch.manual_seed(0)
    model = transformers.Qwen3_5TextModel(config).to(device=device, dtype=dtype)
    model.train()  # no dropout in this model; train() only so backward-specific paths are the real ones
    return model


def lengths(tokens, samples):
    """`samples` unequal lengths summing to `tokens` (a fixed pattern, the first one longest)."""
    import random

    rng = random.Random(samples * 7919 + tokens)
    weights = [rng.uniform(0.5, 1.5) for _ in range(samples)]
    out = [max(1, int(tokens * w / sum(weights))) for w in weights]
    out[0] += tokens - sum(out)
    return out


def timed(fn, repeat, sync):
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run_case(model, rows, backward, repeat, device, dtype, model32=None):
    """rows: list of per-row sample lengths (all rows the same total). Returns {variant: (tok/s, diff)};
    with `model32` (a float32 copy) also "bf16 floor": (|one-by-one - float32 one-by-one|,
    |patched - float32 one-by-one|)."""
    import torch

    import compat_patches

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    hidden = model.config.hidden_size
    total = sum(rows[0])
    batch = len(rows)
    torch.manual_seed(1)
    x = torch.randn(batch, total, hidden, device=device, dtype=dtype) * 0.5
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in rows]).to(device)
    grad = torch.randn(batch, total, hidden, device=device, dtype=dtype)
    cu = None
    if batch == 1:
        bounds = [0]
        for n in rows[0]:
            bounds.append(bounds[-1] + n)
        cu = torch.tensor(bounds, dtype=torch.int32, device=device)

    def step(inputs, positions, grad_out, net=model, **kwargs):
        net.zero_grad(set_to_none=True)
        leaf = inputs.detach().requires_grad_(backward)
        out = net(inputs_embeds=leaf, position_ids=positions, use_cache=False, **kwargs).last_hidden_state
        if backward:
            (out.float() * grad_out.float()).sum().backward()
        return out.detach()

    def packed(**kwargs):
        return step(x, pos, grad, **kwargs)

    def one_by_one(net=model, x=x):
        outs = []
        for r, row in enumerate(rows):
            start, pieces = 0, []
            for n in row:
                sl = slice(start, start + n)
                pieces.append(step(x[r:r + 1, sl], pos[r:r + 1, sl], grad[r:r + 1, sl], net=net))
                start += n
            outs.append(torch.cat(pieces, dim=1))
        return torch.cat(outs, dim=0)

    results = {}
    ref_time, ref = timed(one_by_one, repeat, sync)
    tokens = batch * total
    variants = [("unpatched", lambda: packed())]
    if cu is not None:
        variants.append(("unpatched+cu", lambda: packed(cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                                        max_length_q=max(rows[0]), max_length_k=max(rows[0]))))
    for name, fn in variants:
        try:
            fn()  # warm-up (Triton compiles)
            seconds, out = timed(fn, repeat, sync)
            results[name] = (tokens / seconds, (out.float() - ref.float()).abs().max().item())
        except Exception as exc:  # 5.20+ torch fallback raises on cu_seqlens
            results[name] = (None, f"raises {type(exc).__name__}")
    with compat_patches.patched(NAME):
        packed()
        seconds, out = timed(packed, repeat, sync)
    results["patched"] = (tokens / seconds, (out.float() - ref.float()).abs().max().item())
    results["one-by-one"] = (tokens / ref_time, 0.0)
    if model32 is not None:
        saved, backward = backward, False
        with torch.no_grad():
            ref32 = one_by_one(model32, x.float())
        backward = saved
        results["bf16 floor"] = ((ref.float() - ref32).abs().max().item(), (out.float() - ref32).abs().max().item())
    return results


def backward_allowed(device):
    """(True, "") or (False, why): try one GDN backward on a tiny stack."""
    import torch

    if device != "cuda":
        return True, ""
    model = build(device, torch.bfloat16, 256, 2, small=True)
    x = torch.randn(1, 128, 256, device=device, dtype=torch.bfloat16, requires_grad=True)
    try:
        model(inputs_embeds=x, use_cache=False).last_hidden_state.sum().backward()
        return True, ""
    except Exception as exc:
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def exactness_fp32(device):
    """float32, tiny stack: max |patched - one by one| and |unpatched - one by one| (the fla kernels
    in float32 on CUDA)."""
    import torch

    model = build(device, torch.float32, 256, 4, small=True)
    rows = [[100, 3, 1, 60, 92]]
    result = run_case(model, rows, backward=False, repeat=1, device=device, dtype=torch.float32)
    return {name: diff for name, (_, diff) in result.items()}


def fmt_rate(rate):
    if rate is None:
        return "-"
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.1f}k" if rate >= 1e3 else f"{rate:.0f}"


def fmt_diff(diff):
    return diff if isinstance(diff, str) else f"{diff:.2e}"


def main():
    import torch
    import transformers

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller shapes (smoke run)")
    parser.add_argument("--cases", help="TOKENSxSAMPLESxROWS,... instead of the default shapes")
    parser.add_argument("--no-exactness", action="store_true", help="skip the float32 exactness line")
    args = parser.parse_args()
    device = args.device
    try:
        import fla
        fla_version = getattr(fla, "__version__", "?")
    except Exception:
        fla_version = "not installed"
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, fla {fla_version}, "
          f"triton {triton_version}, device {dev_name}")

    from compat_patches.patches.transformers import gdn_packed_samples as record

    calls = {"varlen": 0}
    varlen = record.varlen_forward

    def counting(*a, **k):
        calls["varlen"] += 1
        return varlen(*a, **k)

    record.varlen_forward = counting
    ok, why = backward_allowed(device)
    print(f"# backward: {'measured' if ok else 'not measured: ' + why}")
    try:
        if args.no_exactness:
            raise RuntimeError("skipped (--no-exactness)")
        exact = ", ".join(f"{k} {fmt_diff(v)}" for k, v in exactness_fp32(device).items())
    except Exception as exc:
        exact = f"not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    print(f"# float32 exactness, tiny stack, samples 100/3/1/60/92 (max |x - one by one|): {exact}")
    print(f"# patched GatedDeltaNet calls through the fla varlen path so far: {calls['varlen']}")

    if device == "cuda":
        dtype, hidden, layers, small = torch.bfloat16, 2048, 4, False
        cases = [(8192, 4, 1), (16384, 16, 1), (32768, 64, 1), (8192, 8, 2)]
        if args.quick:
            cases = [(4096, 4, 1)]
    else:
        dtype, hidden, layers, small = torch.float32, 256, 4, True
        cases = [(2048, 4, 1), (2048, 16, 1), (2048, 8, 2)]
        if args.quick:
            cases = [(512, 4, 1)]
    if args.cases:
        cases = [tuple(int(v) for v in case.split("x")) for case in args.cases.split(",")]
    model = build(device, dtype, hidden, layers, small)
    model32 = None
    if dtype != torch.float32:
        import copy

        model32 = copy.deepcopy(model).float()
    what = "forward + backward" if ok else "forward"
    print(f"# {what}, {str(dtype).replace('torch.', '')}, hidden {hidden}, {layers} layers "
          f"({sum(t == 'linear_attention' for t in model.config.layer_types)} GatedDeltaNet), "
          f"repeat {args.repeat} (median)")
    print()
    print("| tokens/row x rows | samples/row | unpatched | unpatched+cu | patched | one-by-one "
          "| patched / unpatched | patched / one-by-one | max diff unpatched | max diff unpatched+cu "
          "| max diff patched | one-by-one vs float32 | patched vs float32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for tokens, samples, batch in cases:
        rows = [lengths(tokens, samples + r) for r in range(batch)]  # different packings per row
        res = run_case(model, rows, ok, args.repeat, device, dtype, model32)
        floor = res.get("bf16 floor", ("-", "-"))
        un, cu, pa, ob = (res.get(k, (None, "-")) for k in ("unpatched", "unpatched+cu", "patched", "one-by-one"))
        speed = f"{un[0] / pa[0]:.2f}x slower" if un[0] and pa[0] else "-"
        if un[0] and pa[0] and pa[0] >= un[0]:
            speed = f"{pa[0] / un[0]:.2f}x faster"
        gain = "-"
        if pa[0] and ob[0]:
            gain = f"{pa[0] / ob[0]:.1f}x faster" if pa[0] >= ob[0] else f"{ob[0] / pa[0]:.1f}x slower"
        print(f"| {tokens} x {batch} | {'/'.join(str(samples + r) for r in range(batch))} "
              f"| {fmt_rate(un[0])} | {fmt_rate(cu[0])} | {fmt_rate(pa[0])} | {fmt_rate(ob[0])} "
              f"| {speed} | {gain} | {fmt_diff(un[1])} | {fmt_diff(cu[1])} | {fmt_diff(pa[1])} "
              f"| {fmt_diff(floor[0])} | {fmt_diff(floor[1])} |", flush=True)
        del res
        print(f"#   (fla varlen calls so far: {calls['varlen']})", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
