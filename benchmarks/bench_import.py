"""Import + apply_all() overhead against a bare interpreter, as ratios measured in one run.

    python benchmarks/bench_import.py [--runs 30]

Children run in a temporary directory, so they import the installed compat_patches (install it
with `pip install .` for the number users get; an editable install adds its own finder to every
case, the bare one included). Goal (issue 13): at most 30 ms added by each case.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "bare interpreter": ("pass", False),
    "import compat_patches": ("import compat_patches", False),
    "import + apply_all()": ("import compat_patches; compat_patches.apply_all()", False),
    "import compat_patches.auto": ("import compat_patches.auto", False),
    "launcher (sitecustomize)": ("pass", True),
}


def measure(code, runs, launcher):
    env = dict(os.environ)
    if launcher:  # what compat-patches-run puts on every Python process of a job
        from compat_patches.launcher import pythonpath

        env["PYTHONPATH"] = pythonpath()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=tempfile.gettempdir(), env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    results = {}
    for _ in range(2):  # interleave rounds so drift hits every case alike
        for name, (code, launcher) in CASES.items():
            results.setdefault(name, []).append(measure(code, runs // 2, launcher))
    base = statistics.median(results["bare interpreter"])
    print(f"python {sys.version.split()[0]}, median of {runs} runs per case (subprocess wall time)")
    print(f"{'case':<28} {'ms':>8} {'ratio':>7} {'added ms':>9}")
    for name, values in results.items():
        ms = statistics.median(values) * 1000
        print(f"{name:<28} {ms:8.1f} {ms / (base * 1000):7.2f} {ms - base * 1000:9.1f}")


if __name__ == "__main__":
    main()
