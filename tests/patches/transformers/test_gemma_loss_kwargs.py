"""transformers-gemma-loss-kwargs on the real transformers releases.

The test is the gradient itself: a real ``transformers.Trainer`` takes one optimizer step with
gradient_accumulation_steps=2 over two examples with 5 and 2 target tokens, on a tiny
Gemma4 / Gemma4Unified / Gemma3n ``ForConditionalGeneration`` built from a config (text only, CPU,
no hub, report_to=[], a temporary output folder). The gradient it accumulated is compared with the
gradient of the full batch's token-mean loss (tests/patches/transformers/_grad_accum.py): relative
error below 1e-5 is right (measured 0 - 4e-8), above 0.05 wrong. Label position 0 is -100 in these
examples, so Trainer's own label over-count (transformers-trainer-token-count, up to 5.10.0) does not
enter: only the flag is tested here.

On each affected release the unpatched step must be wrong (Trainer withholds the count and averages
the per-micro-batch means) and the patched step right; below the range the patch reports not-needed
and touches nothing. On 5.5.x, where Gemma4's loss ignores the count, setting the flag would make it
worse (test_gemma4_on_5_5_the_flag_would_not_help): that is why the range starts at 5.6.0.
"""

import pytest

import compat_patches
from compat_patches.core.versions import in_range, installed_version
from compat_patches.patches.transformers import gemma_loss_kwargs as mod

from . import _grad_accum as ga

pytest.importorskip("torch")

ACCELERATE = ">=1.1.0"  # Trainer requires it; without it the record reports not-installed
NAME = "transformers-gemma-loss-kwargs"
AFFECTED = ">=5.6.0"
BELOW = ">=5.0.0rc0,<5.6.0"
TEXT = dict(vocab_size=ga.VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64)


def _gemma4():
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    torch.manual_seed(0)
    text = dict(TEXT, vocab_size_per_layer_input=ga.VOCAB, hidden_size_per_layer_input=4)
    return Gemma4ForConditionalGeneration(Gemma4Config(text_config=text, vision_config=None,
                                                       audio_config=None))


def _gemma4_unified():
    import torch
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration

    torch.manual_seed(0)
    return Gemma4UnifiedForConditionalGeneration(Gemma4UnifiedConfig(text_config=dict(TEXT), vision_config=None,
                                                                     audio_config=None))


def _gemma3n():
    """Gemma3n always builds a timm vision tower and an audio tower: stubbed (text-only batches never
    call them; timm / pillow are not needed)."""
    import torch
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration
    from transformers.models.gemma3n import modeling_gemma3n

    torch.manual_seed(0)
    text = dict(TEXT, num_hidden_layers=2, vocab_size_per_layer_input=ga.VOCAB, hidden_size_per_layer_input=4,
                num_kv_shared_layers=0, laurel_rank=4, altup_num_inputs=2,
                activation_sparsity_pattern=[0.0, 0.0], layer_types=["full_attention"] * 2)
    auto = modeling_gemma3n.AutoModel
    real = auto.__dict__["from_config"]

    def from_config(config, *args, **kwargs):
        if config.model_type in ("timm_wrapper", "gemma3n_vision", "gemma3n_audio"):
            return torch.nn.Linear(1, 1)
        return real.__get__(None, auto)(config, *args, **kwargs)

    auto.from_config = from_config
    try:
        return Gemma3nForConditionalGeneration(Gemma3nConfig(text_config=text))
    finally:
        auto.from_config = real


BUILDERS = {"gemma4": _gemma4, "gemma4_unified": _gemma4_unified, "gemma3n": _gemma3n}
CLASS_NAMES = {"gemma4": "Gemma4ForConditionalGeneration",
               "gemma4_unified": "Gemma4UnifiedForConditionalGeneration",
               "gemma3n": "Gemma3nForConditionalGeneration"}


def _has(kind):
    import transformers

    return hasattr(transformers, CLASS_NAMES[kind])


# ----- pure: the gate and the class lookup --------------------------------------------------------

@pytest.mark.parametrize("version, expected", [
    ("5.5.4", False), ("5.6.0.dev0", False), ("5.6.0", True), ("5.6.0+cu128", True), ("5.10.0", True),
    ("5.17.0", True), ("5.24.0", True), ("5.25.0.dev0", True),
])
def test_gate(version, expected):
    assert mod.PATCH.affected == {"transformers": AFFECTED, "torch": ">=2.0", "accelerate": ">=1.1.0"}
    assert in_range(version, mod.PATCH.affected["transformers"]) is expected


def test_stale_flag_class_lookup():
    Base = type("Gemma4ForConditionalGeneration", (), {"accepts_loss_kwargs": False,
                                                       "__module__": "transformers.models.gemma4.modeling_gemma4"})
    assert mod.stale_flag_class(Base()) == ("transformers.models.gemma4.modeling_gemma4",
                                            "Gemma4ForConditionalGeneration")
    assert mod.stale_flag_class(type("Sub", (Base,), {})()) is not None        # inherits the stale False
    assert mod.stale_flag_class(type("Own", (Base,), {"accepts_loss_kwargs": False})()) is None  # declares it
    instance = Base()
    instance.accepts_loss_kwargs = False                                           # the instance says so
    assert mod.stale_flag_class(instance) is None
    Other = type("Qwen2_5_VLForConditionalGeneration", (), {"accepts_loss_kwargs": False,
                                                           "__module__": "transformers.models.qwen2_5_vl.x"})
    assert mod.stale_flag_class(Other()) is None
    assert mod.stale_flag_class(object()) is None


# ----- the real releases ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gemma4_steps():
    """Gemma4: the unpatched and the patched Trainer step (one each)."""
    pytest.importorskip("accelerate")  # Trainer requires it
    unpatched = ga.measure(_gemma4, ga.MASKED_EXAMPLES)
    with compat_patches.patched(NAME) as report:
        status = report[NAME].status
        patched = ga.measure(_gemma4, ga.MASKED_EXAMPLES)
    return {"unpatched": unpatched, "patched": patched, "status": status}


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_gemma4_gradient_wrong_then_right(gemma4_steps):
    unpatched, patched = gemma4_steps["unpatched"], gemma4_steps["patched"]
    # 1. without the patch: Trainer reads the stale False and averages per-micro-batch means
    assert unpatched["trainer"].model_accepts_loss_kwargs is False
    assert unpatched["error"] > ga.WRONG, unpatched
    # 2. with it: the count reaches the loss, the gradient is the token mean
    assert gemma4_steps["status"] == "applied"
    assert patched["trainer"].model_accepts_loss_kwargs is True
    assert patched["error"] < ga.RIGHT, patched
    # 3. nothing written on the model class
    from transformers import Gemma4ForConditionalGeneration

    assert Gemma4ForConditionalGeneration.__dict__["accepts_loss_kwargs"] is False
    assert "accepts_loss_kwargs" not in vars(patched["trainer"].model)


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
@pytest.mark.parametrize("kind", ["gemma4_unified", "gemma3n"])
def test_other_gemma_classes_right_with_the_patch(kind):
    """Gemma4Unified (from 5.10.0) and Gemma3n: the patched step is the token mean (the unpatched
    one was measured wrong on every release: the docs page)."""
    pytest.importorskip("accelerate")
    if not _has(kind):
        pytest.skip(f"this transformers has no {CLASS_NAMES[kind]}")
    with compat_patches.patched(NAME):
        step = ga.measure(BUILDERS[kind], ga.MASKED_EXAMPLES)
    assert step["trainer"].model_accepts_loss_kwargs is True
    assert step["error"] < ga.RIGHT, step


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_own_flags_are_kept():
    """A subclass that declares the flag, an instance that sets it, and models outside the list keep
    what Trainer read; the deepspeed sequence-parallel override is kept."""
    pytest.importorskip("accelerate")
    import tempfile
    from types import SimpleNamespace

    from transformers import Gemma4ForConditionalGeneration, Trainer, TrainingArguments

    class Declares(Gemma4ForConditionalGeneration):
        accepts_loss_kwargs = False

    model = _gemma4()
    with tempfile.TemporaryDirectory() as folder:
        args = TrainingArguments(output_dir=folder, report_to=[], use_cpu=True, save_strategy="no")
        with compat_patches.patched(NAME):
            assert Trainer(model=model, args=args).model_accepts_loss_kwargs is True
            model.accepts_loss_kwargs = False
            assert Trainer(model=model, args=args).model_accepts_loss_kwargs is False
            del model.accepts_loss_kwargs
            model.__class__ = Declares
            assert Trainer(model=model, args=args).model_accepts_loss_kwargs is False
            model.__class__ = Gemma4ForConditionalGeneration
            trainer = Trainer(model=ga.tiny_llama(), args=args)
            assert trainer.model_accepts_loss_kwargs is True  # Llama: unchanged
    # Trainer's own deepspeed sequence-parallel override (which sets False as well) is kept
    sp = SimpleNamespace(sp_backend="deepspeed", sp_enabled=True)
    trainer = SimpleNamespace(model=model, model_accepts_loss_kwargs=False,
                              accelerator=SimpleNamespace(parallelism_config=sp, unwrap_model=lambda m: m))
    assert mod.grant_loss_kwargs(trainer) is False
    assert trainer.model_accepts_loss_kwargs is False
    sp.sp_enabled = False
    assert mod.grant_loss_kwargs(trainer) is True
    assert trainer.model_accepts_loss_kwargs is True


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_wraps_only_trainer_init_and_reverts_exactly():
    import inspect

    from transformers import Gemma4ForConditionalGeneration
    from transformers.trainer import Trainer

    names = ("__init__", "_get_num_items_in_batch", "training_step", "compute_loss")
    before = {name: Trainer.__dict__[name] for name in names}
    flag = Gemma4ForConditionalGeneration.__dict__["accepts_loss_kwargs"]
    signature = inspect.signature(Trainer.__init__)
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied"
        for name, original in before.items():
            assert (Trainer.__dict__[name] is not original) == (name == "__init__"), name
        assert inspect.signature(Trainer.__init__) == signature
        assert Gemma4ForConditionalGeneration.__dict__["accepts_loss_kwargs"] is flag
    for name, original in before.items():
        assert Trainer.__dict__[name] is original


@pytest.mark.requires(transformers=BELOW, accelerate=ACCELERATE)
def test_not_needed_below_the_range():
    from transformers.trainer import Trainer

    original = Trainer.__dict__["__init__"]
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed"
        assert Trainer.__dict__["__init__"] is original


# 5.5.0: this tiny Gemma4 config does not build (rope validation)
@pytest.mark.requires(transformers=">=5.5.1,<5.6.0", accelerate=ACCELERATE)
def test_gemma4_on_5_5_the_flag_would_not_help():
    """5.5.x: Gemma4ForConditionalGeneration computes its own loss and ignores the count, and declares
    no flag (Trainer reads True from forward's **kwargs). Neither flag gives the token mean there:
    with True (as it is) the gradient is wrong, and with False (what Trainer would do for a model
    without loss kwargs) it is the per-micro-batch mean, wrong as well. Out of this record's range."""
    pytest.importorskip("accelerate")
    from transformers import Gemma4ForConditionalGeneration

    assert "accepts_loss_kwargs" not in vars(Gemma4ForConditionalGeneration)
    as_is = ga.measure(_gemma4, ga.MASKED_EXAMPLES)
    assert as_is["trainer"].model_accepts_loss_kwargs is True
    assert as_is["error"] > ga.WRONG, as_is

    def withhold(trainer):
        trainer.model_accepts_loss_kwargs = False

    withheld = ga.measure(_gemma4, ga.MASKED_EXAMPLES, after_init=withhold)
    assert withheld["error"] > ga.WRONG, withheld
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed"


@pytest.mark.requires(transformers=">=5.0.0rc0", accelerate=ACCELERATE)
def test_trainer_init_fingerprint():
    """Drift check: every transformers 5 Trainer.__init__ copies the model's flag the way the patch
    expects; a source without that line is reported."""
    from transformers.trainer import Trainer

    assert mod._reads_the_flag(Trainer.__init__) is None

    def other(self):
        self.model_accepts_loss_kwargs = True

    assert "no longer contains" in mod._reads_the_flag(other)
