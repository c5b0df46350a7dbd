"""transformers-stale-loss-kwargs on the real transformers releases.

The test is the gradient itself: a real ``transformers.Trainer`` takes one optimizer step with
gradient_accumulation_steps=2 over two examples with 5 and 2 target tokens, on each tiny
``...ForConditionalGeneration`` of the record built from a config (_loss_kwargs_models.py: text
only, CPU, no hub, report_to=[], a temporary output folder). The gradient it accumulated is compared
with the gradient of the full batch's token-mean loss (_grad_accum.py): relative error below 1e-5 is
right (measured 0 - 4e-8), above 0.05 wrong. Label position 0 is -100 in these examples, so Trainer's
own label over-count (transformers-trainer-token-count, up to 5.10.0) does not enter: only the flag
is tested here.

For every class of the record that exists in the installed release: from its first affected release
the unpatched step must be wrong (Trainer withholds the count and averages the per-micro-batch means)
and the patched step right; before it (the class's loss ignored the count, the flag was right) the
patched step must be the unpatched one bit for bit. On 5.5.x, where Gemma4's loss ignores the count,
setting the flag would not help either (test_gemma4_on_5_5_the_flag_would_not_help). Custom
compute_loss overrides, label smoothing, a caller's own count and the scope:
test_trainer_loss_overrides.py; TRL's trainers: test_trainer_loss_trl.py; two processes:
test_trainer_loss_torchrun.py.
"""

import pytest

import compat_patches
from compat_patches.core.versions import in_range, installed_version
from compat_patches.patches.transformers import stale_loss_kwargs as mod

from . import _grad_accum as ga
from . import _loss_kwargs_models as models

pytest.importorskip("torch")

ACCELERATE = ">=1.1.0"  # Trainer requires it; without it the record reports not-installed
NAME = "transformers-stale-loss-kwargs"
TOKEN_COUNT = "transformers-trainer-token-count"
AFFECTED = ">=5.0.0rc0"
FIRST = {qualname: first for (_, qualname), first in mod.CLASSES.items()}


def _model_class(qualname):
    """The class from its modeling module, or None where this release does not have it."""
    import importlib

    module = next(module for module, name in mod.CLASSES if name == qualname)
    try:
        return getattr(importlib.import_module(module), qualname, None)
    except ImportError:
        return None


def _here():
    return installed_version("transformers")


# ----- pure: the gate, the class list and the class lookup ----------------------------------------

@pytest.mark.parametrize("version, expected", [
    ("4.57.6", False), ("5.0.0rc0", True), ("5.0.0", True), ("5.6.0+cu128", True), ("5.17.0", True),
    ("5.24.0", True), ("5.25.0", True), ("5.25.0+cu128", True), ("5.26.0.dev0", True),
])
def test_gate(version, expected):
    assert mod.PATCH.affected == {"transformers": AFFECTED, "torch": ">=2.0", "accelerate": ">=1.1.0"}
    assert in_range(version, mod.PATCH.affected["transformers"]) is expected


def test_every_class_has_a_builder_and_a_valid_first_release():
    from packaging.version import Version

    assert set(FIRST) == set(models.BUILDERS)
    for (module, qualname), first in mod.CLASSES.items():
        assert module.startswith("transformers.models.") and qualname.endswith("ForConditionalGeneration")
        assert in_range(first, AFFECTED) and str(Version(first)) == first


def test_stale_flag_class_lookup():
    module = "transformers.models.qwen3_vl.modeling_qwen3_vl"
    Base = type("Qwen3VLForConditionalGeneration", (), {"accepts_loss_kwargs": False, "__module__": module})
    key = (module, "Qwen3VLForConditionalGeneration")
    assert mod.stale_flag_class(Base(), "5.17.0") == key
    assert mod.stale_flag_class(Base(), "5.24.0") == key
    assert mod.stale_flag_class(Base(), "5.16.1") is None                         # its loss ignored the count
    assert mod.stale_flag_class(Base(), "5.17.0.dev0") is None
    assert mod.stale_flag_class(type("Sub", (Base,), {})(), "5.24.0") == key     # inherits the stale False
    assert mod.stale_flag_class(type("Own", (Base,), {"accepts_loss_kwargs": False})(), "5.24.0") is None
    instance = Base()
    instance.accepts_loss_kwargs = False                                           # the instance says so
    assert mod.stale_flag_class(instance, "5.24.0") is None
    Other = type("ConvNextForImageClassification", (), {"accepts_loss_kwargs": False,
                                                        "__module__": "transformers.models.convnext.x"})
    assert mod.stale_flag_class(Other(), "5.24.0") is None
    assert mod.stale_flag_class(object(), "5.24.0") is None


# ----- the real releases ---------------------------------------------------------------------------

@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
@pytest.mark.parametrize("qualname", sorted(FIRST))
def test_gradient_wrong_then_right(qualname):
    """From the class's first affected release: unpatched wrong, patched the token mean, Trainer's own
    flag back after training, nothing written on the class or the model. Before it: the patched step
    is the unpatched one, bit for bit."""
    klass = _model_class(qualname)
    if klass is None:
        pytest.skip(f"transformers {_here()} has no {qualname}")
    build, extra = models.BUILDERS[qualname], models.EXTRA.get(qualname)
    if not in_range(_here(), f">={FIRST[qualname]}"):
        why = models.UNBUILDABLE.get((qualname, _here()))
        if why:
            pytest.skip(f"{qualname} cannot be built on {_here()} ({why}); before its first affected release")
        as_is = ga.measure(build, ga.MASKED_EXAMPLES, extra)
        with compat_patches.patched(NAME):
            patched = ga.measure(build, ga.MASKED_EXAMPLES, extra)
        assert ga.identical(as_is["grads"], patched["grads"])
        return
    unpatched = ga.measure(build, ga.MASKED_EXAMPLES, extra)
    # with Trainer's own count fixed as well (5.2.0 - 5.5.3 accelerate divides the loss a second time
    # once the count is passed: transformers-trainer-token-count), as apply_all() does
    with compat_patches.patched(NAME, TOKEN_COUNT) as report:
        assert report[NAME].status == "applied"
        patched = ga.measure(build, ga.MASKED_EXAMPLES, extra)
    # 1. without the patch: Trainer reads the stale False and averages per-micro-batch means
    assert unpatched["trainer"].model_accepts_loss_kwargs is False
    assert unpatched["error"] > ga.WRONG, unpatched
    # 2. with it: the count reaches the loss, the gradient is the token mean; between steps the
    # Trainer keeps the flag it read
    assert patched["error"] < ga.RIGHT, patched
    assert patched["trainer"].model_accepts_loss_kwargs is False
    if compat_patches._default_manager().in_range(TOKEN_COUNT):  # the count fix alone is not enough
        with compat_patches.patched(TOKEN_COUNT):
            assert ga.measure(build, ga.MASKED_EXAMPLES, extra)["error"] > ga.WRONG
    # 3. nothing written on the model class or the model
    assert klass.__dict__["accepts_loss_kwargs"] is False
    assert "accepts_loss_kwargs" not in vars(patched["trainer"].model)


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_which_trainers_it_acts_on():
    """qualifies(): a CLASSES model whose Trainer read the stale False, and nothing else: a subclass
    that declares the flag, an instance that sets it, Llama, a compute_loss_func, a trainer's own
    loss_is_scaled_for_ga, the deepspeed sequence-parallel override."""
    import tempfile
    from types import SimpleNamespace

    from transformers import Qwen2_5_VLForConditionalGeneration, Trainer, TrainingArguments

    class Declares(Qwen2_5_VLForConditionalGeneration):
        accepts_loss_kwargs = False

    class Scaled(Trainer):
        loss_is_scaled_for_ga = False

    model = models.qwen2_5_vl()
    with tempfile.TemporaryDirectory() as folder:
        args = TrainingArguments(output_dir=folder, report_to=[], use_cpu=True, save_strategy="no")
        assert mod.qualifies(Trainer(model=model, args=args)) is True
        assert mod.qualifies(Trainer(model=model, args=args, compute_loss_func=lambda *a, **k: 0)) is False
        assert mod.qualifies(Scaled(model=model, args=args)) is False
        model.accepts_loss_kwargs = False
        assert mod.qualifies(Trainer(model=model, args=args)) is False
        del model.accepts_loss_kwargs
        model.__class__ = Declares
        assert mod.qualifies(Trainer(model=model, args=args)) is False
        model.__class__ = Qwen2_5_VLForConditionalGeneration
        assert mod.qualifies(Trainer(model=ga.tiny_llama(), args=args)) is False  # Llama: True already
        trainer = Trainer(model=model, args=args)
    # Trainer's own deepspeed sequence-parallel override (which sets False as well) is kept
    trainer.accelerator = SimpleNamespace(parallelism_config=SimpleNamespace(sp_backend="deepspeed", sp_enabled=True),
                                          unwrap_model=lambda m: m)
    assert mod.qualifies(trainer) is False
    trainer.accelerator.parallelism_config.sp_enabled = False
    assert mod.qualifies(trainer) is True


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE, peft=">=0.18.0")
def test_a_peft_wrapped_model_is_unwrapped_as_trainer_does():
    """LoRA on Qwen2.5-VL: Trainer reads the flag of the PEFT-unwrapped base model; so does the patch
    (its own unwrapping, since Trainer's helper only exists from 5.2). Run in the peft sets."""
    from peft import LoraConfig, get_peft_model

    def build():
        return get_peft_model(models.qwen2_5_vl(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))

    unpatched = ga.measure(build, ga.MASKED_EXAMPLES)
    with compat_patches.patched(NAME, TOKEN_COUNT):
        patched = ga.measure(build, ga.MASKED_EXAMPLES)
    assert unpatched["trainer"].model_accepts_loss_kwargs is False
    assert unpatched["error"] > ga.WRONG, unpatched
    assert patched["error"] < ga.RIGHT, patched


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_wraps_its_four_targets_and_reverts_exactly():
    import inspect

    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.trainer import Trainer

    wrapped = ("__init__", "get_batch_samples", "training_step", "compute_loss")
    names = wrapped + ("_get_num_items_in_batch",)
    before = {name: Trainer.__dict__[name] for name in names}
    signatures = {name: inspect.signature(getattr(Trainer, name)) for name in names}
    flag = Qwen2_5_VLForConditionalGeneration.__dict__["accepts_loss_kwargs"]
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied"
        for name, original in before.items():
            assert (Trainer.__dict__[name] is not original) == (name in wrapped), name
            assert inspect.signature(getattr(Trainer, name)) == signatures[name]
        assert mod._installed("training_step", mod._training_step)
        assert Qwen2_5_VLForConditionalGeneration.__dict__["accepts_loss_kwargs"] is flag
    for name, original in before.items():
        assert Trainer.__dict__[name] is original
    assert not mod._installed("training_step", mod._training_step)


# 5.5.0: this tiny Gemma4 config does not build (rope validation)
@pytest.mark.requires(transformers=">=5.5.1,<5.6.0", accelerate=ACCELERATE)
def test_gemma4_on_5_5_the_flag_would_not_help():
    """5.5.x: Gemma4ForConditionalGeneration computes its own loss and ignores the count, and declares
    no flag (Trainer reads True from forward's **kwargs). Neither flag gives the token mean there:
    with True (as it is) the gradient is wrong, and with False (what Trainer would do for a model
    without loss kwargs) it is the per-micro-batch mean, wrong as well. Gemma4's range starts at 5.6.0."""
    from transformers import Gemma4ForConditionalGeneration

    assert "accepts_loss_kwargs" not in vars(Gemma4ForConditionalGeneration)
    as_is = ga.measure(models.gemma4, ga.MASKED_EXAMPLES)
    assert as_is["trainer"].model_accepts_loss_kwargs is True
    assert as_is["error"] > ga.WRONG, as_is

    def withhold(trainer):
        trainer.model_accepts_loss_kwargs = False

    withheld = ga.measure(models.gemma4, ga.MASKED_EXAMPLES, after_init=withhold)
    assert withheld["error"] > ga.WRONG, withheld
    with compat_patches.patched(NAME):
        patched = ga.measure(models.gemma4, ga.MASKED_EXAMPLES)
    assert ga.identical(patched["grads"], as_is["grads"])  # untouched


@pytest.mark.requires(transformers=">=5.0.0rc0", accelerate=ACCELERATE)
def test_fingerprints_on_the_installed_release():
    """Drift check: every transformers 5 Trainer reads the flag, counts, steps and computes the loss
    the way the wrappers expect; a source without those lines is reported."""
    from transformers.trainer import Trainer

    assert mod._reads_the_flag(Trainer.__init__) is None
    assert mod._counts_in_batch_samples(Trainer.get_batch_samples) is None
    assert mod._step_reads_flag_after_loss(Trainer.training_step) is None
    assert mod._loss_passes_count_with_flag(Trainer.compute_loss) is None

    def other(self):
        self.model_accepts_loss_kwargs = True

    for check in (mod._reads_the_flag, mod._counts_in_batch_samples, mod._step_reads_flag_after_loss,
                  mod._loss_passes_count_with_flag):
        assert "no longer contains" in check(other)
