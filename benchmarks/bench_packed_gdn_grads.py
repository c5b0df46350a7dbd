"""GDN packed samples: outputs and every parameter's gradient against a float64 reference.

For a Qwen3.5-shaped stack (the sizes of bench_packed_gdn.py: hidden 2048, 4 layers = 3
GatedDeltaNet + 1 attention, 16 key / 32 value heads of 128) and a small one (hidden 256, 4 / 8
heads of 32), one packed row of 6 samples (lengths 1 and 3 below the conv kernel among them,
position_ids restarting at 0), loss = sum(out * G) for a fixed random G, in bfloat16 and float32:

  fla alone        each sample its own forward + backward, unpatched (transformers' own forward:
                   torch conv, fla's chunk_gated_delta_rule when fla is importable), gradients summed
  patched          the packed row inside compat_patches.patched(...): on CUDA with fla, fla's varlen
                   causal_conv1d + chunk_gated_delta_rule with cu_seqlens (the record's varlen_forward)
  unpatched        the packed row, unpatched (the leak)
  torch alone      each sample alone through transformers' torch delta rule (its
                   torch_chunk_gated_delta_rule, which computes in float32 whatever the input dtype)
  torch alone tf32 the same with torch.backends.cuda.matmul.allow_tf32 (float32 only): every float32
                   matmul rounded to TF32, the precision fla's Triton dots use for float32 by default
  reference        float64, each sample alone: transformers' torch_chunk_gated_delta_rule with its
                   float32 casts turned into float64 (exec of its own source), a float64 mirror of the
                   GatedDeltaNet forward and of the RMSNorms; same weights (all weights, inputs and G
                   are bf16-representable, so one reference serves both dtypes)

Per comparison: the output error (max abs, and relative in norm) and, per parameter, the relative
error in norm ||g - g_ref|| / ||g_ref|| and max-abs ratio max|g - g_ref| / max|g_ref|; parameters
are grouped over layers ("linear_attn.A_log" = the largest over the 3 GatedDeltaNet layers).
"cond A_log" / "cond dt_bias": sum over tokens of |term| / |sum of terms| (norm over heads) for the
reference's gate gradient dL/dA_log = sum_t dL/dg_t * g_t (and dt_bias likewise), an outer-level
condition number: a per-term relative rounding u gives a relative error of about u * cond.

    python benchmarks/bench_packed_gdn_grads.py [--stacks qwen3.5,small] [--dtypes float32,bfloat16]
        [--json out.jsonl] [--tag name]

Env TRITON_F32_DEFAULT=ieee makes fla's Triton dots full float32 (fla's own tests do this);
run once more with it and another --tag to see how much of the float32 error is TF32.
"""

import argparse
import copy
import inspect
import json
import math
import os
import sys
import textwrap
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

NAME = "transformers-gdn-packed-samples"
STACKS = {
    "qwen3.5": dict(hidden=2048, layers=4, small=False, rows=[700, 3, 1, 64, 129, 1151]),
    "small": dict(hidden=256, layers=4, small=True, rows=[100, 3, 1, 60, 92, 144]),
}
T0 = time.time()


def log(*args):
    print(f"[{time.time() - T0:7.1f}s]", *args, flush=True)


# --- the model's modules --------------------------------------------------------------------------

def modeling():
    import importlib

    return importlib.import_module("transformers.models.qwen3_5.modeling_qwen3_5")


def torch_rule():
    """transformers' own torch delta rule (under the fla / hub-kernel dispatch wrapper)."""
    return inspect.unwrap(modeling().torch_chunk_gated_delta_rule)


def float64_rule():
    """transformers' torch_chunk_gated_delta_rule with its float32 casts made float64."""
    function = torch_rule()
    lines = textwrap.dedent(inspect.getsource(function)).splitlines()
    while not lines[0].startswith("def "):
        lines.pop(0)  # decorators
    source = "\n".join(lines).replace("torch.float32", "torch.float64")
    namespace = dict(function.__globals__)
    exec(compile(source, f"<float64 {function.__name__}>", "exec"), namespace)
    return namespace[function.__name__]


class swap_rule:
    """Make the modeling module's GatedDeltaNet call `rule` (the torch path) while inside."""

    def __init__(self, rule):
        self.rule = rule

    def __enter__(self):
        self.module = modeling()
        self.saved = self.module.torch_chunk_gated_delta_rule
        self.module.torch_chunk_gated_delta_rule = self.rule

    def __exit__(self, *exc):
        self.module.torch_chunk_gated_delta_rule = self.saved


def reference_mixer(rule, records):
    """A float64 GatedDeltaNet forward (Qwen3.5 layout, no cache, no mask) mirroring transformers':
    keeps g and sigmoid(a + dt_bias) for the condition numbers."""
    import torch
    import torch.nn.functional as F

    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        assert cache is None and self.activation == "silu"
        batch, length, _ = hidden_states.shape
        mixed = self.in_proj_qkv(hidden_states).transpose(1, 2)
        z = self.in_proj_z(hidden_states).reshape(batch, length, -1, self.head_v_dim)
        b = self.in_proj_b(hidden_states)
        a = self.in_proj_a(hidden_states)
        weight = self.conv1d.weight
        mixed = F.conv1d(mixed, weight, self.conv1d.bias, padding=weight.shape[-1] - 1,
                         groups=mixed.shape[1])[..., :length]
        mixed = F.silu(mixed).transpose(1, 2)
        q, k, v = torch.split(mixed, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(batch, length, -1, self.head_k_dim)
        k = k.reshape(batch, length, -1, self.head_k_dim)
        v = v.reshape(batch, length, -1, self.head_v_dim)
        if self.num_v_heads > self.num_k_heads:  # grouped key heads, as transformers' forward
            q = q.repeat_interleave(self.num_v_heads // self.num_k_heads, dim=2)
            k = k.repeat_interleave(self.num_v_heads // self.num_k_heads, dim=2)
        beta = b.sigmoid()
        g = -self.A_log.exp() * F.softplus(a + self.dt_bias)
        if g.requires_grad:
            g.retain_grad()
            records.setdefault(self, []).append((g, torch.sigmoid(a + self.dt_bias).detach()))
        core, _ = rule(q, k, v, g=g, beta=beta, initial_state=None, output_final_state=False,
                       use_qk_l2norm_in_kernel=True)
        core = core.reshape(-1, self.head_v_dim)
        norm = self.norm
        core = core * torch.rsqrt(core.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        core = norm.weight * core * F.silu(z.reshape(-1, self.head_v_dim))
        return self.out_proj(core.reshape(batch, length, -1))

    return forward


def rms_norm_64(self, x):
    import torch

    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


def make_reference(model32, records, dtype=None, rule=None):
    """A copy of `model32` in float64 (or `dtype`) with the mirrored mixer and RMSNorms, running
    the float64 rule (or `rule`)."""
    import torch

    mod = modeling()
    ref = copy.deepcopy(model32).to(dtype or torch.float64)
    forward = reference_mixer(rule or float64_rule(), records)
    for module in ref.modules():
        if isinstance(module, mod.Qwen3_5GatedDeltaNet):
            module.forward = types.MethodType(forward, module)
        elif type(module).__name__ == "Qwen3_5RMSNorm":
            module.forward = types.MethodType(rms_norm_64, module)
    return ref


# --- runs -----------------------------------------------------------------------------------------

def run(model, x, pos, grad, rows, mode):
    """(output [1, T, H] float64, {name: grad float64}) of loss sum(out * grad); mode 'alone' runs
    each sample on its own (gradients accumulate), 'packed' the whole row."""
    import torch

    model.zero_grad(set_to_none=True)
    dtype = next(model.parameters()).dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x, grad = x.to(dtype), grad.to(dtype)
    if mode == "packed":
        out = model(inputs_embeds=x, position_ids=pos, use_cache=False).last_hidden_state
        (out.to(acc) * grad.to(acc)).sum().backward()
        result = out.detach().double()
    else:
        pieces, start = [], 0
        for n in rows:
            sl = slice(start, start + n)
            out = model(inputs_embeds=x[:, sl], position_ids=pos[:, sl], use_cache=False).last_hidden_state
            (out.to(acc) * grad[:, sl].to(acc)).sum().backward()
            pieces.append(out.detach().double())
            start += n
        result = torch.cat(pieces, dim=1)
    grads = {n: p.grad.detach().double() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return result, grads


def group_of(name, layer_types):
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        kind = "linear" if layer_types[int(parts[i + 1])] == "linear_attention" else "full"
        return kind, ".".join(parts[i + 2:]), int(parts[i + 1])
    return "model", name, None


def compare(out, grads, ref_out, ref_grads, layer_types):
    import torch

    result = {"out max abs": float((out - ref_out).abs().max()),
              "out rel": float((out - ref_out).norm() / ref_out.norm()), "params": {}}
    missing = sorted(set(ref_grads) - set(grads))
    if missing:
        result["missing grads"] = missing
    for name, r in ref_grads.items():
        g = grads.get(name)
        if g is None:
            continue
        diff = g - r
        rnorm = float(r.norm())
        result["params"][name] = {
            "rel": float(diff.norm()) / rnorm if rnorm > 0 else (0.0 if float(diff.norm()) == 0 else math.inf),
            "maxrel": float(diff.abs().max() / r.abs().max().clamp_min(1e-300)),
            "finite": bool(torch.isfinite(g).all())}
        if name.endswith(("A_log", "dt_bias")):  # per head: reference and error
            result["params"][name]["per head"] = [[float(a), float(b)] for a, b in zip(r, diff.abs())]
    groups = {}
    for name, m in result["params"].items():
        kind, rest, layer = group_of(name, layer_types)
        key = f"{kind}:{rest}"
        best = groups.get(key)
        if best is None or m["rel"] > best["rel"]:
            groups[key] = dict(m, layer=layer)
    result["groups"] = groups
    return result


def conditioning(ref, records, grads):
    """Per GatedDeltaNet layer of the reference: cond of dL/dA_log and dL/ddt_bias (see module doc),
    and |sum of terms - autograd's grad| / |grad| as a check of the bookkeeping."""
    import torch

    rows = {}
    names = {module: name for name, module in ref.named_modules()}
    for module, entries in records.items():
        A = module.A_log.detach().exp()
        termsA = [(g.grad * g.detach()).reshape(-1, g.shape[-1]) for g, _ in entries]
        termsD = [(g.grad * (-A) * s).reshape(-1, g.shape[-1]) for g, s in entries]
        row = {}
        for key, terms in (("A_log", termsA), ("dt_bias", termsD)):
            t = torch.cat(terms)
            total, absolute = t.sum(0), t.abs().sum(0)
            autograd = grads[f"{names[module]}.{key}"]
            row[key] = float(absolute.norm() / total.norm())
            row[key + " per-head max"] = float((absolute / total.abs()).max())
            row[key + " check"] = float((total - autograd).norm() / autograd.norm())
        row["A"] = [round(float(a), 4) for a in A]
        rows[names[module]] = row
    return rows


def study(stack, dtypes, device, tag, sink, only=None):
    import torch

    import compat_patches
    from bench_packed_gdn import build

    spec = STACKS[stack]
    rows = spec["rows"]
    total = sum(rows)
    log(f"{stack}: build (hidden {spec['hidden']}, {spec['layers']} layers), samples {rows}")
    model32 = build(device, torch.float32, spec["hidden"], spec["layers"], spec["small"])
    with torch.no_grad():
        for p in model32.parameters():
            p.copy_(p.bfloat16().float())  # bf16-representable: one reference for both dtypes
    layer_types = model32.config.layer_types
    torch.manual_seed(1)
    x = (torch.randn(1, total, spec["hidden"], device=device) * 0.5).bfloat16().double()
    grad = torch.randn(1, total, spec["hidden"], device=device).bfloat16().double()
    pos = torch.cat([torch.arange(n) for n in rows])[None].to(device)

    records = {}
    ref_model = make_reference(model32, records)
    ref_out, ref_grads = run(ref_model, x, pos, grad, rows, "alone")
    cond = conditioning(ref_model, records, ref_grads)
    log(f"{stack}: float64 reference done; cond {json.dumps(cond)}")
    sink({"tag": tag, "stack": stack, "kind": "cond", "cond": cond})
    del ref_model, records
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        model = model32 if dtype == torch.float32 else copy.deepcopy(model32).to(dtype)
        variants = {}

        def record(name, fn):
            if only and name not in only:
                return
            start = time.time()
            try:
                out, grads = fn()
            except Exception as exc:  # noqa: BLE001 - reported, the next variant still runs
                log(f"{stack} {dtype_name} {name}: raises {type(exc).__name__}: {str(exc)[:300]}")
                sink({"tag": tag, "stack": stack, "dtype": dtype_name, "variant": name,
                      "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                return
            variants[name] = (out, grads)
            res = compare(out, grads, ref_out, ref_grads, layer_types)
            sink({"tag": tag, "stack": stack, "dtype": dtype_name, "variant": name, "vs": "reference",
                  "seconds": time.time() - start, **res})
            worst = sorted(res["groups"].items(), key=lambda kv: -kv[1]["rel"])[:4]
            log(f"{stack} {dtype_name} {name} vs f64: out rel {res['out rel']:.2e}, worst "
                + ", ".join(f"{k} {v['rel']:.2e}" for k, v in worst))

        record("fla alone", lambda: run(model, x, pos, grad, rows, "alone"))

        def patched():
            from compat_patches.patches.transformers import gdn_packed_samples as rec

            calls = {"n": 0}
            real = rec.varlen_forward

            def counting(*a, **k):
                calls["n"] += 1
                return real(*a, **k)

            rec.varlen_forward = counting
            try:
                with compat_patches.patched(NAME):
                    result = run(model, x, pos, grad, rows, "packed")
            finally:
                rec.varlen_forward = real
            log(f"{stack} {dtype_name} patched: varlen_forward calls {calls['n']}")
            return result

        record("patched", patched)
        record("unpatched", lambda: run(model, x, pos, grad, rows, "packed"))

        def torch_alone():
            with swap_rule(torch_rule()):
                return run(model, x, pos, grad, rows, "alone")

        record("torch alone", torch_alone)
        if dtype == torch.float32 and device == "cuda":
            def tf32():
                saved = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = True
                try:
                    return torch_alone()
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = saved

            record("torch alone tf32", tf32)
        if dtype == torch.float32:
            # the reference's mirror itself, in float32 with transformers' float32 rule: must equal
            # "torch alone" (transformers' own forward) to float32 rounding
            mirror = make_reference(model32, {}, torch.float32, torch_rule())
            record("mirror f32", lambda: run(mirror, x, pos, grad, rows, "alone"))
            del mirror
        for a, b in (("patched", "fla alone"), ("fla alone", "torch alone"), ("patched", "torch alone"),
                     ("mirror f32", "torch alone")):
            if a in variants and b in variants:
                res = compare(*variants[a], *variants[b], layer_types)
                sink({"tag": tag, "stack": stack, "dtype": dtype_name, "variant": a, "vs": b, **res})
                worst = sorted(res["groups"].items(), key=lambda kv: -kv[1]["rel"])[:3]
                log(f"{stack} {dtype_name} {a} vs {b}: out max {res['out max abs']:.2e}, worst "
                    + ", ".join(f"{k} {v['rel']:.2e} / max {v['maxrel']:.2e}" for k, v in worst))
        del variants, model
        if device == "cuda":
            torch.cuda.empty_cache()


# --- markdown ---------------------------------------------------------------------------------------

COLUMNS = (("A_log", "linear:linear_attn.A_log"), ("dt_bias", "linear:linear_attn.dt_bias"),
           ("in_proj_a", "linear:linear_attn.in_proj_a.weight"),
           ("in_proj_b", "linear:linear_attn.in_proj_b.weight"),
           ("conv1d", "linear:linear_attn.conv1d.weight"),
           ("in_proj_qkv", "linear:linear_attn.in_proj_qkv.weight"),
           ("in_proj_z", "linear:linear_attn.in_proj_z.weight"),
           ("norm (gated)", "linear:linear_attn.norm.weight"),
           ("out_proj", "linear:linear_attn.out_proj.weight"))


def render(paths):
    """Markdown tables from the JSON lines of one or more runs."""
    items = []
    for path in paths:
        with open(path) as handle:
            items += [json.loads(line) for line in handle if line.strip()]
    lines = []
    for header in (i for i in items if i.get("kind") == "header"):
        lines.append("- " + ", ".join(f"{k} {v}" for k, v in header.items() if k != "kind"))
    stacks = list(dict.fromkeys(i["stack"] for i in items if "stack" in i))

    def f(v):
        return "-" if v is None else f"{v:.1e}"

    for stack in stacks:
        spec = STACKS[stack]
        lines += ["", f"#### {stack} stack (hidden {spec['hidden']}, {spec['layers']} layers), samples "
                  f"{' / '.join(map(str, spec['rows']))} in one row", ""]
        head = ["dtype", "variant", "vs", "out max abs", "out rel"] + [c for c, _ in COLUMNS] + \
            ["attention layer (max)", "mlp + norms (max)", "worst parameter"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i in items:
            if i.get("stack") != stack or "groups" not in i:
                continue
            groups = i["groups"]
            special = {key for _, key in COLUMNS}
            attention = [m["rel"] for k, m in groups.items() if k.startswith("full:self_attn")]
            rest = [m["rel"] for k, m in groups.items() if k not in special and not k.startswith("full:self_attn")]
            worst = max(i["params"].items(), key=lambda kv: kv[1]["rel"])
            tag = "" if i["tag"].endswith("unset") else f" ({i['tag'].split('=')[-1]} dots)"
            row = [i["dtype"], i["variant"] + tag, i["vs"].replace("reference", "float64"),
                   f(i["out max abs"]), f(i["out rel"])]
            row += [f(groups.get(key, {}).get("rel")) for _, key in COLUMNS]
            row += [f(max(attention)) if attention else "-", f(max(rest)) if rest else "-",
                    f"{worst[0]} {worst[1]['rel']:.1e}"]
            lines.append("| " + " | ".join(row) + " |")
        for i in items:
            if i.get("stack") == stack and "error" in i:
                lines.append(f"\n{i['dtype']} {i['variant']}: {i['error']}")
        conds = [i for i in items if i.get("stack") == stack and i.get("kind") == "cond"]
        if conds:
            lines += ["", "| layer | cond A_log | cond A_log, worst head | cond dt_bias | A = exp(A_log) range |",
                      "|---|---|---|---|---|"]
            for layer, c in conds[0]["cond"].items():
                lines.append(f"| {layer} | {c['A_log']:.1f} | {c['A_log per-head max']:.1f} | {c['dt_bias']:.1f} "
                             f"| {min(c['A']):.2f} - {max(c['A']):.2f} |")
    return "\n".join(lines)


def main():
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stacks", default="qwen3.5,small")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--variants", help="comma-separated subset of the variants (default: all)")
    parser.add_argument("--json", help="append one JSON line per result here")
    parser.add_argument("--tag", default=f"TRITON_F32_DEFAULT={os.environ.get('TRITON_F32_DEFAULT', 'unset')}")
    parser.add_argument("--render", nargs="+", help="print markdown tables of these JSON-lines files")
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return
    try:
        import fla
        fla_version = getattr(fla, "__version__", "?")
    except Exception as exc:  # noqa: BLE001
        fla_version = f"not importable ({type(exc).__name__})"
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "-"
    try:
        import tilelang
        tilelang_version = getattr(tilelang, "__version__", "?")
    except Exception as exc:  # noqa: BLE001
        tilelang_version = f"not importable ({type(exc).__name__}: {str(exc)[:120]})"
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    header = {"torch": torch.__version__, "transformers": transformers.__version__, "fla": fla_version,
              "triton": triton_version, "tilelang": tilelang_version, "device": device_name,
              "tag": args.tag}
    log(json.dumps(header))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def sink(item):
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps(item) + "\n")

    sink({"kind": "header", **header})
    for stack in args.stacks.split(","):
        study(stack, args.dtypes.split(","), args.device, args.tag, sink,
              set(args.variants.split(",")) if args.variants else None)
    log("done")


if __name__ == "__main__":
    main()
