"""CPU cost of keeping packed samples apart in a Mamba2 hybrid (transformers-mamba2-packed-samples).

A Bamba-shaped stack built from a config (random weights, float32): 2 Mamba2 layers + 1 attention
layer, hidden 256, 8 Mamba heads of 64, state 64, chunk 64. One packed row of `tokens` tokens made
of `samples` equal samples (``position_ids`` restarting at 0, ``use_cache=False``), timed as:

  unpatched    the packed row without the patch (wrong: state leaks across samples; the speed floor)
  patched      the packed row with the patch: the torch path runs the original mixer per sample
               (``Packing.split_run``), attention and MLPs stay batched over the whole row
  one-by-one   each sample through the whole model alone (what a trainer without packing does)

forward only and forward + backward, median of `--repeat` runs. The GPU path (``seq_idx`` to the
mamba_ssm / causal_conv1d kernels) is not measured here (no GPU).

    python benchmarks/bench_packed_mamba2.py [--repeat 5] [--markdown]
"""

import argparse
import statistics
import time

NAME = "transformers-mamba2-packed-samples"
LAYOUTS = ((1024, 4), (1024, 16), (1024, 64))  # (tokens in the row, samples)


def build():
    import torch
    import transformers

    config = transformers.BambaConfig(
        vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8,
        mamba_d_head=64, mamba_n_groups=1, mamba_d_state=64, mamba_d_conv=4, mamba_expand=2,
        mamba_chunk_size=64)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.BambaForCausalLM(config)


def inputs(tokens, samples):
    import torch

    length = tokens // samples
    ids = torch.randint(0, 1024, (1, tokens), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(length).repeat(samples)[None]
    return ids, positions, length


def run(model, tokens, samples, mode, backward):
    import torch

    ids, positions, length = inputs(tokens, samples)
    with torch.set_grad_enabled(backward):
        if mode == "one-by-one":
            for start in range(0, tokens, length):
                logits = model(input_ids=ids[:, start:start + length], use_cache=False).logits
                if backward:
                    logits.float().mean().backward()
        else:
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
            if backward:
                logits.float().mean().backward()


def measure(model, tokens, samples, mode, backward, repeat):
    import compat_patches

    model.train(backward)
    times = []
    for index in range(repeat + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        if mode == "patched":
            with compat_patches.patched(NAME):
                run(model, tokens, samples, mode, backward)
        else:
            run(model, tokens, samples, mode, backward)
        if index:  # the first run warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    options = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = build()
    header = (f"transformers {transformers.__version__}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; median of {options.repeat}")
    if options.markdown:
        print(header + "\n")
        print("| pass | tokens = samples x length | unpatched (leaks) ms | patched ms | one-by-one ms "
              "| patched / unpatched | one-by-one / patched |")
        print("|---|---|---|---|---|---|---|", flush=True)
    else:
        print(header, flush=True)
    for backward in (False, True):
        what = "forward + backward" if backward else "forward"
        for tokens, samples in LAYOUTS:
            r = {mode: measure(model, tokens, samples, mode, backward, options.repeat)
                 for mode in ("unpatched", "patched", "one-by-one")}
            if options.markdown:
                print(f"| {what} | {tokens} = {samples} x {tokens // samples} "
                      f"| {r['unpatched'] * 1e3:.0f} "
                      f"| {r['patched'] * 1e3:.0f} | {r['one-by-one'] * 1e3:.0f} "
                      f"| {r['patched'] / r['unpatched']:.2f} | {r['one-by-one'] / r['patched']:.2f} |",
                      flush=True)
            else:
                print(f"{what:20s} {tokens:5d} = {samples:3d} x {tokens // samples:4d}: "
                      + "  ".join(f"{mode} {seconds * 1e3:8.1f} ms" for mode, seconds in r.items())
                      + f"  patched/unpatched {r['patched'] / r['unpatched']:.2f}"
                      + f"  one-by-one/patched {r['one-by-one'] / r['patched']:.2f}", flush=True)


if __name__ == "__main__":
    main()
