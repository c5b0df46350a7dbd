"""A real `transformers.Trainer` step under gradient accumulation, against the token-mean gradient.

Shared by test_trainer_token_count.py and test_stale_loss_kwargs.py. One optimizer step of a tiny
model built from a config (random weights, CPU, no hub): per_device_train_batch_size=1,
gradient_accumulation_steps=2, so the step accumulates two micro-batches with unequal numbers of
target tokens. The gradient Trainer accumulated (read in `on_pre_optimizer_step`, before the
optimizer runs; learning rate 0, no clipping, no saving, report_to=[]) is compared with the gradient
of the full batch's token-mean loss: the cross-entropy summed over every (shifted) target token of
both examples, divided by the number of those targets. Gradient accumulation is right when the two
agree to float32 rounding.

Needs torch and accelerate (Trainer requires it).
"""

import tempfile

# Two examples of unequal length. LLAMA_EXAMPLES: every label is set at position 0, so counting
# `labels` instead of the shifted targets over-counts by one per row (8 + 4 = 12 labels, 7 + 3 = 10
# targets: a wrong count gives x10/12). MASKED_EXAMPLES: position 0 is -100, so the count of labels
# equals the count of targets (5 + 2 = 7): only the per-micro-batch mean is wrong there.
LLAMA_EXAMPLES = (
    (list(range(3, 13)), list(range(3, 11)) + [-100, -100]),
    (list(range(13, 17)), list(range(13, 17))),
)
MASKED_EXAMPLES = (
    (list(range(3, 13)), [-100, -100] + list(range(5, 10)) + [-100, -100, -100]),
    (list(range(13, 17)), [-100, -100, 15, 16]),
)
VOCAB = 32

# "right": the accumulated gradient equals the token-mean gradient up to float32 rounding (measured
# 0 to 4e-8 relative error on every release); "wrong": the smallest error a real defect gives here
# is 0.167 (x10/12), so anything above 0.05 is a wrong gradient, not noise.
RIGHT = 1e-5
WRONG = 0.05


def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def target_count(examples):
    return sum(sum(1 for label in labels[1:] if label != -100) for _, labels in examples)


def smoothed_sum(logits, labels, epsilon):
    """Trainer's LabelSmoother summed over the target tokens: (1 - eps) * NLL + eps * mean_v(-log p)."""
    import torch

    keep = labels != -100
    log_probs = -torch.nn.functional.log_softmax(logits[keep], dim=-1)
    nll = log_probs.gather(-1, labels[keep].unsqueeze(-1)).sum()
    return (1 - epsilon) * nll + epsilon * log_probs.sum() / log_probs.shape[-1]


def reference_gradient(model, examples, extra=None, smoothing=0.0, shift=True):
    """The gradient of the token-mean loss over every example (one backward over the summed CE; the
    label-smoothed loss with `smoothing`, over the unshifted logits and labels where not `shift`, as
    Trainer's label smoother scores a class outside MODEL_FOR_CAUSAL_LM_MAPPING_NAMES: the token
    count is then that of the unshifted labels, equal to the targets' in MASKED_EXAMPLES)."""
    import torch

    model.zero_grad()
    total = 0.0
    for ids, labels in examples:
        kwargs = {name: torch.tensor([make(len(ids))]) for name, make in (extra or {}).items()}
        logits = model(input_ids=torch.tensor([ids]), **kwargs).logits.float()[0]
        if smoothing:
            if shift:
                total = total + smoothed_sum(logits[:-1], torch.tensor(labels[1:]), smoothing)
            else:
                total = total + smoothed_sum(logits, torch.tensor(labels), smoothing)
            continue
        logits = logits[:-1]
        total = total + torch.nn.functional.cross_entropy(
            logits, torch.tensor(labels[1:]), ignore_index=-100, reduction="sum")
    (total / target_count(examples)).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def trainer_gradient(model, examples, extra=None, after_init=None, trainer_class=None, args=None,
                     build_scope=None, train_scope=None):
    """One real Trainer optimizer step over `examples` (GA=2, batch 1): (the gradient it
    accumulated, the Trainer, the accelerator's accumulation steps at the optimizer step: accelerate's
    gradient state is shared by every Accelerator, so it is read before the next Trainer resets it).
    `after_init(trainer)` runs between Trainer() and train(); `trainer_class` replaces Trainer (a
    subclass); `args` adds TrainingArguments; `build_scope` / `train_scope` (context managers, e.g.
    compat_patches.patched(...)) are entered around Trainer() / around train() only."""
    import contextlib

    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Dataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(examples)

        def __getitem__(self, index):
            ids, labels = examples[index]
            item = {"input_ids": list(ids), "labels": list(labels)}
            for name, make in (extra or {}).items():
                item[name] = make(len(ids))
            return item

    class Grab(TrainerCallback):
        grads = None

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            Grab.grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()
                          if p.grad is not None}
            Grab.accelerate_steps = trainer.accelerator.gradient_accumulation_steps

    with tempfile.TemporaryDirectory() as folder:
        settings = dict(
            output_dir=folder, per_device_train_batch_size=1, gradient_accumulation_steps=2,
            max_steps=1, learning_rate=0.0, max_grad_norm=0.0, report_to=[], save_strategy="no",
            logging_strategy="no", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0,
        )
        settings.update(args or {})
        with build_scope or contextlib.nullcontext():
            trainer = (trainer_class or Trainer)(model=model, args=TrainingArguments(**settings),
                                                 train_dataset=Dataset(), callbacks=[Grab()])
        if after_init is not None:
            after_init(trainer)
        with train_scope or contextlib.nullcontext():
            trainer.train()
    return Grab.grads, trainer, Grab.accelerate_steps


def compare(got, reference):
    """(ratio, relative error) of the accumulated gradient against the reference, as floats.

    ratio: the least-squares factor got ~ ratio * reference (1 when right; 10/12 for the label
    over-count); relative error: ||got - reference|| / ||reference||.
    """
    import torch

    names = [name for name in reference if name in got]
    assert names and len(names) == len(reference), "the Trainer step left parameters without a gradient"
    a = torch.cat([got[name].flatten() for name in names]).double()
    r = torch.cat([reference[name].flatten() for name in names]).double()
    return float(a @ r / (r @ r)), float((a - r).norm() / r.norm())


def measure(build, examples, extra=None, after_init=None, smoothing=0.0, shift=True, **trainer_options):
    """Build a fresh model, take one Trainer step: {"ratio", "error", "trainer", "accelerate_steps",
    "grads"}. `smoothing`: the reference is the label-smoothed token mean (and Trainer gets
    label_smoothing_factor); `trainer_options` go to trainer_gradient."""
    model = build()
    reference = reference_gradient(model, examples, extra, smoothing=smoothing, shift=shift)
    if smoothing:
        trainer_options["args"] = dict(trainer_options.get("args") or {}, label_smoothing_factor=smoothing)
    got, trainer, accelerate_steps = trainer_gradient(model, examples, extra, after_init, **trainer_options)
    ratio, error = compare(got, reference)
    return {"ratio": ratio, "error": error, "trainer": trainer, "accelerate_steps": accelerate_steps,
            "grads": got}


def identical(a, b):
    """Whether two gradients are the same bit for bit."""
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def trainer_only(build):
    """A Trainer around a fresh model, not trained: what Trainer.__init__ decided."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as folder:
        args = TrainingArguments(output_dir=folder, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                                 report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
        return Trainer(model=build(), args=args)
