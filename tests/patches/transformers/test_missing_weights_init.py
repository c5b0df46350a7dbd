"""transformers-missing-weights-init on the real transformers releases.

Transformers 5.8.0 / 5.8.1 run ``init.normal_(module.weight.float(), ...)`` in
``PreTrainedModel._init_weights``: a bf16 / fp16 Linear weight is never written. A head missing from
a causal-LM checkpoint (sequence / token classification ``score``, a reward / value head) then keeps
the uninitialised memory it was allocated in, and ``from_config(dtype=bf16)`` keeps torch's default
kaiming init on every Linear.

Silent corruption, so every test checks values: finiteness, mean / std against
normal(0, initializer_range), zero biases, and bitwise equality with ``torch.nn.init.normal_`` on the
same generator state. Each load is preceded by a "dirtied" allocator: big and small tensors filled
with NaN or 1e37, then freed, so memory handed back uninitialised is visibly garbage. Each test runs
on every transformers 5 release with torch: where the record's range says the bug exists it asserts
the wrong result WITHOUT the patch first (the measured row), then the right one with it; elsewhere it
asserts the unpatched library is already right and the patch reports ``not-needed``. A tiny Llama is
built from a config in the test, saved with save_pretrained into a temporary folder and reloaded.
"""

import gc
import importlib.util
import json
import math
import subprocess
import sys
import textwrap

import pytest

import compat_patches
from compat_patches.core.versions import in_range, installed_version
from compat_patches.patches.transformers import missing_weights_init as mod

torch = pytest.importorskip("torch")

NAME = "transformers-missing-weights-init"
AFFECTED = ">=5.8.0.dev0,<=5.9.0.dev0"
TORCH = ">=2.4"
RANGE = ">=5.0.0rc0"  # where these tests run (transformers 5); the patch is in range on AFFECTED only
STD = 0.02            # initializer_range of the heads (LlamaConfig's default)
VALUE_STD = 0.05      # a non-default initializer_range: the std comes from the config
CYCLES = 5
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SMALL = dict(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, num_labels=64, pad_token_id=0)


def _affected_here():
    return in_range(installed_version("transformers"), AFFECTED)


# ----- pure: the gate and the fingerprints ------------------------------------------------------

@pytest.mark.parametrize("version, expected", [
    ("5.7.0", False), ("5.8.0.dev0", True), ("5.8.0", True), ("5.8.0+cu128", True),
    ("5.8.1", True), ("5.9.0.dev0", True), ("5.9.0.dev0+cu128", True), ("5.9.0", False),
    ("5.24.0", False), ("6.0.0.dev0", False),
])
def test_gate(version, expected):
    assert mod.PATCH.affected == {"transformers": AFFECTED, "torch": TORCH}
    assert mod.PATCH.primary == "transformers"
    assert in_range(version, mod.PATCH.affected["transformers"]) is expected


@pytest.mark.parametrize("version, expected", [
    ("2.3.1", False), ("2.4.0.dev20240601", False), ("2.4.0", True), ("2.13.0+cpu", True),
    ("2.14.0.dev20260101+cu128", True),
])
def test_torch_gate(version, expected):
    """transformers 5 disables a torch below 2.4 (no model, no bug): the same bound."""
    assert in_range(version, mod.PATCH.affected["torch"]) is expected


def _function_from_source(tmp_path, source, name="fake_init_module"):
    """A function `_init_weights` defined in a real file (inspect.getsource needs one)."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._init_weights


BUGGY_SOURCE = '''
def _init_weights(self, module):
    if hasattr(self.config, "initializer_range"):
        std = self.config.initializer_range or 0.02
    elif hasattr(self.config, "init_std"):
        std = self.config.init_std
    elif hasattr(self.config, "initializer_factor"):
        std = self.config.initializer_factor
    else:
        std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
        if getattr(module, "weight", None) is not None:
            init.normal_(module.weight.float(), mean=0.0, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
'''


def test_fingerprints(tmp_path):
    buggy = _function_from_source(tmp_path, BUGGY_SOURCE, "buggy")
    assert mod._check(buggy) is None and mod._fixed(buggy) is None
    fixed = _function_from_source(tmp_path, BUGGY_SOURCE.replace("module.weight.float()", "module.weight"),
                                  "fixed")
    assert "PR 46030" in mod._fixed(fixed)
    assert "no longer calls" in mod._check(fixed)
    drifted = _function_from_source(tmp_path, BUGGY_SOURCE.replace("or 0.02", "or 0.01"), "drifted")
    assert mod._fixed(drifted) is None
    assert "std = self.config.initializer_range or 0.02" in mod._check(drifted)


def test_init_std_follows_the_original():
    class Config:
        def get_text_config(self):
            return self

    cases = [({"initializer_range": 0.05}, 0.05), ({"initializer_range": None}, 0.02),
             ({"initializer_range": 0.0}, 0.02), ({"init_std": 0.03, "initializer_factor": 1.0}, 0.03),
             ({"initializer_factor": 1.5}, 1.5), ({}, 0.02)]
    for attrs, expected in cases:
        config = Config()
        config.__dict__.update(attrs)
        assert mod.init_std(config) == expected, attrs


# ----- helpers on the real library --------------------------------------------------------------

def _dirty(value):
    """Allocate big and small tensors filled with `value`, then free them: whatever memory the next
    allocations reuse without writing holds NaN / 1e37 (fp16 sees the same bytes as NaN / garbage)."""
    held = []
    for numel in (1 << 12, 1 << 14, 1 << 15, 1 << 16, 1 << 18, 1 << 20, 1 << 22):
        for dtype in (torch.bfloat16, torch.float32):
            for _ in range(4):
                held.append(torch.empty(numel, dtype=dtype).fill_(value))
    del held
    gc.collect()


def _tolerance(numel):
    """Six standard errors of the sample std (relative) and of the mean (in units of std)."""
    return 6 / math.sqrt(2 * numel), 6 / math.sqrt(numel)


def _normal_problem(weight, std):
    """Why `weight` is not a normal(0, std) sample, or None."""
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        return f"{int((~torch.isfinite(w)).sum())} of {w.numel()} values are not finite"
    rel, mean_tol = _tolerance(w.numel())
    if abs(w.std().item() - std) > rel * std:
        return f"std {w.std().item():.4g}, expected {std} +- {rel * std:.2g}"
    if abs(w.mean().item()) > mean_tol * std:
        return f"mean {w.mean().item():.4g}, expected 0 +- {mean_tol * std:.2g}"
    return None


def _visibly_garbage(weight):
    w = weight.detach().float()
    return bool(not torch.isfinite(w).all() or w.abs().max() > 1.0)


def _config(**overrides):
    from transformers import LlamaConfig

    return LlamaConfig(**dict(SMALL, **overrides))


def _value_model_class():
    """OpenRLHF / TRL style: a causal-LM backbone plus a Linear value head the checkpoint lacks."""
    from torch import nn
    from transformers import LlamaModel, LlamaPreTrainedModel

    class LlamaForValue(LlamaPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.model = LlamaModel(config)
            self.value_head = nn.Linear(config.hidden_size, 1)  # with a bias: it must come up zero
            self.post_init()

        def _init_weights(self, module):  # a model-specific override that defers to the base
            super()._init_weights(module)

        def forward(self, input_ids):
            return self.value_head(self.model(input_ids).last_hidden_state)

    return LlamaForValue


def _auto_class(name):
    def factory():
        import transformers

        return getattr(transformers, name)

    return factory


HEADS = {
    # name: (model class factory, head attribute, initializer_range)
    "sequence": (_auto_class("AutoModelForSequenceClassification"), "score", STD),
    "token": (_auto_class("AutoModelForTokenClassification"), "score", STD),
    "value": (_value_model_class, "value_head", VALUE_STD),
}


def _load_cycles(head, dtype, tmp_path):
    """CYCLES times: a fresh causal LM saved, the allocator dirtied, the head model loaded in dtype.

    Returns [(head weight, head bias, loaded backbone problems)] per cycle."""
    from transformers import LlamaForCausalLM
    from transformers.utils import logging

    factory, attribute, std = HEADS[head]
    cls = factory()
    logging.set_verbosity_error()  # the missing-keys report of every load
    results = []
    for cycle in range(CYCLES):
        torch.manual_seed(cycle)
        folder = tmp_path / f"{head}-{cycle}"
        lm = LlamaForCausalLM(_config(initializer_range=std))
        lm.save_pretrained(folder)
        saved = {k: v.to(dtype) for k, v in lm.state_dict().items() if k.startswith("model.")}
        del lm
        _dirty(float("nan") if cycle % 2 == 0 else 1e37)
        model = cls.from_pretrained(folder, dtype=dtype)
        loaded = dict(model.named_parameters())
        backbone = [k for k, v in saved.items() if not torch.equal(loaded[k].detach(), v)]
        module = getattr(model, attribute)
        results.append((module.weight.detach().clone(),
                        None if module.bias is None else module.bias.detach().clone(), backbone))
        del model, loaded
    return results, std


def _check_cycles(results, std):
    """The head of every cycle, then all cycles pooled, is normal(0, std) with a zero bias."""
    for cycle, (weight, bias, backbone) in enumerate(results):
        assert backbone == [], f"cycle {cycle}: loaded weights changed: {backbone}"
        problem = _normal_problem(weight, std) if weight.numel() >= 4096 else (
            None if torch.isfinite(weight.float()).all() and weight.float().abs().max() < 10 * std
            else "not finite or out of scale")
        assert problem is None, f"cycle {cycle}: {problem}"
        if bias is not None:
            assert torch.count_nonzero(bias) == 0, f"cycle {cycle}: bias {bias}"
    pooled = torch.cat([weight.flatten() for weight, _, _ in results])
    assert _normal_problem(pooled, std) is None, _normal_problem(pooled, std)


# ----- the real releases ----------------------------------------------------------------------

@pytest.mark.requires(transformers=RANGE)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("head", sorted(HEADS))
def test_missing_head_comes_up_initialised(head, dtype, tmp_path):
    dtype = DTYPES[dtype]
    # 1. without the patch: garbage where the bug exists (visibly so at least once: uninitialised
    #    memory may also hold an earlier, freed initialised tensor and look right), right elsewhere
    assert compat_patches.report()[NAME].status not in ("applied", "deferred")
    results, std = _load_cycles(head, dtype, tmp_path / "unpatched")
    if _affected_here():
        problems = [_normal_problem(weight, std) for weight, _, _ in results]
        assert any(problems), f"the bug did not show: {problems}"
        assert any(_visibly_garbage(weight) for weight, _, _ in results), problems
        for _, bias, backbone in results:  # only the weight is left uninitialised
            assert backbone == []
            assert bias is None or torch.count_nonzero(bias) == 0
    else:
        _check_cycles(results, std)

    # 2. with the patch
    with compat_patches.patched(NAME) as report:
        if _affected_here():
            assert report[NAME].status in ("applied", "deferred"), report[NAME]
        else:
            assert report[NAME].status == "not-needed", report[NAME]
        results, std = _load_cycles(head, dtype, tmp_path / "patched")
        if _affected_here():
            assert compat_patches.report()[NAME].status == "applied"
    _check_cycles(results, std)


@pytest.mark.requires(transformers=RANGE)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_from_config_linear_init_matches_fp32(dtype):
    """from_config(dtype=bf16/fp16): every parameter's std as in the fp32 init of the same config."""
    from torch import nn
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[dtype]
    config = _config()

    def stds(dt):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dt)
        linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        return {n: p.detach() for n, p in model.named_parameters()}, linear

    reference, linear = stds(torch.float32)
    assert linear and all(_normal_problem(reference[n], STD) is None for n in linear)

    def wrong(params):
        return {n for n in linear if _normal_problem(params[n], STD) is not None}

    unpatched, _ = stds(dtype)
    if _affected_here():  # torch's kaiming_uniform(a=sqrt(5)) left in place: std 1/sqrt(3 fan_in)
        assert wrong(unpatched) == linear
        q = unpatched["model.layers.0.self_attn.q_proj.weight"].float().std().item()
        assert abs(q - 1 / math.sqrt(3 * SMALL["hidden_size"])) < 0.002, q
    else:
        assert wrong(unpatched) == set()

    with compat_patches.patched(NAME):
        patched, _ = stds(dtype)
    assert wrong(patched) == set()
    for name, ref in reference.items():  # the rest (embeddings, norms) as the fp32 init too
        got = patched[name].float()
        assert torch.isfinite(got).all(), name
        assert abs(got.std().item() - ref.std().item()) <= 0.05 * max(ref.std().item(), 1e-6) + 1e-6, name
        assert abs(got.mean().item() - ref.mean().item()) <= 2e-3 + 0.01 * abs(ref.mean().item()), name


def _pretrained_model():
    from transformers import PreTrainedModel

    return PreTrainedModel


def _bare_model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(_config(initializer_range=VALUE_STD))


MODULES = {
    "linear_bias": lambda dt: torch.nn.Linear(64, 48, dtype=dt),
    "linear_no_bias": lambda dt: torch.nn.Linear(64, 48, bias=False, dtype=dt),
    "conv1d": lambda dt: torch.nn.Conv1d(8, 16, 3, dtype=dt),
    "conv_transpose2d": lambda dt: torch.nn.ConvTranspose2d(8, 4, 3, dtype=dt),
    "linear_subclass": lambda dt: type("MyLinear", (torch.nn.Linear,), {})(64, 48, dtype=dt),
}
CALLS = {
    "bound": lambda model, module: model._init_weights(module),
    "keyword": lambda model, module: model._init_weights(module=module),
    "via_class": lambda model, module: _pretrained_model()._init_weights(model, module),
}


@pytest.mark.requires(transformers=RANGE)
@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_init_weights_is_exactly_the_fixed_code(dtype, kind, call):
    """The weight gets exactly torch.nn.init.normal_(weight, 0, std) from the same generator state
    (no extra random draws), the bias zeros; unpatched on an affected release a bf16/fp16 weight is
    not touched at all."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    model = _bare_model()

    def run():
        module = MODULES[kind](dtype)
        with torch.no_grad():
            module.weight.fill_(7.0)
            if module.bias is not None:
                module.bias.fill_(7.0)
        torch.manual_seed(1234)
        CALLS[call](model, module)
        return module

    expected = torch.full_like(run().weight, 7.0)
    torch.manual_seed(1234)
    torch.nn.init.normal_(expected, mean=0.0, std=VALUE_STD)

    unpatched = run()
    if _affected_here() and dtype != torch.float32:
        assert torch.equal(unpatched.weight, torch.full_like(unpatched.weight, 7.0))  # the bug
    else:
        assert torch.equal(unpatched.weight, expected)
    with compat_patches.patched(NAME):
        patched = run()
    assert torch.equal(patched.weight, expected)
    if patched.bias is not None:
        assert torch.count_nonzero(patched.bias) == 0 and torch.count_nonzero(unpatched.bias) == 0


@pytest.mark.requires(transformers=RANGE)
def test_other_modules_and_loaded_weights_untouched():
    """Non-Linear modules go to the original (bitwise the same draws); a weight flagged
    `_is_hf_initialized` (loaded from the checkpoint) is not re-initialised."""
    model = _bare_model()

    def run(module_factory, prepare=lambda m: None):
        module = module_factory()
        prepare(module)
        torch.manual_seed(99)
        model._init_weights(module)
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def flagged(module):
        with torch.no_grad():
            module.weight.fill_(3.0)
        module.weight._is_hf_initialized = True

    factories = {
        "embedding": (lambda: torch.nn.Embedding(100, 32, padding_idx=0, dtype=torch.bfloat16), None),
        "layernorm": (lambda: torch.nn.LayerNorm(32, dtype=torch.bfloat16), None),
        "flagged": (lambda: torch.nn.Linear(64, 48, bias=False, dtype=torch.bfloat16), flagged),
    }
    for name, (factory, prepare) in factories.items():
        prepare = prepare or (lambda m: None)
        before = run(factory, prepare)
        with compat_patches.patched(NAME):
            after = run(factory, prepare)
        assert before.keys() == after.keys(), name
        for key in before:
            assert torch.equal(before[key], after[key]), (name, key)
        if name == "flagged":
            assert torch.equal(after["weight"], torch.full((48, 64), 3.0, dtype=torch.bfloat16))


@pytest.mark.requires(transformers=RANGE)
def test_non_float_weight_goes_to_the_original():
    """A Linear holding an int8 weight (quantized storage): 5.8's `.float()` copy leaves it alone and
    so does the patch (the record's `differences`); the fixed releases call normal_ on it and raise."""
    model = _bare_model()

    def run():
        module = torch.nn.Linear(64, 48, bias=False)
        module.weight = torch.nn.Parameter(torch.full((48, 64), 5, dtype=torch.int8), requires_grad=False)
        model._init_weights(module)
        return module.weight

    if _affected_here():
        assert torch.equal(run(), torch.full((48, 64), 5, dtype=torch.int8))
        with compat_patches.patched(NAME):
            assert torch.equal(run(), torch.full((48, 64), 5, dtype=torch.int8))
    else:
        with pytest.raises(NotImplementedError, match="normal_kernel"):
            run()


@pytest.mark.requires(transformers=RANGE)
def test_wraps_only_init_weights_and_reverts_exactly():
    from transformers import PreTrainedModel, modeling_utils

    import_original = PreTrainedModel.__dict__["_init_weights"]
    others = {n: PreTrainedModel.__dict__[n] for n in ("_initialize_weights", "init_weights",
                                                      "_initialize_missing_keys")
              if n in PreTrainedModel.__dict__}
    init_module = modeling_utils.init
    with compat_patches.patched(NAME) as report:
        if _affected_here():
            assert report[NAME].status == "applied"
            assert PreTrainedModel.__dict__["_init_weights"] is not import_original
        else:
            assert report[NAME].status == "not-needed"
            assert "transformers" in report[NAME].reason
            assert PreTrainedModel.__dict__["_init_weights"] is import_original
        for name, original in others.items():
            assert PreTrainedModel.__dict__[name] is original
        assert modeling_utils.init is init_module
    assert PreTrainedModel.__dict__["_init_weights"] is import_original


@pytest.mark.requires(transformers=RANGE)
def test_fingerprints_on_this_release():
    """On an affected release the installed source is exactly the buggy one the wrapper was written
    for; every other measured 5.x release (5.0.0 ... 5.7.0, 5.9.0 ... 5.24.0) has the fixed line,
    which the `fixed` fingerprint recognises, so a dev build carrying it reports not-needed."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.__dict__["_init_weights"]
    if _affected_here():
        assert mod._check(original) is None and mod._fixed(original) is None
    else:
        assert mod._fixed(original), "this release initialises module.weight itself"
        assert "no longer calls" in mod._check(original)


CHILD = textwrap.dedent(r'''
    import gc, json, sys, tempfile
    import compat_patches
    NAME = "transformers-missing-weights-init"
    assert "transformers" not in sys.modules
    out = {}
    with compat_patches.patched(NAME) as report:
        out["before_import"] = report[NAME].status
        import torch
        from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM
        from transformers.utils import logging
        logging.set_verbosity_error()
        folder = tempfile.mkdtemp()
        LlamaForCausalLM(LlamaConfig(**json.loads(sys.argv[1]))).save_pretrained(folder)
        held = [torch.empty(1 << 20, dtype=torch.bfloat16).fill_(float("nan")) for _ in range(16)]
        del held; gc.collect()
        w = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.bfloat16).score.weight.float()
        out["after_import"] = compat_patches.report()[NAME].status
        out["finite"] = bool(torch.isfinite(w).all())
        out["std"] = w.std().item()
    out["after_exit"] = compat_patches.report()[NAME].status
    print(json.dumps(out))
''')


@pytest.mark.requires(transformers=AFFECTED)
def test_deferred_until_transformers_is_imported():
    """`with patched(...)` before anything imported transformers: the post-import hook installs it."""
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SMALL)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before_import"] == "deferred"
    assert out["after_import"] == "applied"
    assert out["after_exit"] == "pending"
    assert out["finite"] and abs(out["std"] - STD) < 0.05 * STD, out
