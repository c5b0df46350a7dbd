"""fla's chunk_gated_delta_rule gradients against a float64 recurrence, per dtype and gate size.

bench_packed_gdn_grads.py found fla's float32 gate gradient far from the float64 reference on an
H100 in transformers' own unpatched per-sample call, too (with and without TF32 dots), while bf16
agrees. This isolates the kernel: one call of fla's chunk_gated_delta_rule (as transformers calls
it: l2-normalised q/k in the kernel, float32 g and beta) on random inputs, its gradients of q, k, v,
g and beta against autograd through a float64 token-by-token recurrence of the same rule, for
float32 and bfloat16 q/k/v, a mild and a strong decay (g = -A * softplus(a + dt_bias) with A as in
the GDN layers of the grads benchmark, 1.5 - 16, or 0.01 - 0.1), one sequence and the same tokens as
a varlen row (cu_seqlens).

    python benchmarks/bench_fla_gate_grad.py [--json out.jsonl]      (CUDA + fla)
"""

import argparse
import json

import torch
import torch.nn.functional as F


def recurrence(q, k, v, g, beta, cu_seqlens):
    """float64 gated delta rule, token by token, state reset at each sequence start ([1, T, H, D])."""
    q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
    q = q / q.shape[-1] ** 0.5
    out = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        state = q.new_zeros(q.shape[2], q.shape[3], v.shape[3])
        for t in range(start, end):
            state = state * g[0, t].exp()[:, None, None]
            kt = k[0, t]
            u = beta[0, t][:, None] * (v[0, t] - torch.einsum("hk,hkv->hv", kt, state))
            state = state + kt[:, :, None] * u[:, None, :]
            out.append(torch.einsum("hk,hkv->hv", q[0, t], state))
    return torch.stack(out)[None]


def leaves(lengths, heads, dim, decay, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(1, total, heads, dim, generator=gen, dtype=torch.float64) for _ in range(3))
    low, high = decay
    A = low + (high - low) * torch.rand(heads, generator=gen, dtype=torch.float64)
    a = torch.randn(1, total, heads, generator=gen, dtype=torch.float64)
    g = -A * F.softplus(a + 0.5)
    beta = torch.rand(1, total, heads, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(1, total, heads, dim, generator=gen, dtype=torch.float64)
    return dict(q=q, k=k, v=v, g=g, beta=beta), grad_out


def gradients(fn, inputs, grad_out, dtype, device):
    # fla and transformers take q/k/v in the model's dtype, g and beta in float32
    cast = {n: t.to(device, dtype if n in "qkv" else (torch.float64 if dtype == torch.float64 else torch.float32))
            for n, t in inputs.items()}
    cast = {n: t.detach().requires_grad_() for n, t in cast.items()}
    out = fn(**cast)
    out.backward(grad_out.to(device, out.dtype))
    return {n: t.grad.double().cpu() for n, t in cast.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    import fla
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    lengths, heads, dim = [100, 3, 1, 60, 92, 144], 8, 32
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    print(f"fla {fla.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| dtype | decay A | call | out rel | dq | dk | dv | dg | dbeta |\n|---|---|---|---|---|---|---|---|---|")
    for decay in ((1.5, 16.0), (0.01, 0.1)):
        inputs, grad_out = leaves(lengths, heads, dim, decay)
        ref_out = recurrence(**inputs, cu_seqlens=cu).detach()
        ref = gradients(lambda **t: recurrence(**t, cu_seqlens=cu), inputs, grad_out, torch.float64, "cpu")
        for dtype in (torch.float32, torch.bfloat16):
            for call in ("varlen", "one sequence"):
                if call == "varlen":
                    cu_dev = cu.to("cuda", torch.int32)
                    fn = lambda **t: chunk_gated_delta_rule(**t, cu_seqlens=cu_dev, use_qk_l2norm_in_kernel=True)[0]
                else:  # each sample its own call (as transformers' unpatched per-sample forward)
                    def fn(**t):
                        return torch.cat([chunk_gated_delta_rule(**{n: x[:, s:e] for n, x in t.items()},
                                                                 use_qk_l2norm_in_kernel=True)[0]
                                          for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())], dim=1)
                got = gradients(fn, inputs, grad_out, dtype, "cuda")
                with torch.no_grad():
                    out = fn(**{n: t.to("cuda", dtype if n in "qkv" else torch.float32) for n, t in inputs.items()})
                rel = {n: ((got[n] - ref[n]).norm() / ref[n].norm()).item() for n in ref}
                out_rel = ((out.double().cpu() - ref_out).norm() / ref_out.norm()).item()
                row = dict(fla=fla.__version__, dtype=str(dtype).split(".")[-1], decay=list(decay), call=call,
                           out_rel=out_rel, **{f"d{n}": r for n, r in rel.items()})
                print(f"| {row['dtype']} | {decay[0]} - {decay[1]} | {call} | {out_rel:.1e} | "
                      + " | ".join(f"{rel[n]:.1e}" for n in ("q", "k", "v", "g", "beta")) + " |", flush=True)
                if args.json:
                    with open(args.json, "a") as handle:
                        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
