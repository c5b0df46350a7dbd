"""Test environments only: let the PyPI torchvision wheel import next to a CPU-only torch.

Put this file in the venv's site-packages with a ``_compat_patches_cpu_torchvision.pth`` containing
``import _compat_patches_cpu_torchvision``. Costs nothing until something imports torchvision.

The PyPI torchvision links CUDA libtorch, so with the CPU torch its ``_C`` extension does not load
and ``torchvision/_meta_registrations.py`` fails on ``register_fake("torchvision::nms")``. Defining
the two op schemas it registers fakes for lets the pure-Python part (transforms) import; when the
extension does load, nothing is defined.
"""

import importlib.abc
import importlib.util
import os
import sys

_LIB = None


class _TorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec = importlib.util.find_spec("torchvision")
        try:
            if spec is not None and spec.submodule_search_locations:
                import torch

                location = list(spec.submodule_search_locations)[0]
                try:
                    torch.ops.load_library(os.path.join(location, "_C.so"))
                except (OSError, RuntimeError):
                    global _LIB
                    _LIB = torch.library.Library("torchvision", "DEF")
                    for op in ("nms", "qnms"):
                        _LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except Exception:  # never break an import from here
            pass
        return spec


sys.meta_path.insert(0, _TorchvisionOps())
