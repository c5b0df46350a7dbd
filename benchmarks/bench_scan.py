"""Time of `python -m compat_patches scan` on a tree of verl's size.

    python benchmarks/bench_scan.py [--runs 5] [--tree PATH ...]

Without --tree it builds a stand-in of verl's size in a temporary directory (verl at
1dda039b9c63 has 651 .py files, 172,709 lines; 397 files once its tests are left out, which the
scan does by default): real Python from this interpreter's standard library, taken in a fixed order
until the file and line counts match, plus a few hand patches so that findings are produced. With
--tree it times real checkouts (e.g. verl, ms-swift extracted with `git archive`). Reports the
median wall and CPU time (time.process_time) of an in-process scan; the CPU time is the one to
compare on a machine shared with other work.
"""

import argparse
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time

VERL_FILES, VERL_LINES = 651, 172_709
_MAX_LINES = 1600

HAND_PATCHES = '''
import importlib
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet, Qwen3_5VisionModel
from transformers import PretrainedConfig


def apply_monkey_patch(forward, interpolate):
    Qwen3_5GatedDeltaNet.forward = forward
    Qwen3_5VisionModel.fast_pos_embed_interpolate = interpolate
    for prefix in ("Qwen3_5", "Qwen3_5Moe"):
        module = importlib.import_module(f"transformers.models.{prefix.lower()}.modeling_{prefix.lower()}")
        setattr(getattr(module, f"{prefix}DecoderLayer"), "forward", forward)
    PretrainedConfig.convert_rope_params_to_dict = forward
'''


def build_standin(folder):
    """Copy standard-library modules into `folder` until verl's file and line counts are reached."""
    stdlib = sysconfig.get_paths()["stdlib"]
    files = lines = 0
    for directory, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "test", "tests", "idlelib",
                                                      "lib2to3", "__pycache__"))
        for name in sorted(names):
            if not name.endswith(".py") or name.startswith("test_") or files >= VERL_FILES - 1:
                continue
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                source = handle.read()
            count = source.count(b"\n")
            if lines + count > VERL_LINES or count > _MAX_LINES:  # verl's mean is 265 lines a file
                continue
            target = os.path.join(folder, "pkg", os.path.relpath(path, stdlib))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(source)
            files, lines = files + 1, lines + count
    with open(os.path.join(folder, "pkg", "hand_patches.py"), "w") as handle:
        handle.write(HAND_PATCHES)
    return files + 1, lines + HAND_PATCHES.count("\n")


def count(tree):
    from compat_patches.scan import python_files

    files = lines = 0
    for path, _ in python_files(tree):
        with open(path, "rb") as handle:
            lines += handle.read().count(b"\n")
        files += 1
    return files, lines


def time_scan(tree, runs):
    from compat_patches.scan import scan

    walls, cpus, result = [], [], None
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = scan(tree)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tree", action="append", help="a real source tree to time instead")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    temporary = None
    trees = args.tree
    if not trees:
        temporary = tempfile.mkdtemp(prefix="bench-scan-")
        build_standin(temporary)
        trees = [temporary]
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, median of {args.runs} runs")
        print(f"{'tree':<36} {'files':>6} {'lines':>8} {'wall s':>7} {'cpu s':>6} {'found':>6}")
        for tree in trees:
            files, lines = count(tree)
            wall, cpu, result = time_scan(tree, args.runs)
            name = "stand-in of verl's size" if tree == temporary else os.path.basename(tree.rstrip("/"))
            found = len(result["replaced"]) + len(result["not_needed"])
            print(f"{name:<36} {files:>6} {lines:>8} {wall:7.2f} {cpu:6.2f} {found:>6}")
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    main()
