"""The report command against importing the libraries it reports on, as ratios measured in one run.

    python benchmarks/bench_report.py [--runs 7]

Run it with the interpreter of an environment that has the libraries installed (issue 28: torch +
transformers + peft; the default report must take under 2 s there). Every case is a fresh
subprocess in a temporary directory, rounds interleaved so that a busy machine slows every case
alike; the table gives the median and the fastest wall time of each, and its ratio to
``python -c "import torch, transformers"``.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

BASELINE = "import torch, transformers"
CASES = {
    "python -c pass": ["-c", "pass"],
    f'python -c "{BASELINE}"': ["-c", BASELINE],
    "python -m compat_patches": ["-m", "compat_patches"],
    "python -m compat_patches --json": ["-m", "compat_patches", "--json"],
    "python -m compat_patches --lazy": ["-m", "compat_patches", "--lazy"],
    "python -m compat_patches --deep": ["-m", "compat_patches", "--deep"],
}


def once(args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPAT_PATCHES_")}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, cwd=tempfile.gettempdir(), env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def versions():
    from compat_patches.core.versions import installed_version

    found = {d: installed_version(d) for d in ("torch", "transformers", "peft", "accelerate", "vllm", "verl")}
    return ", ".join(f"{d} {v}" for d, v in found.items() if v) or "none of the libraries"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7, help="runs per case (default 7)")
    parser.add_argument("--no-deep", action="store_true", help="leave out --deep (the slowest case)")
    args = parser.parse_args()
    cases = {k: v for k, v in CASES.items() if not (args.no_deep and "--deep" in k)}
    times = {name: [] for name in cases}
    for _ in range(args.runs):  # interleaved rounds
        for name, argv in cases.items():
            times[name].append(once(argv))
    base = statistics.median(times[f'python -c "{BASELINE}"'])
    import compat_patches

    print(f"compat_patches {compat_patches.__version__}, python {sys.version.split()[0]}, {versions()}; "
          f"{os.cpu_count()} CPUs; {args.runs} runs per case, interleaved")
    print()
    print(f"| case | median s | fastest s | median / `{BASELINE}` |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.2f} | {min(values):.2f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
