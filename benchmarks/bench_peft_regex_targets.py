"""Conversion time of a regex LoRA config on a Qwen3-235B-A22B-shaped MoE model (meta device).

Real layer/expert count and names (94 layers, 128 experts, 8 active); hidden sizes shrunk (meta tensors
cost nothing either way, names and counts are what the converter walks). Compares, in one run:

  peft        PEFT's own convert_peft_config_for_transformers of the installed release (unpatched,
              wrong scope: the cost of the answer PEFT gives)
  patched     compat_patches' converter (every name asked of PEFT's own matcher)

    python benchmarks/bench_peft_regex_targets.py [--repeat 15]
"""

import argparse
import logging
import copy
import statistics
import time


def build_model():
    import torch
    import transformers

    config = transformers.Qwen3MoeConfig(
        vocab_size=1024, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=94, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
        num_experts=128, num_experts_per_tok=8, decoder_sparse_step=1, mlp_only_layers=[],
    )
    with torch.device("meta"):
        return transformers.Qwen3MoeForCausalLM(config)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    logging.getLogger("compat_patches").setLevel(logging.ERROR)  # the per-conversion explanation line

    import peft
    import transformers
    from peft import LoraConfig

    import peft.utils.transformers_weight_conversion as conv
    from compat_patches.patches.peft import _moe_conversion, moe_regex_targets

    model = build_model()
    n_modules = sum(1 for _ in model.named_modules())
    n_params = sum(1 for _ in model.named_parameters())
    assert _moe_conversion.family_tables(conv, model) is not None

    regexes = {
        "layers 0-46, attn+experts": (
            r"model\.layers\.([0-9]|[1-3][0-9]|4[0-6])\.(self_attn\.(q|k|v|o)_proj|mlp\.experts\.(gate|up|down)_proj)"
        ),
        "all layers, v4 per-expert": r"model\.layers\.\d+\.(self_attn\.(q|v)_proj|mlp\.experts\.\d+\.(gate|up|down)_proj)",
    }

    def time_it(fn, make_config):
        samples = []
        for _ in range(args.repeat):
            config = make_config()
            t0 = time.perf_counter()
            fn(config)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples), min(samples)

    original = conv.convert_peft_config_for_transformers
    assert not hasattr(original, "__wrapped__"), "run without compat_patches applied"

    def run_peft(config):
        try:
            original(config, model=model, conversions=None)
        except ValueError:
            pass  # PEFT's own resolution may reject the regex; it is timed up to that point

    def run_patched(config):
        assert _moe_conversion.convert(config, model, conv, _moe_conversion.REGEX, moe_regex_targets.NAME)

    print(f"peft {peft.__version__}, transformers {transformers.__version__}; Qwen3-235B-A22B shape on meta: "
          f"94 layers x 128 experts, {n_modules} modules, {n_params} parameters; median of {args.repeat} (min)")
    header = f"| {'regex':28} | {'peft (own)':>16} | {'patched':>16} | patched/peft |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for label, regex in regexes.items():
        base = LoraConfig(r=16, lora_alpha=32, target_modules=regex)
        make = lambda: copy.deepcopy(base)  # noqa: E731
        # sanity: the patched result selects what it should
        check = make()
        run_patched(check)
        results = {}
        for key, fn in (("peft", run_peft), ("patched", run_patched)):
            results[key] = time_it(fn, make)
        fmt = lambda m: f"{m[0] * 1e3:7.2f} ({m[1] * 1e3:6.2f}) ms"  # noqa: E731
        print(f"| {label:28} | {fmt(results['peft']):>16} | {fmt(results['patched']):>16} | "
              f"{results['patched'][0] / results['peft'][0]:12.2f} |")
        print(f"    patched: {len(check.target_parameters)} target parameters, "
              f"{len(check.rank_pattern)} rank_pattern key(s)")


if __name__ == "__main__":
    main()
