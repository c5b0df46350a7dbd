"""The Trainer-loss records with the loss code real training runs use: a custom ``compute_loss``, label
smoothing, a caller's own ``num_items_in_batch``, and a ``patched()`` scope around part of the run.

The test is the gradient itself (tests/patches/transformers/_grad_accum.py: one real Trainer step,
gradient_accumulation_steps=2 over micro-batches of unequal token counts, against the token-mean
gradient); "identical" is bit for bit (torch.equal on every parameter's gradient). Qwen2.5-VL is the
stale-flag class of transformers-stale-loss-kwargs on every transformers 5 release; Llama is the
model of transformers-trainer-token-count (5.0.0rc0 - 5.10.1.dev0).

The rule both records follow: the gradient changes only where the count provably reaches the loss
(Trainer's own compute_loss, directly or through super(); a label smoother that takes the count,
5.15.0+; a caller's count); any other loss trains exactly as unpatched.
"""

import pytest

import compat_patches
from compat_patches.core.versions import in_range, installed_version

from . import _grad_accum as ga
from . import _loss_kwargs_models as models

pytest.importorskip("torch")

STALE = "transformers-stale-loss-kwargs"
COUNT = "transformers-trainer-token-count"
BOTH = (STALE, COUNT)
ACCELERATE = ">=1.1.0"
AFFECTED = ">=5.0.0rc0"
COUNT_AFFECTED = ">=5.0.0rc0,<=5.10.1.dev0"
SECOND_DIVISION = ">=5.2.0,<5.5.4"
SMOOTHER_TAKES_COUNT = ">=5.15.0"


def _here(spec):
    return in_range(installed_version("transformers"), spec)


def _trainer(kind):
    """A Trainer subclass with a custom compute_loss: "model" returns model(**inputs).loss (never reads
    num_items_in_batch), "super" returns super().compute_loss(...)."""
    from transformers import Trainer

    class ModelLoss(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

    class SuperLoss(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    class OwnLoss(Trainer):
        """Its own loss, divided by num_items_in_batch when it is given (the per-batch mean otherwise)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            outputs = model(input_ids=inputs["input_ids"])
            logits, labels = outputs.logits.float()[:, :-1], inputs["labels"][:, 1:]
            total = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                      reduction="sum")
            loss = total / (num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum())
            return (loss, outputs) if return_outputs else loss

    return {"model": ModelLoss, "super": SuperLoss, "own": OwnLoss}[kind]


def _pair(build, examples, names, **options):
    unpatched = ga.measure(build, examples, **options)
    with compat_patches.patched(*names):
        patched = ga.measure(build, examples, **options)
    return unpatched, patched


# ----- a custom compute_loss ---------------------------------------------------------------------

@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_custom_compute_loss_that_ignores_the_count_trains_as_unpatched():
    """`return model(**inputs).loss`: the count never reaches this loss, so the stale-flag record
    leaves the step exactly as it is (it used to stop Trainer's division and double the gradient)."""
    unpatched, patched = _pair(models.qwen2_5_vl, ga.MASKED_EXAMPLES, (STALE,), trainer_class=_trainer("model"))
    assert unpatched["error"] > ga.WRONG  # the per-micro-batch mean (and on 5.2 - 5.5.3 halved again)
    assert ga.identical(unpatched["grads"], patched["grads"])


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_custom_compute_loss_that_reads_the_count_trains_as_unpatched():
    """An override that divides by num_items_in_batch when given one: unpatched it gets None for a
    stale-flag class (Trainer does not count) and Trainer divides its per-micro-batch mean by the
    accumulation steps. The record is not known to this loss, so it gets None as unpatched (handing it
    the count while Trainer still divides would halve the token mean)."""
    unpatched, patched = _pair(models.qwen2_5_vl, ga.MASKED_EXAMPLES, (STALE,), trainer_class=_trainer("own"))
    assert unpatched["error"] > ga.WRONG
    assert ga.identical(unpatched["grads"], patched["grads"])


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_custom_compute_loss_through_super_gets_the_token_mean():
    """`return super().compute_loss(...)` (TRL's SFTTrainer up to trl 1.14 does this): the base
    compute_loss gets the count, the gradient is the token mean."""
    unpatched, patched = _pair(models.qwen2_5_vl, ga.MASKED_EXAMPLES, BOTH, trainer_class=_trainer("super"))
    assert unpatched["error"] > ga.WRONG, unpatched
    assert patched["error"] < ga.RIGHT, patched


@pytest.mark.requires(transformers=COUNT_AFFECTED, accelerate=ACCELERATE)
def test_token_count_leaves_an_override_that_ignores_the_count_alone():
    """Llama with `return model(**inputs).loss` on the token-count releases. Trainer passes the count
    (flag True) and does not divide; the override ignores it. On 5.2.0 - 5.5.3 accelerate's second
    division happens to make that a per-micro-batch mean (ratio 1.011 here); upstream's fix (5.5.4)
    doubles it (2.023). The record keeps the unpatched step there, bit for bit."""
    unpatched, patched = _pair(ga.tiny_llama, ga.LLAMA_EXAMPLES, (COUNT,), trainer_class=_trainer("model"))
    assert ga.identical(unpatched["grads"], patched["grads"])
    expected = 1.0114 if _here(SECOND_DIVISION) else 2.0228
    assert unpatched["ratio"] == pytest.approx(expected, abs=1e-3), unpatched


def _classifier_step(names):
    """LlamaForSequenceClassification (forward takes **kwargs, so Trainer's flag is True; its loss,
    ForSequenceClassificationLoss, ignores the count), one Trainer step with gradient accumulation 2
    over two examples: (ratio, error) against the gradient of the mean loss over both, and the
    gradient."""
    import contextlib
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    examples = ((list(range(3, 13)), 1), (list(range(13, 17)), 0))

    def build():
        torch.manual_seed(0)
        return LlamaForSequenceClassification(LlamaConfig(
            vocab_size=ga.VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64, num_labels=2, pad_token_id=0))

    model = build()
    total = sum(torch.nn.functional.cross_entropy(model(input_ids=torch.tensor([ids])).logits, torch.tensor([label]))
                for ids, label in examples)
    (total / len(examples)).backward()
    reference = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            Grab.grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}

    dataset = [{"input_ids": ids, "labels": label} for ids, label in examples]
    scope = compat_patches.patched(*names) if names else contextlib.nullcontext()  # patched() = every record
    with tempfile.TemporaryDirectory() as folder, scope:
        args = TrainingArguments(output_dir=folder, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                                 max_steps=1, learning_rate=0.0, max_grad_norm=0.0, report_to=[], save_strategy="no",
                                 logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Grab()])
        assert trainer.model_accepts_loss_kwargs is True
        trainer.train()
    return ga.compare(Grab.grads, reference) + (Grab.grads,)


@pytest.mark.requires(transformers=COUNT_AFFECTED, accelerate=ACCELERATE)
def test_token_count_leaves_a_loss_that_ignores_the_count_alone():
    """A sequence classifier on the token-count releases: Trainer passes the count (flag True) and does
    not divide, its loss ignores the count. On 5.2.0 - 5.5.3 accelerate's second division happens to
    make that the mean over the window (ratio 1); upstream's fix (5.5.4) doubles it (2, as unpatched on
    5.0.0rc0 - 5.1.x and 5.5.4+). The record keeps the unpatched step, bit for bit."""
    unpatched = _classifier_step(())
    patched = _classifier_step((COUNT,))
    assert ga.identical(unpatched[2], patched[2])
    assert unpatched[0] == pytest.approx(1.0 if _here(SECOND_DIVISION) else 2.0, abs=1e-5), unpatched[:2]


@pytest.mark.requires(transformers=COUNT_AFFECTED, accelerate=ACCELERATE)
def test_token_count_fixes_an_override_through_super():
    unpatched, patched = _pair(ga.tiny_llama, ga.LLAMA_EXAMPLES, (COUNT,), trainer_class=_trainer("super"))
    assert unpatched["error"] > ga.WRONG, unpatched
    assert patched["error"] < ga.RIGHT, patched


# ----- label smoothing ---------------------------------------------------------------------------

@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_label_smoothing():
    """From 5.15.0 Trainer's LabelSmoother divides by num_items_in_batch: patched, the gradient is the
    token mean of the smoothed loss (Trainer scores a class outside MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    such as Qwen2.5-VL, on unshifted labels: so does the reference). Before, the smoother ignores the
    count: the stale-flag record leaves the step exactly as unpatched."""
    options = dict(smoothing=0.1, shift=False)
    unpatched, patched = _pair(models.qwen2_5_vl, ga.MASKED_EXAMPLES, (STALE,), **options)
    assert unpatched["error"] > ga.WRONG, unpatched
    if _here(SMOOTHER_TAKES_COUNT):
        assert patched["error"] < ga.RIGHT, patched
    else:
        assert ga.identical(unpatched["grads"], patched["grads"])


@pytest.mark.requires(transformers=COUNT_AFFECTED, accelerate=ACCELERATE)
def test_token_count_leaves_label_smoothing_as_unpatched():
    """Llama with label smoothing on the token-count releases (all before 5.15.0): Trainer's smoother
    ignores the count, so neither the recount nor the end of accelerate's second division may change
    the step: bit for bit as unpatched (about twice the per-micro-batch mean, halved again on 5.2.0 -
    5.5.3: upstream's, not these records')."""
    unpatched, patched = _pair(ga.tiny_llama, ga.LLAMA_EXAMPLES, (COUNT,), smoothing=0.1)
    assert ga.identical(unpatched["grads"], patched["grads"])
    expected = 1.0113 if _here(SECOND_DIVISION) else 2.0226
    assert unpatched["ratio"] == pytest.approx(expected, abs=2e-3), unpatched


# ----- a caller's own count ----------------------------------------------------------------------

def _own_count(factor):
    """A Trainer whose _get_num_items_in_batch returns `factor` x the target count whatever the flag
    (a user-supplied num_items_in_batch reaching training_step)."""
    from transformers import Trainer

    class OwnCount(Trainer):
        def _get_num_items_in_batch(self, batch_samples, device):
            return factor * sum(int(batch["labels"][..., 1:].ne(-100).sum()) for batch in batch_samples)

    return OwnCount


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
@pytest.mark.parametrize("factor", [1, 2])
def test_a_callers_count_reaches_the_loss(factor):
    """Unpatched, Trainer ignores the count it is handed for a stale-flag class. Patched, it reaches
    the loss as for a class whose flag is right (Llama): the gradient is sum / count, the token mean
    for the true count and half of it for twice the count."""
    unpatched, patched = _pair(models.qwen2_5_vl, ga.MASKED_EXAMPLES, BOTH, trainer_class=_own_count(factor))
    assert unpatched["error"] > ga.WRONG, unpatched
    assert patched["ratio"] == pytest.approx(1 / factor, abs=ga.RIGHT), patched
    assert patched["error"] < 0.5 + ga.RIGHT


# ----- the scope ---------------------------------------------------------------------------------

@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_scope_around_construction_only_trains_unpatched_and_warns_once(caplog):
    """Both records act at run time: a Trainer built inside patched() and trained after it closed is
    exactly unpatched, and its callback says so once, through the compat_patches logger."""
    import logging

    as_is = ga.measure(models.qwen2_5_vl, ga.MASKED_EXAMPLES)
    with caplog.at_level(logging.WARNING, logger="compat_patches"):
        built_inside = ga.measure(models.qwen2_5_vl, ga.MASKED_EXAMPLES, build_scope=compat_patches.patched(*BOTH))
        warned = [r.getMessage() for r in caplog.records if "built while the patch was applied" in r.getMessage()]
        built_inside["trainer"].callback_handler.on_train_begin(built_inside["trainer"].args,
                                                                built_inside["trainer"].state,
                                                                built_inside["trainer"].control)
        again = [r.getMessage() for r in caplog.records if "built while the patch was applied" in r.getMessage()]
    assert ga.identical(as_is["grads"], built_inside["grads"])
    expected = {STALE} | ({COUNT} if _here(COUNT_AFFECTED) else set())
    assert {message.split(":")[0] for message in warned} == expected
    assert len(warned) == len(expected) and again == warned  # once per record and Trainer


@pytest.mark.requires(transformers=AFFECTED, accelerate=ACCELERATE)
def test_scope_around_training_only_is_patched(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="compat_patches"):
        built_outside = ga.measure(models.qwen2_5_vl, ga.MASKED_EXAMPLES, train_scope=compat_patches.patched(*BOTH))
    assert built_outside["error"] < ga.RIGHT, built_outside
    assert not [r for r in caplog.records if "built while the patch was applied" in r.getMessage()]


@pytest.mark.requires(transformers=COUNT_AFFECTED, accelerate=ACCELERATE)
def test_token_count_scope_around_training_only_is_patched():
    """Llama: accelerate's plugin was built unpatched (5.2.0 - 5.5.3: num_steps=2); the record still
    removes the second division during the steps, and Trainer's count, at run time."""
    unpatched = ga.measure(ga.tiny_llama, ga.LLAMA_EXAMPLES, build_scope=compat_patches.patched(COUNT))
    patched = ga.measure(ga.tiny_llama, ga.LLAMA_EXAMPLES, train_scope=compat_patches.patched(COUNT))
    assert unpatched["error"] > ga.WRONG, unpatched
    assert patched["error"] < ga.RIGHT, patched
