"""GPU: transformers-mamba2-packed-samples with the mamba_ssm / causal_conv1d CUDA kernels.

Where the kernels run, the patch hands the packing's ``seq_idx`` to them instead of running each
sample alone. For each Mamba2 hybrid of the installed transformers (NemotronH, Bamba,
GraniteMoeHybrid, Falcon-H1; one Mamba2 + one attention layer, random weights), on the GPU:

  kernels     which of the model module's kernel functions are the CUDA / Triton ones, and which
              received a ``seq_idx`` during the patched packed forward (none: the torch path ran)
  leak        max |packed - alone| over the logits of every sample, unpatched (the bug)
  patched     the same with the patch (float32; the kernels' own rounding)
  grad        max relative difference of every parameter's gradient from a packed loss against the
              sum of the samples' gradients, patched
  split       max |seq_idx route - per-sample route| (the patch forced to split), patched

then bf16 timing of one forward + backward of a larger stack, median of ``--repeat``: unpatched
packed (wrong; the speed floor), patched (seq_idx), patched with the kernels' route turned off
(per-sample runs), one sample at a time.

    python benchmarks/bench_packed_mamba2_gpu.py [--repeat 5] [--markdown] [--check-only]

Needs a CUDA GPU and the mamba_ssm and causal_conv1d distributions (their kernels are looked up
when the modeling module is imported).
"""

import argparse
import importlib
import inspect
import statistics
import time

NAME = "transformers-mamba2-packed-samples"
FAMILIES = {  # family: (config class, causal-LM class)
    "nemotron_h": ("NemotronHConfig", "NemotronHForCausalLM"),
    "bamba": ("BambaConfig", "BambaForCausalLM"),
    "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM"),
    "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM"),
}
KERNELS = ("causal_conv1d_fn", "causal_conv1d_update", "mamba2_chunk_scan", "mamba_chunk_scan_combined",
           "mamba_split_conv1d_scan_combined", "selective_state_update")
ROWS = ((9, 7, 16), (6, 1, 2, 23))  # two rows: 3 and 4 samples, lengths 1 and 2 < the conv kernel
TIMED = (8192, 16)  # tokens in the row, samples


def config(family, hidden=32, heads=8, head_dim=8, state=8, chunk=8, layers=2):
    # causal_conv1d needs the in-projection width (2 * heads * head_dim + 2 * state + heads) to be a
    # multiple of 8 (its channel-last strides); the tiny shapes are chosen so
    import transformers

    cls = getattr(transformers, FAMILIES[family][0])
    params = inspect.signature(cls.__init__).parameters
    kw = dict(initializer_range=0.1, vocab_size=64, hidden_size=hidden, intermediate_size=hidden,
              num_attention_heads=2, num_key_value_heads=1)
    mamba = dict(mamba_n_heads=heads, mamba_d_head=head_dim, mamba_n_groups=1, mamba_d_state=state,
                 mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=chunk)
    if family == "nemotron_h":
        kw.update(mamba_num_heads=heads, mamba_head_dim=head_dim, n_groups=1, ssm_state_size=state,
                  conv_kernel=4, expand=2, chunk_size=chunk, head_dim=head_dim, num_hidden_layers=layers)
        if "layers_block_type" in params:
            kw["layers_block_type"] = ["mamba", "attention"] * (layers // 2)
        else:
            kw["hybrid_override_pattern"] = "M*" * (layers // 2)
    elif family == "bamba":
        kw.update(mamba, num_hidden_layers=layers, attn_layer_indices=list(range(1, layers, 2)))
    elif family == "granitemoehybrid":
        kw.update(mamba, num_hidden_layers=layers, num_local_experts=0, shared_intermediate_size=hidden)
        kw["layer_types" if "layer_types" in params else "layers_block_type"] = ["mamba", "attention"] * (layers // 2)
    else:
        kw.update(mamba, num_hidden_layers=layers // 2, mamba_d_ssm=heads * head_dim)
    kw = {k: v for k, v in kw.items() if k in params or k == "num_hidden_layers"}
    result = cls(**kw)
    result._attn_implementation = "sdpa"
    return result


def build(family, dtype, **sizes):
    import torch
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, FAMILIES[family][1])(config(family, **sizes))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("A_log", "dt_bias", "D")):
                parameter.uniform_(-0.5, 0.5)
    return model.to("cuda", dtype)


def packed(rows, vocab=64, seed=1):
    import torch

    generator = torch.Generator().manual_seed(seed)
    samples = [[torch.randint(0, vocab, (n,), generator=generator) for n in row] for row in rows]
    ids = torch.stack([torch.cat(row) for row in samples]).cuda()
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in rows]).cuda()
    return ids, positions, [[s.cuda() for s in row] for row in samples]


def kernel_spies(module):
    """Wrap the module's kernel functions: {name: [got seq_idx?]} per call; (restore)."""
    seen, originals = {}, {}
    for name in KERNELS:
        original = getattr(module, name, None)
        if original is None:
            continue
        originals[name] = original

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.setdefault(_name, []).append(kwargs.get("seq_idx") is not None)
            return _original(*args, **kwargs)

        setattr(module, name, spy)

    def restore():
        for name, original in originals.items():
            setattr(module, name, original)

    return seen, restore


def kernel_names(module):
    """The module's kernel functions that resolved to mamba_ssm / causal_conv1d code: the function
    itself (up to 5.14) or a callable its wrappers close over (transformers' hub-kernel fallback)."""
    def owned(function, depth=0):
        if (getattr(function, "__module__", "") or "").startswith(("mamba_ssm", "causal_conv1d")):
            return True
        cells = getattr(function, "__closure__", None) or ()
        return depth < 4 and any(owned(c.cell_contents, depth + 1) for c in cells
                                 if callable(getattr(c, "cell_contents", None)))

    return [name for name in KERNELS if getattr(module, name, None) is not None and owned(getattr(module, name))]


def check(family):
    import torch

    import compat_patches
    from compat_patches.patches.transformers import mamba2_packed_samples as record

    model = build(family, torch.float32).eval()
    module = importlib.import_module(type(model).__module__)
    ids, positions, samples = packed(ROWS)
    with torch.no_grad():
        alone = torch.stack([torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in row])
                             for row in samples])
        leak = (model(input_ids=ids, position_ids=positions, use_cache=False).logits - alone).abs().max()
        seen, restore = kernel_spies(module)
        try:
            with compat_patches.patched(NAME):
                fixed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        finally:
            restore()
        took = sorted(name for name, calls in seen.items() if any(calls))
        with compat_patches.patched(NAME):
            real = record._kernels_take_seq_idx
            record._kernels_take_seq_idx = lambda *a: False
            try:
                split = model(input_ids=ids, position_ids=positions, use_cache=False).logits
            finally:
                record._kernels_take_seq_idx = real
    model.train()

    def grads(loss_of):
        model.zero_grad()
        loss_of().backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    def packed_loss():
        return model(input_ids=ids, position_ids=positions, use_cache=False).logits.float().square().mean()

    def alone_loss():
        total = ids.numel()
        return sum(model(input_ids=s[None], use_cache=False).logits.float().square().sum()
                   for row in samples for s in row) / (total * model.config.vocab_size)

    reference = grads(alone_loss)
    with compat_patches.patched(NAME):
        got = grads(packed_loss)
    grad = max(float((got[n] - reference[n]).norm() / reference[n].norm().clamp_min(1e-30)) for n in reference)
    return {"family": family, "kernels": ",".join(kernel_names(module)) or "none",
            "seq_idx to": ",".join(took) or "none", "leak": float(leak),
            "patched": float((fixed - alone).abs().max()), "grad": grad,
            "split": float((fixed - split).abs().max())}


def timed(family, repeat):
    import torch

    import compat_patches
    from compat_patches.patches.transformers import mamba2_packed_samples as record

    tokens, count = TIMED
    model = build(family, torch.bfloat16, hidden=1024, heads=32, head_dim=64, state=128, chunk=256, layers=4)
    model.train()
    length = tokens // count
    ids = torch.randint(0, 64, (1, tokens), device="cuda")
    positions = torch.arange(length, device="cuda").repeat(count)[None]

    def step(packed_row=True):
        if packed_row:
            model(input_ids=ids, position_ids=positions, use_cache=False).logits.float().mean().backward()
        else:
            for start in range(0, tokens, length):
                model(input_ids=ids[:, start:start + length], use_cache=False).logits.float().mean().backward()

    def median(run):
        run()  # warm-up (Triton compiles)
        times = []
        for _ in range(repeat):
            torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        return statistics.median(times) * 1e3

    row = {"family": family, "unpatched": median(step)}
    with compat_patches.patched(NAME):
        row["patched (seq_idx)"] = median(step)
        real = record._kernels_take_seq_idx
        record._kernels_take_seq_idx = lambda *a: False
        try:
            row["patched (split)"] = median(step)
        finally:
            record._kernels_take_seq_idx = real
    row["one by one"] = median(lambda: step(False))
    return row


def table(rows, markdown):
    keys = list(rows[0])
    cells = [[f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
    else:
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths)) for c in cells]
    return "\n".join(lines)


def main():
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--check-only", action="store_true", help="the exactness table, no timing "
                        "(the first run on a machine spends minutes compiling and autotuning Triton kernels)")
    options = parser.parse_args()
    families = [f for f in FAMILIES if hasattr(transformers, FAMILIES[f][1])]
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()}")
    rows = []
    for family in families:
        rows.append(check(family))
        print(rows[-1], flush=True)  # as each finishes: a first run spends minutes in Triton autotuning
    print(table(rows, options.markdown), flush=True)
    if options.check_only:
        return
    print(f"\nforward + backward, bf16, {TIMED[0]} tokens in {TIMED[1]} samples, 4 layers, hidden 1024; "
          f"ms, median of {options.repeat}")
    print(table([timed(f, options.repeat) for f in families], options.markdown))


if __name__ == "__main__":
    main()
