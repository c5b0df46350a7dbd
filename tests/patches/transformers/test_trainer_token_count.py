"""transformers-trainer-token-count on the real transformers releases.

The test is the gradient itself: a real ``transformers.Trainer`` (tiny Llama built from a config,
CPU, no hub, report_to=[], a temporary output folder) takes one optimizer step with
gradient_accumulation_steps=2 over two examples with 7 and 3 target tokens (8 and 4 labels: position
0 of each row is labelled, so counting labels instead of targets over-counts by one per row). The
gradient it accumulated is compared with the gradient of the full batch's token-mean loss
(tests/patches/transformers/_grad_accum.py): relative error below 1e-5 is right (measured 0 - 4e-8),
above 0.05 wrong.

On each affected release the unpatched step must give the measured ratio (MEASURED), and the patched
step the token-mean gradient; on the fixed releases the patch reports not-needed, touches nothing,
and the unpatched step is already right.
"""

import pytest

import compat_patches
from compat_patches.core.versions import in_range, installed_version
from compat_patches.patches.transformers import trainer_token_count as mod

from . import _grad_accum as ga

pytest.importorskip("torch")

ACCELERATE = ">=1.1.0"  # Trainer requires it; without it the record reports not-installed
NAME = "transformers-trainer-token-count"
AFFECTED = ">=5.0.0rc0,<=5.10.1.dev0"
FIXED = ">5.10.1.dev0"
RELEASES = ">=5.0.0rc0"

# The unpatched accumulated gradient over LLAMA_EXAMPLES, as a multiple of the token-mean gradient
# (measured on every release, docs/patches/transformers-trainer-token-count.md): 10 targets counted
# as 12 labels; on 5.2.0 - 5.5.3 accelerate divides by the 2 accumulation steps once more.
MEASURED = (
    (">=5.0.0rc0,<5.2.0", 10 / 12),
    (">=5.2.0,<5.5.4", 10 / 24),
    (">=5.5.4,<5.10.1", 10 / 12),
    (">=5.10.1", 1.0),
)
SECOND_DIVISION = ">=5.2.0,<5.5.4"


def _version():
    return installed_version("transformers")


def _measured_ratio():
    for spec, ratio in MEASURED:
        if in_range(_version(), spec):
            return ratio
    raise AssertionError(f"transformers {_version()} was not measured")


# ----- pure: the gate and the recount ------------------------------------------------------------

@pytest.mark.parametrize("version, expected", [
    ("4.57.6", False), ("5.0.0.dev0", False), ("5.0.0rc0", True), ("5.0.0rc3", True),
    ("5.4.0", True), ("5.9.0", True), ("5.10.0", True), ("5.10.0+cu128", True),
    ("5.10.1.dev0", True), ("5.10.1", False), ("5.24.0", False), ("6.0.0.dev0", False),
])
def test_gate(version, expected):
    assert mod.PATCH.affected == {"transformers": AFFECTED, "torch": ">=2.0", "accelerate": ">=1.1.0"}
    assert in_range(version, mod.PATCH.affected["transformers"]) is expected


@pytest.mark.parametrize("version, shapes", [
    ("5.0.0rc0", 2), ("5.1.0", 2), ("5.2.0", 4), ("5.5.3", 4), ("5.5.3+cu128", 4), ("5.5.4", 2),
    ("5.6.0", 2), ("5.10.0", 2), ("5.10.1.dev0", 2),
])
def test_targets_by_version(version, shapes):
    chosen = [t for t in mod.PATCH.targets if t.versions is None or in_range(version, t.versions)]
    assert len(chosen) == shapes
    assert chosen[0].attribute == "Trainer._get_num_items_in_batch"
    assert {t.attribute for t in chosen} - {"Trainer._get_num_items_in_batch", "Trainer.__init__"} == (
        {"Trainer.training_step", "Trainer.compute_loss"} if shapes == 4 else set())


def test_counted_labels():
    import torch

    labels = torch.tensor([[1, 2, -100, 3]])
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": labels}
    shifted = mod.counted_labels(batch, shifts=True)
    assert shifted is not batch and batch["labels"] is labels          # the batch itself is untouched
    assert torch.equal(shifted["labels"], labels[..., 1:])
    assert shifted["input_ids"] is batch["input_ids"]
    assert mod.counted_labels(batch, shifts=False) is batch              # unshifted loss: counted as is
    given = dict(batch, shift_labels=torch.tensor([[2, -100, -100, -100]]))
    for shifts in (True, False):                                          # a collator's shift_labels win
        assert mod.counted_labels(given, shifts)["labels"] is given["shift_labels"]
    assert mod.counted_labels({"input_ids": labels}, True) == {"input_ids": labels}
    assert mod.counted_labels(["not", "a", "mapping"], True) == ["not", "a", "mapping"]


# ----- the real releases ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def steps():
    """The unpatched and the patched Trainer step (one each), on the installed release."""
    pytest.importorskip("accelerate")  # Trainer requires it
    unpatched = ga.measure(ga.tiny_llama, ga.LLAMA_EXAMPLES)
    with compat_patches.patched(NAME) as report:
        status = report[NAME].status
        patched = ga.measure(ga.tiny_llama, ga.LLAMA_EXAMPLES)
    return {"unpatched": unpatched, "patched": patched, "status": status}


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_affected_release_gradient_wrong_then_right(steps):
    unpatched, patched = steps["unpatched"], steps["patched"]
    assert unpatched["trainer"].model_accepts_loss_kwargs is True  # Llama takes the count
    leaked = in_range(_version(), SECOND_DIVISION)
    # the accelerator keeps what Trainer built between steps (the patch acts during the step only)
    assert unpatched["accelerate_steps"] == patched["accelerate_steps"] == (2 if leaked else 1)
    # 1. without the patch: the measured scale, far from the token-mean gradient
    assert unpatched["ratio"] == pytest.approx(_measured_ratio(), rel=1e-4)
    assert unpatched["error"] > ga.WRONG
    # 2. with it: the token-mean gradient
    assert steps["status"] == "applied"
    assert patched["error"] < ga.RIGHT, patched
    assert patched["ratio"] == pytest.approx(1.0, abs=ga.RIGHT)
    assert compat_patches.report()[NAME].status == "pending"


@pytest.mark.requires(transformers=FIXED, accelerate=ACCELERATE)
def test_fixed_release_not_needed_and_right(steps):
    assert steps["status"] == "not-needed"
    for step in (steps["unpatched"], steps["patched"]):
        assert step["error"] < ga.RIGHT, step


@pytest.mark.requires(transformers=">=5.0.0rc0,<5.6.0", accelerate=ACCELERATE)
def test_a_model_whose_own_loss_ignores_the_count_keeps_its_gradient():
    """Gemma3n before 5.6.0: no flag declared (Trainer reads True from forward's **kwargs) and its own
    loss, which ignores the count. Trainer does not divide it; on 5.2.0 - 5.5.3 accelerate's second
    division makes it the per-micro-batch mean (ratio 0.8065 here, 1.6130 where there is none).
    Removing that division (upstream's fix) would double it: the record leaves the step bit for bit."""
    from . import _loss_kwargs_models as models

    unpatched = ga.measure(models.gemma3n, ga.MASKED_EXAMPLES)
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied"
        patched = ga.measure(models.gemma3n, ga.MASKED_EXAMPLES)
    assert unpatched["trainer"].model_accepts_loss_kwargs is True
    assert mod.loss_reads_count(patched["trainer"].model) is False
    assert unpatched["ratio"] == pytest.approx(0.8065 if in_range(_version(), SECOND_DIVISION) else 1.6130, abs=1e-3)
    assert ga.identical(unpatched["grads"], patched["grads"])


def test_loss_reads_count_reads_the_loss_call():
    calls = mod._loss_call_passes_keywords
    assert calls("loss = self.loss_function(logits=logits, labels=labels, vocab_size=v, **kwargs)")
    assert calls("loss = self.loss_function(\n    logits, labels, **lm_kwargs\n)")
    assert not calls("loss = self.loss_function(logits=logits, labels=labels, pooled_logits=p, config=c)")
    assert not calls("loss = self.loss_function(logits=f(x), labels=labels)\nother(**kwargs)")
    assert not calls("loss = CrossEntropyLoss()(logits, labels)")


@pytest.mark.requires(transformers=RELEASES, accelerate=ACCELERATE)
def test_counts_targets_of_shift_labels_and_encoder_decoder():
    """The count itself, on a real Trainer: causal LM -> labels[..., 1:]; a collator's `shift_labels`
    as given; an encoder-decoder model (BART: its loss is aligned with unshifted labels) -> labels."""
    pytest.importorskip("accelerate")
    import tempfile

    import torch
    from transformers import BartConfig, BartForConditionalGeneration, Trainer, TrainingArguments

    labels = torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])
    batches = [{"input_ids": torch.ones_like(labels), "labels": labels}]
    with_shift = [dict(batches[0], shift_labels=torch.tensor([[6, -100, -100, -100]] * 2))]
    bart = BartForConditionalGeneration(BartConfig(
        vocab_size=32, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32))
    with tempfile.TemporaryDirectory() as folder:
        args = TrainingArguments(output_dir=folder, report_to=[], use_cpu=True, save_strategy="no")
        llama_trainer = Trainer(model=ga.tiny_llama(), args=args)
        bart_trainer = Trainer(model=bart, args=args)
        # BART's forward takes no **kwargs before 5.x releases that added them: Trainer would not count
        # at all; the count rule is what is tested here
        bart_trainer.model_accepts_loss_kwargs = True

        def counts(trainer):
            return [int(trainer._get_num_items_in_batch(b, torch.device("cpu"))) for b in (batches, with_shift)]

        before = counts(llama_trainer), counts(bart_trainer)
        with compat_patches.patched(NAME) as report:
            patched = report[NAME].status
            after = counts(llama_trainer), counts(bart_trainer)
    if in_range(_version(), AFFECTED):
        assert patched == "applied"
        assert before == ([5, 5], [5, 5])  # every label, shift_labels ignored
        assert after == ([3, 2], [5, 2])  # llama: targets / shift_labels; bart: its labels / shift_labels
    else:
        assert patched == "not-needed"
        assert after == before
        assert before[0] == [3, 2]  # upstream's fix
        # BART: PR 46204 as first released (5.10.1 - 5.14.x) shifts its count too; 5.15.0 does not (the
        # record follows 5.15.0: its `differences`)
        assert before[1] == ([3, 2] if in_range(_version(), "<5.15.0") else [5, 2])


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_wraps_its_targets_and_reverts_exactly():
    import inspect

    from transformers.trainer import Trainer

    import transformers.trainer as trainer_module

    names = ("_get_num_items_in_batch", "get_batch_samples", "training_step", "compute_loss", "__init__",
             "create_accelerator_and_postprocess")
    wrapped = {"_get_num_items_in_batch", "__init__"} | (
        {"training_step", "compute_loss"} if in_range(_version(), SECOND_DIVISION) else set())
    before = {name: Trainer.__dict__[name] for name in names}
    plugin = trainer_module.__dict__.get("GradientAccumulationPlugin")
    signatures = {name: inspect.signature(getattr(Trainer, name)) for name in names}
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied"
        for name, original in before.items():
            assert (Trainer.__dict__[name] is not original) == (name in wrapped), name
            assert inspect.signature(getattr(Trainer, name)) == signatures[name]
        assert trainer_module.__dict__.get("GradientAccumulationPlugin") is plugin  # not touched any more
    for name, original in before.items():
        assert Trainer.__dict__[name] is original


@pytest.mark.requires(transformers=RELEASES, accelerate=ACCELERATE)
def test_fingerprints_on_the_installed_release():
    """The drift / fixed fingerprints read the installed Trainer as the measurement says."""
    import transformers.trainer as trainer_module

    count = trainer_module.Trainer._get_num_items_in_batch
    fixed_count = in_range(_version(), FIXED)
    assert (mod._carries_the_fix(count) is not None) == fixed_count
    assert (mod._counts_labels(count) is None) == (not fixed_count)
    # 5.2.0 - 5.5.3 hand the accumulation steps to accelerate's plugin; 5.5.4+ pass 1, < 5.2.0 none
    assert (mod._passes_gas_to_accelerate(trainer_module.Trainer.training_step) is None) == in_range(
        _version(), SECOND_DIVISION)
    assert mod._loss_passes_count_with_flag(trainer_module.Trainer.compute_loss) is None
