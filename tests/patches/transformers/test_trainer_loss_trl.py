"""The Trainer-loss records under TRL's own trainers (trl 0.29.0, the oldest trl whose trainers import
under transformers 5, and trl 1.15+ / the newest), on a stale-flag class (Qwen2.5-VL) and Llama.

The test is the gradient itself, one optimizer step (learning rate 0, no clipping), against the loss
that trainer defines:

* SFTTrainer (gradient_accumulation_steps=2, two examples per micro-batch, unequal lengths): the token
  mean over every trained token of the four examples. Plain (padded) and padding_free=True (each
  micro-batch packed into one row with position_ids): there the reference is the token mean over the
  packed rows as the model computes them (the packing itself is not these records' business: Qwen2.5-VL's
  packed forward differs from the separate one on CPU, measured 0.074 relative, with or without them).
  trl 0.29 - 1.14 call ``super().compute_loss``; trl 1.15+ computes its own loss from the count
  (stale_loss_kwargs.COUNT_OVERRIDES). Qwen3.5 (stale flag from 5.17.0, GatedDeltaNet layers) against
  the separate examples' token mean, padded and padding-free: there with
  transformers-gdn-packed-samples as well, and each part alone shown not to be enough.
* DPOTrainer and GRPOTrainer: they compute their own loss and say how it is scaled (trl 1.15+
  ``loss_is_scaled_for_ga``; earlier GRPO sets ``model_accepts_loss_kwargs = False``) and their batches
  carry no ``labels``: the records must leave them bit for bit as they are. DPO's GA=2 gradient is also
  compared with its GA=1 gradient over the same two pairs (the mean over pairs: right either way).

No hub: a WordLevel tokenizer built in code, datasets from ``datasets.Dataset.from_dict``, tiny random
models; bf16 off (SFT/DPO/GRPO configs default to bf16). Run in the trl sets.
"""

import tempfile

import pytest

import compat_patches

from . import _grad_accum as ga
from . import _loss_kwargs_models as models

pytest.importorskip("torch")

STALE = "transformers-stale-loss-kwargs"
COUNT = "transformers-trainer-token-count"
BOTH = (STALE, COUNT)
GDN = "transformers-gdn-packed-samples"
pytestmark = pytest.mark.requires(trl=">=0.29.0", datasets=">=3.0", accelerate=">=1.1.0")

# four examples, two micro-batches of two: 13 + 2 and 2 + 4 targets
SFT_EXAMPLES = [list(range(3, 17)), list(range(13, 16)), list(range(5, 8)), list(range(8, 13))]
COMMON = dict(learning_rate=0.0, max_grad_norm=0.0, report_to=[], save_strategy="no", logging_strategy="no",
              use_cpu=True, bf16=False, dataloader_num_workers=0, disable_tqdm=True, seed=0, max_steps=1)


def tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as token_models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(token_models.WordLevel({f"t{i}": i for i in range(ga.VOCAB)}, unk_token="t1"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", eos_token="t2", unk_token="t1")


def _grab():
    from transformers import TrainerCallback

    class Grab(TrainerCallback):
        grads = None

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            Grab.grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()
                          if p.grad is not None}

    return Grab


def _packed_reference(model, batches):
    """The token-mean gradient over the packed rows the trainer trained on."""
    import torch

    model.zero_grad()
    total, count = 0.0, 0
    for batch in batches:
        keys = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
                "seq_idx")
        logits = model(**{key: batch[key] for key in keys if key in batch}).logits.float()[0, :-1]
        labels = batch["labels"][0, 1:]
        total = total + torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        count += int(labels.ne(-100).sum())
    (total / count).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def sft(build, padding_free=False, separate=False):
    """One SFTTrainer step: (ratio, error) against the loss SFT defines, and the gradient. `separate`:
    padding-free against the separate examples' token mean (a model whose packed forward keeps the
    samples apart, as Qwen3.5 with transformers-gdn-packed-samples)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    seen = []

    class Recording(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            seen.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in inputs.items()})
            return super().training_step(model, inputs, num_items_in_batch)

    grab = _grab()
    model = build()
    reference = ga.reference_gradient(model, [(ids, ids) for ids in SFT_EXAMPLES])
    with tempfile.TemporaryDirectory() as folder:
        config = SFTConfig(output_dir=folder, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                           padding_free=padding_free, max_length=None, **COMMON)
        trainer = Recording(model=model, args=config, train_dataset=Dataset.from_dict({"input_ids": SFT_EXAMPLES}),
                            processing_class=tokenizer(), callbacks=[grab()])
        trainer.train()
    # SFT trains every token of these untemplated examples (padding and, packed, each sample's first
    # position excepted)
    for batch in seen:
        kept = batch["labels"] != -100
        assert bool((batch["labels"][kept] == batch["input_ids"][kept]).all())
    if padding_free:
        assert all(batch["input_ids"].shape[0] == 1 and "position_ids" in batch for batch in seen)
        if not separate:
            reference = _packed_reference(model, seen)
    ratio, error = ga.compare(grab.grads, reference)
    return ratio, error, grab.grads


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding-free"])
def test_sft_trainer_gets_the_token_mean(padding_free):
    unpatched = sft(models.qwen2_5_vl, padding_free)
    with compat_patches.patched(*BOTH):
        patched = sft(models.qwen2_5_vl, padding_free)
    assert unpatched[1] > ga.WRONG, unpatched[:2]
    assert patched[1] < ga.RIGHT, patched[:2]


def _sft_unless_refused(build, padding_free, separate):
    """sft(), or None where transformers refuses the packed batch: from 5.20 its torch fallback of the
    GatedDeltaNet conv raises on `seq_idx` / `cu_seqlens` without the causal_conv1d kernel, which trl
    1.15+'s padding-free collator passes (trl 0.29 passes position_ids only)."""
    try:
        return sft(build, padding_free, separate)
    except ValueError as error:
        if "can't keep packed sequences apart" not in str(error):
            raise
        return None


@pytest.mark.requires(transformers=">=5.17.0")
@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding-free"])
def test_sft_trainer_qwen3_5_with_the_gdn_record(padding_free):
    """Qwen3.5 (stale flag from 5.17.0, GatedDeltaNet layers), against the token mean of the four
    examples computed one by one. Padding-free packs each micro-batch into one row: the GDN layers need
    transformers-gdn-packed-samples to keep the samples apart, the count needs these records; the three
    together give the token mean, and each part alone does not (or transformers refuses the batch)."""
    unpatched = _sft_unless_refused(models.qwen3_5, padding_free, True)
    with compat_patches.patched(*BOTH, GDN) as report:
        assert report[GDN].status == "applied"
        patched = sft(models.qwen3_5, padding_free, separate=True)
    assert patched[1] < ga.RIGHT, patched[:2]
    assert unpatched is None or unpatched[1] > ga.WRONG, unpatched[:2]
    if not padding_free:
        assert unpatched is not None
        return
    with compat_patches.patched(GDN):  # the samples apart, the count withheld: the per-micro-batch mean
        gdn_only = sft(models.qwen3_5, padding_free, separate=True)
    assert gdn_only[1] > ga.WRONG, gdn_only[:2]
    with compat_patches.patched(*BOTH):  # the count right, the packed samples leak into each other
        loss_only = _sft_unless_refused(models.qwen3_5, padding_free, True)
    assert loss_only is None or loss_only[1] > 1e-3, loss_only[:2]


def test_sft_trainer_on_llama_is_untouched():
    unpatched = sft(ga.tiny_llama)
    with compat_patches.patched(STALE):
        patched = sft(ga.tiny_llama)
    assert unpatched[1] < ga.RIGHT
    assert ga.identical(unpatched[2], patched[2])


def dpo(build, batch_size, steps):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    grab = _grab()
    pairs = Dataset.from_dict({"prompt": ["t3 t4", "t5 t6 t7"], "chosen": [" t8 t9", " t10"],
                               "rejected": [" t11", " t12 t13 t14"]})
    with tempfile.TemporaryDirectory() as folder:
        config = DPOConfig(output_dir=folder, per_device_train_batch_size=batch_size,
                           gradient_accumulation_steps=steps, **COMMON)
        trainer = DPOTrainer(model=build(), ref_model=build(), args=config, train_dataset=pairs,
                             processing_class=tokenizer(), callbacks=[grab()])
        trainer.train()
    return grab.grads


def test_dpo_trainer_is_left_alone():
    reference = dpo(models.qwen2_5_vl, 2, 1)
    unpatched = dpo(models.qwen2_5_vl, 1, 2)
    with compat_patches.patched(*BOTH):
        patched = dpo(models.qwen2_5_vl, 1, 2)
    assert ga.identical(unpatched, patched)
    assert ga.compare(patched, reference)[1] < ga.RIGHT  # DPO's mean over pairs, with or without GA


def _reward(completions, **kwargs):
    return [float(index % 3) for index in range(len(completions))]


def grpo(build):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    grab = _grab()
    with tempfile.TemporaryDirectory() as folder:
        config = GRPOConfig(output_dir=folder, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                            num_generations=2, max_completion_length=4, generation_kwargs={"do_sample": False},
                            **COMMON)
        trainer = GRPOTrainer(model=build(), args=config, train_dataset=Dataset.from_dict({"prompt": ["t3 t4", "t5 t6 t7"]}),
                              processing_class=tokenizer(), reward_funcs=_reward, callbacks=[grab()])
        trainer.train()
    return grab.grads


def test_grpo_trainer_is_left_alone():
    unpatched = grpo(models.qwen2_5_vl)
    with compat_patches.patched(*BOTH):
        patched = grpo(models.qwen2_5_vl)
    assert ga.identical(unpatched, patched)
