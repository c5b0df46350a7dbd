"""peft-hybrid-cache-import: ``import peft`` works for peft 0.16.x - 0.17.x under Transformers 5.

peft 0.16.0 - 0.17.1 run ``from transformers import ..., HybridCache, ...`` at the top of
``peft/peft_model.py``. Transformers removed ``HybridCache`` in 5.0.0rc3 (PR 43168; it was a
deprecated ``StaticCache`` subclass in 4.56 - 4.57), so ``import peft`` fails with
``ImportError: cannot import name 'HybridCache' from 'transformers'``. peft 0.18.0 (PR 2735) dropped
the import: on Transformers >= 4.56 it builds ``DynamicCache(config=...)`` where 0.16/0.17 build
``HybridCache(config, max_batch_size=..., max_cache_len=..., dtype=..., device=...)`` (prefix tuning
on Gemma 2 / Gemma 3 text, the only use).

The alias is a ``HybridCache`` class that is what the fixed release builds: a subclass of
Transformers' ``DynamicCache`` taking the old constructor's arguments and calling
``DynamicCache.__init__(config=config)``, so ``isinstance(cache, DynamicCache)`` holds as it does
for peft 0.18's cache, ``isinstance(x, HybridCache)`` works, and peft 0.17's prefix-tuning cache
holds the same tensors as peft 0.18's. (``Cache`` itself, trl's alias, cannot be built with those
arguments: peft's Gemma path would raise ``TypeError``.)

Where it lives: Transformers 5's top-level module is a ``_LazyModule`` that resolves names in its
class's ``__getattr__``, and ``transformers.processing_utils`` re-executes ``transformers/__init__``
(``direct_transformers_import``), replacing ``sys.modules['transformers']`` with a new lazy module:
an attribute set on the first module object is gone by the time peft imports. The patch therefore
wraps ``_LazyModule.__getattr__`` (the class is defined once, in ``transformers.utils.import_utils``,
and shared by every re-executed module): only for the name ``HybridCache`` on the module named
``transformers``, and only where the original raises ``AttributeError``, it returns the alias. It
is installed when ``transformers.utils.import_utils`` finishes importing, inside ``import
transformers``, so before peft can import it; it stores nothing on any module (the original caches
what it resolves with ``setattr``; the alias path does not), so reverting restores the class
attribute and ``hasattr(transformers, "HybridCache")`` is False again.

peft imported first: on an affected pair that import raised before the patch existed. Applying the
patch afterwards logs one WARNING of ours saying so, and that importing peft again now works (the
failed import left peft's finished submodules in ``sys.modules``; ``import peft`` re-runs the rest).
If another shim let peft bind a different ``HybridCache`` first, the WARNING names it.

No heavy import at module level.
"""

import sys

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces

__all__ = ["PATCH", "hybrid_cache_class"]

_NAME = "HybridCache"
_classes = {}  # DynamicCache class -> our HybridCache subclass of it (built on first use)


def hybrid_cache_class():
    """The alias: a ``DynamicCache`` subclass accepting the Transformers 4.x HybridCache arguments.

    Built once per ``DynamicCache`` class (imports ``transformers.cache_utils``, hence torch)."""
    from transformers.cache_utils import DynamicCache

    cls = _classes.get(DynamicCache)
    if cls is None:

        class HybridCache(DynamicCache):
            """Stand-in for Transformers 4.x ``HybridCache`` (removed in 5.0): what peft >= 0.18
            builds instead, ``DynamicCache(config=config)``. The size, device and dtype arguments of
            the old constructor are accepted and unused (a dynamic cache allocates on update)."""

            def __init__(self, config=None, max_batch_size=None, max_cache_len=None, device=None,
                         dtype=None, layer_device_map=None):
                super().__init__(config=config)

        HybridCache.__module__, HybridCache.__qualname__ = __name__, _NAME
        cls = _classes.setdefault(DynamicCache, HybridCache)
    return cls


def __getattr__(name):
    # the alias's __module__ is this module: pickle / copy find the class here
    if name == _NAME:
        return hybrid_cache_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lazy_getattr(wrapped, instance, args, kwargs):
    """_LazyModule.__getattr__(self, name): the alias for ``transformers.HybridCache`` only."""
    if instance is None:  # called through the class: (module, name)
        module, name = (args + (None, None))[:2]
    else:
        module, name = instance, (args[0] if args else kwargs.get("name"))
    if name != _NAME or getattr(module, "__dict__", {}).get("__name__") != "transformers":
        return wrapped(*args, **kwargs)
    try:
        return wrapped(*args, **kwargs)  # a build that still has it keeps its own
    except AttributeError:
        return hybrid_cache_class()  # not cached on the module: revert leaves nothing behind


def _peft_imports_hybrid_cache():
    """Whether the installed peft's ``peft_model.py`` imports HybridCache from transformers at
    module level (read from the file: importing peft is what fails). None when it cannot tell."""
    import importlib.util
    import os
    import re

    try:
        spec = importlib.util.find_spec("peft")
        locations = list(spec.submodule_search_locations or ()) if spec else []
        with open(os.path.join(locations[0], "peft_model.py"), encoding="utf-8") as handle:
            source = handle.read()
    except Exception:
        return None
    imports = re.findall(r"^from transformers import (\([^)]*\)|[^\n]*)", source, re.M)
    return any(re.search(r"\bHybridCache\b", names) for names in imports)


def _fixed(original):
    """This peft build does not import HybridCache at import time (a source build of the 0.18
    cycle with peft PR 2735, or a backport): nothing to alias."""
    if _peft_imports_hybrid_cache() is False:
        return "the installed peft does not import HybridCache from transformers (peft PR 2735)"
    return None


def _peft_imported_first():
    """The WARNING text when peft was imported in this process before the patch, else None."""
    modules = sys.modules
    if "peft" not in modules:
        if not any(name.startswith("peft.") for name in list(modules)):
            return None
        return ("peft was imported before this patch and that import failed (peft 0.16/0.17 "
                "cannot import HybridCache from Transformers 5); the alias is in place now: "
                "import peft again, or apply compat_patches before importing peft "
                "(`import compat_patches.auto` first, or the compat-patches-run launcher)")
    bound = getattr(modules.get("peft.peft_model"), _NAME, None)
    if bound is not None and getattr(bound, "__module__", None) != __name__:
        return (f"peft was imported before this patch with HybridCache = {bound!r} from another "
                "shim; this patch cannot change what peft already bound (apply compat_patches "
                "before importing peft)")
    return None


def _check(original):
    """Drift: the original must end unknown names in AttributeError (what the wrapper catches).
    Also logs, once per installation, the WARNING of _peft_imported_first (never a finding)."""
    if "AttributeError" not in getattr(getattr(original, "__code__", None), "co_names", ()):
        return "_LazyModule.__getattr__ no longer raises AttributeError for unknown names"
    notice = _peft_imported_first()
    if notice:
        from compat_patches.core.log import WARNING, log

        log(WARNING, "peft-hybrid-cache-import: %s", notice)
    return None


_REPLACES = Replaces(
    symbols=(
        "transformers.cache_utils:HybridCache",
        "transformers:HybridCache",
        "transformers.utils.import_utils:_LazyModule.__init__",
        "transformers.utils.import_utils:_LazyModule.__getattr__",
    ),
    copies=(
        Copy("huggingface/trl", "trl/_compat.py", "_patch_transformers_hybrid_cache",
             commit="f2cd57710ae3", inventory=45,
             what="run when `trl` is imported (transformers >= 5.0.0.dev0 and peft < 0.18.0 or "
                  "liger-kernel < 0.6.5): sets `transformers.cache_utils.HybridCache = Cache` and "
                  "replaces `_LazyModule.__init__` so that every lazy `transformers` module built "
                  "afterwards lists `HybridCache` and holds `Cache`. No revert, and it only helps if "
                  "trl is imported before peft and before transformers' module is re-created. A trl "
                  "user adopting this record deletes nothing (the hand patch lives inside trl and "
                  "still runs on its own gate); they import `compat_patches.auto` before trl and "
                  "peft. Read, not run here: where both are active, a lazy `transformers` module "
                  "created after trl's import (the one `transformers.processing_utils` re-creates) "
                  "holds trl's `HybridCache = Cache` as a plain attribute, found before any "
                  "`__getattr__`, so peft imported after that binds `Cache` (and its Gemma "
                  "prefix-tuning path raises `TypeError`); the WARNING above names it when the patch "
                  "is applied after such an import. A project with its own copy of trl's function "
                  "deletes that copy."),
    ),
    note="- Downstream pins instead of patches (no code to delete): environments that bump to "
         "`peft>=0.18` (Ray's release tests, Azure ML, Open Data Hub images; read in their PRs).\n\n"
         "liger-kernel < 0.6.5 imports `HybridCache` from `transformers.cache_utils`, which this "
         "record does not serve (a different distribution's gate, and a plain module attribute "
         "rather than a lazy-module name); trl's patch covers it for trl users.",
)

PATCH = Patch(
    name="peft-hybrid-cache-import",
    summary="peft 0.16-0.17 import under Transformers 5: `from transformers import HybridCache` "
            "resolves to a DynamicCache subclass (what peft 0.18 builds)",
    upstream="https://github.com/huggingface/peft/pull/2735",
    # Measured: peft 0.16.0, 0.17.0, 0.17.1 fail to import on transformers 5.0.0rc3 - 5.24.0 (every
    # release's wheel: rc0 - rc2 still export HybridCache); peft 0.14.0 - 0.15.2 never import it;
    # 0.18.0rc0, 0.18.0, 0.18.1 import fine (PEP 440: `<0.18.0` excludes 0.18.0rc0 / .dev0).
    affected={"peft": ">=0.16.0,<0.18.0", "transformers": ">=5.0.0rc3"},
    fixed_in="peft 0.18.0",
    targets=(
        Target(
            "transformers.utils.import_utils:_LazyModule.__getattr__",
            wrapper=_lazy_getattr,
            params=("self", "name"),
            check=_check,
            fixed=_fixed,
        ),
    ),
    differences="peft 0.18.0 (with PR 2735) fixed this in peft: no module-level import, and on "
                "Transformers >= 4.56 it builds DynamicCache(config=...) for Gemma 2/3 prefix tuning, "
                "DynamicCache(past_key_values) instead of DynamicCache.from_legacy_cache for other "
                "models, and no longer requires max_cache_len. The patch leaves peft as it is and serves "
                "the one name peft 0.16/0.17 import: import, LoRA and Gemma 2/3 prefix-tuning training "
                "work; prefix tuning on other decoder models (AttributeError: DynamicCache has no "
                "from_legacy_cache, removed in Transformers 5) and prefix-tuning generate() on Gemma "
                "(ValueError: max_cache_len is None) still fail with peft 0.16/0.17 on Transformers 5.",
    notes="The alias is a DynamicCache subclass, not Transformers 4.57's StaticCache subclass: it "
          "is what peft 0.18 builds on Transformers >= 4.56. Only `from transformers import "
          "HybridCache` is served; `transformers.cache_utils.HybridCache` (liger-kernel < 0.6.5) "
          "is not.",
    replaces=_REPLACES,
)
