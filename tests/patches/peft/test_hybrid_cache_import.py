"""peft-hybrid-cache-import on the real peft / Transformers releases.

On an affected pair (peft 0.16.0 - 0.17.1, Transformers >= 5.0.0rc3) `import peft` raises, and a
failed import leaves peft's finished submodules in `sys.modules`; so everything that imports peft
there runs in a fresh interpreter (two children per set, each imports torch, transformers and peft
once), printing one JSON line the tests below read:

* `first`: peft imported BEFORE the patch (the ImportError is the bug), then `apply_all()` (our
  one WARNING), then `import peft` again, which now works, and a LoRA step trains.
* `auto`: `import compat_patches.auto` first, then transformers, then `transformers.processing_utils`
  (re-executes transformers/__init__ and replaces `sys.modules['transformers']`), then peft: a LoRA
  step, peft's Gemma 2 prefix-tuning cache (the only place peft 0.16/0.17 use HybridCache) against
  what peft 0.18 builds, then revert: every object back (`is`), the name gone again.

The in-process tests import transformers only (never peft), so they run everywhere in range.
"""

import json
import os
import subprocess
import sys

import pytest

import compat_patches
from compat_patches.patches.peft import hybrid_cache_import as mod

NAME = "peft-hybrid-cache-import"
AFFECTED = dict(peft=">=0.16.0,<0.18.0", transformers=">=5.0.0rc3")
WARNING_TEXT = "peft was imported before this patch and that import failed"

torch = pytest.importorskip("torch")

in_range = pytest.mark.requires(**AFFECTED)

_PRELUDE = r'''
import json, sys
out = {}

def lora_step():
    import peft, torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = peft.get_peft_model(LlamaForCausalLM(config), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in lora.items()}
    optimizer = torch.optim.SGD(list(lora.values()), lr=0.1)
    ids = torch.randint(0, 64, (2, 8))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    # lora_B starts at zero (PEFT's default init), so one step moves exactly the lora_B matrices
    changed = sorted(n for n, p in lora.items() if not torch.equal(before[n], p))
    return {"loss_finite": bool(torch.isfinite(loss)), "all_lora": all("lora_" in n for n in lora),
            "lora_B": sorted(n for n in lora if "lora_B" in n), "changed": changed}
'''

_FIRST = _PRELUDE + r'''
import io, logging
try:
    import peft
    out["unpatched"] = "imported"
except ImportError as exc:
    out["unpatched"] = str(exc)
try:  # Transformers' own trainer imports peft whenever it is installed
    from transformers import Trainer
    out["unpatched_trainer"] = "imported"
except ImportError as exc:
    out["unpatched_trainer"] = str(exc)
out["leftovers"] = "peft" not in sys.modules and any(m.startswith("peft.") for m in sys.modules)
stream = io.StringIO()
logging.basicConfig(stream=stream, level=logging.WARNING)
import compat_patches
out["status"] = compat_patches.apply_all(only=[sys.argv[1]])[sys.argv[1]].status
out["log"] = stream.getvalue()
from transformers import Trainer
import peft
out.update(lora_step())
compat_patches.revert_all()
print(json.dumps(out))
'''

_AUTO = _PRELUDE + r'''
import compat_patches.auto
import compat_patches
out["status_before"] = compat_patches.report()[sys.argv[1]].status
import transformers
from transformers.utils.import_utils import _LazyModule
first = sys.modules["transformers"]
wrapped = _LazyModule.__dict__["__getattr__"]
original = wrapped.__wrapped__
import transformers.processing_utils
second = sys.modules["transformers"]
out["replaced"] = first is not second
import peft
from compat_patches.patches.peft.hybrid_cache_import import hybrid_cache_class
from transformers import DynamicCache
alias = hybrid_cache_class()
out["peft_bound_alias"] = peft.peft_model.HybridCache is alias
out["alias_is_dynamic"] = issubclass(alias, DynamicCache) and alias is not DynamicCache
out["status"] = compat_patches.report()[sys.argv[1]].status
out.update(lora_step())

# peft 0.16/0.17's only use: prefix tuning on Gemma 2 builds HybridCache(config, max_batch_size=...,
# max_cache_len=..., dtype=..., device=...) and update()s it; peft 0.18 builds DynamicCache(config=...).
import torch, transformers as tf
torch.manual_seed(0)
config = tf.Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                         max_position_embeddings=64)
base = tf.Gemma2ForCausalLM(config).eval()
model = peft.get_peft_model(base, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
ids = torch.randint(0, 64, (2, 6))
cache = model.get_prompt(batch_size=2, max_cache_len=9)
reference = DynamicCache(config=config)  # what peft 0.18 builds, filled with the same tensors
for i, layer in enumerate(cache.layers):
    reference.update(layer.keys.clone(), layer.values.clone(), i,
                     cache_kwargs={"cache_position": torch.arange(3)})
out["prefix_cache_type"] = type(cache) is alias
out["prefix_layers_as_018"] = [type(l).__name__ for l in cache.layers] == [
    type(l).__name__ for l in reference.layers]
with torch.no_grad():
    got = model(input_ids=ids).logits
    want = base(input_ids=ids, past_key_values=reference,
                attention_mask=torch.ones(2, 9, dtype=torch.long)).logits
out["prefix_logits_equal"] = torch.equal(got, want)

# documented differences from peft 0.18: what the alias does not reach (peft's own code)
def error_of(call):
    try:
        call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
out["gemma_prefix_generate"] = error_of(lambda: model.generate(input_ids=ids, max_new_tokens=2))
llama = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
llama = peft.get_peft_model(llama, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
out["llama_prefix_forward"] = error_of(lambda: llama(input_ids=ids))

compat_patches.revert_all()
out["getattr_restored"] = _LazyModule.__dict__["__getattr__"] is original
out["hasattr_after_revert"] = [hasattr(m, "HybridCache") for m in (first, second)]
try:
    from transformers import HybridCache
    out["import_after_revert"] = "imported"
except ImportError as exc:
    out["import_after_revert"] = str(exc)
print(json.dumps(out))
'''


def _child(code):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPAT_PATCHES_")}
    done = subprocess.run([sys.executable, "-c", code, NAME], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_trained(result):
    """One optimizer step: loss finite, only LoRA trainable, every (zero-initialised) lora_B moved."""
    assert result["loss_finite"] and result["all_lora"]
    assert len(result["lora_B"]) == 4 and result["changed"] == result["lora_B"]


@pytest.fixture(scope="module")
def first():
    return _child(_FIRST)


@pytest.fixture(scope="module")
def auto():
    return _child(_AUTO)


# ----- on an affected pair, in fresh interpreters ----------------------------------------------
@in_range
def test_unpatched_import_fails(first):
    """The bug: peft's own import fails on the name Transformers 5 removed."""
    assert "cannot import name 'HybridCache' from 'transformers'" in first["unpatched"]
    assert "cannot import name 'HybridCache' from 'transformers'" in first["unpatched_trainer"]
    assert first["leftovers"]


@in_range
def test_peft_imported_first_gets_our_warning_and_reimport_works(first):
    """Applied after the failed import: applied, one WARNING of ours, and `from transformers import
    Trainer` and `import peft` work now; a LoRA step trains."""
    assert first["status"] == "applied"
    assert WARNING_TEXT in first["log"] and "import peft again" in first["log"]
    assert first["log"].count(NAME) == 1
    _assert_trained(first)


@in_range
def test_auto_before_transformers_survives_reexecution_and_trains(auto):
    """`import compat_patches.auto` first: deferred until transformers imports; the alias survives
    processing_utils replacing sys.modules['transformers']; peft imports and a LoRA step trains."""
    assert auto["status_before"] == "deferred" and auto["status"] == "applied"
    assert auto["replaced"], "transformers.processing_utils no longer re-executes transformers"
    assert auto["peft_bound_alias"] and auto["alias_is_dynamic"]
    _assert_trained(auto)


@in_range
def test_prefix_tuning_cache_is_what_peft_018_builds(auto):
    """peft 0.17's Gemma 2 prefix-tuning path: the alias builds a DynamicCache with the layer types
    of DynamicCache(config=...) (peft 0.18's cache); the logits are bitwise those of that cache."""
    assert auto["prefix_cache_type"] and auto["prefix_layers_as_018"]
    assert auto["prefix_logits_equal"]


@in_range
def test_documented_differences_from_peft_018(auto):
    """peft 0.16/0.17's other Transformers-5 gaps (fixed in peft 0.18, not by this patch)."""
    assert "max_cache_len is None" in auto["gemma_prefix_generate"]
    assert "from_legacy_cache" in auto["llama_prefix_forward"]


@in_range
def test_revert_restores_everything(auto):
    assert auto["getattr_restored"]
    assert auto["hasattr_after_revert"] == [False, False]
    assert "cannot import name 'HybridCache'" in auto["import_after_revert"]


# ----- in process: transformers only ----------------------------------------------------------
@in_range
def test_alias_only_for_hybrid_cache_on_transformers():
    import transformers
    from transformers.utils.import_utils import _LazyModule

    original = _LazyModule.__dict__["__getattr__"]
    lazy_models = transformers.models.llama  # another _LazyModule: never served
    assert isinstance(lazy_models, _LazyModule)
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied"
        alias = mod.hybrid_cache_class()
        assert transformers.HybridCache is alias
        assert _LazyModule.__getattr__(transformers, "HybridCache") is alias  # through the class
        assert "HybridCache" not in vars(transformers)  # never cached on the module
        with pytest.raises(AttributeError):
            lazy_models.HybridCache
        with pytest.raises(AttributeError):
            transformers.HybridCacheNotAName
        assert transformers.DynamicCache is transformers.cache_utils.DynamicCache
    assert _LazyModule.__dict__["__getattr__"] is original
    assert not hasattr(transformers, "HybridCache")


@in_range
def test_alias_takes_the_old_arguments_and_is_a_dynamic_cache():
    import pickle

    import transformers
    from transformers import DynamicCache

    config = transformers.Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=8, sliding_window=4)
    alias = mod.hybrid_cache_class()
    assert alias is mod.hybrid_cache_class() and alias.__name__ == "HybridCache"
    cache = alias(config, max_batch_size=2, max_cache_len=9, dtype=torch.float32, device="cpu")
    plain = DynamicCache(config=config)
    assert isinstance(cache, DynamicCache) and isinstance(cache, alias)
    assert [type(layer) for layer in cache.layers] == [type(layer) for layer in plain.layers]
    keys = torch.randn(2, 2, 3, 8)
    for layer in range(2):
        cache.update(keys, keys + 1, layer, cache_kwargs={"cache_position": torch.arange(3)})
        plain.update(keys, keys + 1, layer, cache_kwargs={"cache_position": torch.arange(3)})
    assert all(torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
               for a, b in zip(cache.layers, plain.layers))
    assert pickle.loads(pickle.dumps(alias)) is alias


@in_range
def test_peft_source_fingerprint(monkeypatch, tmp_path):
    """The installed peft imports HybridCache; a build without that import is `not-needed`."""
    import importlib.util

    assert mod._peft_imports_hybrid_cache() is True
    assert mod._fixed(None) is None
    package = tmp_path / "peft"
    package.mkdir()
    (package / "peft_model.py").write_text(
        "from transformers import (\n    Cache,\n    DynamicCache,\n)\n\n"
        "def f():\n    from transformers import HybridCache\n")
    spec = importlib.util.spec_from_file_location("peft", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert mod._peft_imports_hybrid_cache() is False
    assert "does not import HybridCache" in mod._fixed(None)
    (package / "peft_model.py").write_text(
        "from transformers import (\n    Cache,\n    HybridCache,\n)\n")
    assert mod._peft_imports_hybrid_cache() is True


@in_range
def test_peft_imported_first_notice(monkeypatch):
    """The WARNING's two cases: a failed earlier import (peft's finished submodules left behind),
    and peft imported with another shim's HybridCache; nothing when peft was not imported."""
    import types

    for name in [m for m in sys.modules if m == "peft" or m.startswith("peft.")]:
        monkeypatch.delitem(sys.modules, name)
    assert mod._peft_imported_first() is None
    monkeypatch.setitem(sys.modules, "peft.utils", types.ModuleType("peft.utils"))
    assert "that import failed" in mod._peft_imported_first()
    other = types.ModuleType("peft.peft_model")
    other.HybridCache = object  # e.g. trl's alias (Cache)
    monkeypatch.setitem(sys.modules, "peft", types.ModuleType("peft"))
    monkeypatch.setitem(sys.modules, "peft.peft_model", other)
    assert "from another shim" in mod._peft_imported_first()
    other.HybridCache = mod.hybrid_cache_class()  # ours: nothing to say
    assert mod._peft_imported_first() is None


# ----- outside the range ----------------------------------------------------------------------
@pytest.mark.requires(peft=">=0.18.0rc0", transformers=">=5.0.0rc3")
def test_fixed_peft_not_needed_and_untouched():
    import transformers
    from transformers.utils.import_utils import _LazyModule

    original = _LazyModule.__dict__["__getattr__"]
    try:
        entry = compat_patches.apply_all(only=[NAME])[NAME]
        assert entry.status == "not-needed", entry.reason
        assert _LazyModule.__dict__["__getattr__"] is original
        assert not hasattr(transformers, "HybridCache")
        import peft  # the fixed release imports without the alias

        assert not hasattr(peft.peft_model, "HybridCache")
    finally:
        compat_patches.revert_all()


@pytest.mark.requires(peft=">=0.16.0,<0.18.0", transformers="<5.0.0rc3")
def test_transformers_4_not_needed_and_untouched():
    from transformers.utils.import_utils import _LazyModule

    original = _LazyModule.__dict__["__getattr__"]
    try:
        entry = compat_patches.apply_all(only=[NAME])[NAME]
        assert entry.status == "not-needed", entry.reason
        assert _LazyModule.__dict__["__getattr__"] is original
        import peft
        from transformers.cache_utils import HybridCache

        assert peft.peft_model.HybridCache is HybridCache  # Transformers' own class
    finally:
        compat_patches.revert_all()
