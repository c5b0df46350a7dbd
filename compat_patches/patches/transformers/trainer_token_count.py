"""transformers-trainer-token-count: gradient accumulation in Trainer gives the token-mean gradient.

Under gradient accumulation Trainer counts the target tokens of the whole accumulation window once
(``_get_num_items_in_batch``) and hands the count to the model's loss as ``num_items_in_batch``: the
summed cross-entropy of each micro-batch divided by it adds up, over the window, to the token mean.
Two defects break that on transformers 5 (measured on every release, the docs page):

1. The count (5.0.0rc0 - 5.10.0; fixed by upstream PR 46204 in 5.10.1, the yanked 5.10.0 does not
   carry it) is ``labels.ne(-100)`` over the whole label tensor, but a causal-LM loss shifts the
   labels (position ``i`` predicts ``labels[i + 1]``): position 0 of every row is never a target.
   The count is too large by one per row: every causal-LM gradient is scaled by targets / labels.
   Upstream then counts ``labels[..., 1:]`` when the model's loss is the causal-LM loss
   (``LOSS_MAPPING[model.loss_type] is ForCausalLMLoss``), or a batch's ``shift_labels`` where the
   collator provides them; its first form also shifted the count of encoder-decoder models (BART,
   T5: their loss is aligned with unshifted labels), corrected in 5.15.0 by excluding
   ``config.is_encoder_decoder``. The patch applies that final rule.
2. From 5.2.0 Trainer builds accelerate's ``GradientAccumulationPlugin(num_steps=<accumulation
   steps>)``, so ``Accelerator.backward`` divides every loss by the accumulation steps a second time
   (Trainer already normalises it): every gradient under gradient accumulation is divided by the
   accumulation steps once more (DeepSpeed excepted, which does not divide there). Fixed by upstream
   PR 45349 in 5.5.4 / 5.6.0: ``num_steps=1`` for the plugin, always.

Targets: ``Trainer._get_num_items_in_batch`` (same signature on every affected release): the
original gets shallow copies of the batches whose ``labels`` are what upstream counts, and does the
rest (distributed gathering, DP / TP / CP division) unchanged; the batches the model trains on are not
touched. On 5.2.0 - 5.5.3 also ``GradientAccumulationPlugin`` as the name ``transformers.trainer``
calls it by (only ``Trainer.create_accelerator_and_postprocess`` does): constructed with
``num_steps=1``, as upstream's fix does. Nothing heavy is imported at module level.
"""

from compat_patches.core import Patch, Target


def loss_shifts_labels(model):
    """Whether `model`'s own loss shifts its labels (the rule of transformers 5.15+).

    The causal-LM loss (also reached through ``ForConditionalGeneration``) and not an
    encoder-decoder model. PEFT wrappers are looked through.
    """
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        model = get_base_model()
    if LOSS_MAPPING.get(getattr(model, "loss_type", None)) is not ForCausalLMLoss:
        return False
    return not getattr(getattr(model, "config", None), "is_encoder_decoder", False)


def counted_labels(batch, shifts):
    """What upstream counts in `batch`: its `shift_labels`, else `labels[..., 1:]` if the loss
    shifts, else `labels`; the batch itself where it has no labels to recount."""
    try:
        if "labels" not in batch:
            return batch
        if "shift_labels" in batch:
            labels = batch["shift_labels"]
        elif shifts:
            labels = batch["labels"][..., 1:]
        else:
            return batch
        return {**batch, "labels": labels}
    except (TypeError, AttributeError, IndexError):  # not a mapping of tensors: left to the original
        return batch


def _count_targets(wrapped, instance, args, kwargs):
    """Trainer._get_num_items_in_batch(self, batch_samples, device): count target tokens only."""
    if instance is None or not (args or "batch_samples" in kwargs):
        return wrapped(*args, **kwargs)
    batch_samples = args[0] if args else kwargs["batch_samples"]
    if batch_samples:
        shifts = loss_shifts_labels(getattr(instance, "model", None))
        recount = [counted_labels(batch, shifts) for batch in batch_samples]
        if args:
            args = (recount,) + tuple(args[1:])
        else:
            kwargs = dict(kwargs, batch_samples=recount)
    return wrapped(*args, **kwargs)


def _carries_the_fix(original):
    """PR 46204 (5.10): the count already looks at `_loss_shifts_labels` / `shift_labels`."""
    import inspect

    source = inspect.getsource(original)
    if "_loss_shifts_labels" in source or "shift_labels" in source:
        return "Trainer._get_num_items_in_batch already counts shifted labels (transformers PR 46204)"
    return None


def _counts_labels(original):
    """Drift: the affected count is `labels.ne(-100)` summed over the batches."""
    import inspect

    source = inspect.getsource(original)
    if 'batch["labels"].ne(-100)' not in source:
        return "Trainer._get_num_items_in_batch no longer counts batch['labels'].ne(-100)"
    return None


def _plugin_one_step(wrapped, instance, args, kwargs):
    """GradientAccumulationPlugin(**grad_acc_kwargs) in Trainer.create_accelerator_and_postprocess:
    num_steps=1, so Accelerator.backward does not divide the loss by the accumulation steps again."""
    if "num_steps" in kwargs or not args:
        kwargs = dict(kwargs, num_steps=1)
    else:
        args = (1,) + tuple(args[1:])
    return wrapped(*args, **kwargs)


_GAS_TO_ACCELERATE = 'grad_acc_kwargs["num_steps"] = self.args.gradient_accumulation_steps'


def _passes_gas_to_accelerate(original):
    """Drift: 5.2.0 - 5.5.3 create_accelerator_and_postprocess hands the accumulation steps to the
    plugin (and calls it as GradientAccumulationPlugin(**grad_acc_kwargs))."""
    import inspect
    import sys

    trainer = getattr(sys.modules.get("transformers.trainer"), "Trainer", None)
    source = inspect.getsource(trainer.create_accelerator_and_postprocess)
    for needle in (_GAS_TO_ACCELERATE, "GradientAccumulationPlugin(**grad_acc_kwargs)"):
        if needle not in source:
            return f"Trainer.create_accelerator_and_postprocess no longer contains {needle!r}"
    return None


PATCH = Patch(
    name="transformers-trainer-token-count",
    summary="Trainer under gradient accumulation: count only target tokens in num_items_in_batch "
            "(labels[..., 1:] for causal LMs; 5.0.0rc0-5.10.0) and stop accelerate dividing the loss by "
            "the accumulation steps again (5.2.0-5.5.3), so the gradient is the token mean",
    upstream="https://github.com/huggingface/transformers/pull/46204",
    # `<=5.10.1.dev0` keeps source installs of the 5.10.1 cycle in range; those that already carry
    # the fix report not-needed through the `fixed` fingerprint.
    # torch and accelerate: Trainer cannot run without them (transformers 5 requires accelerate>=1.1.0).
    affected={"transformers": ">=5.0.0rc0,<=5.10.1.dev0", "torch": ">=2.0", "accelerate": ">=1.1.0"},
    fixed_in="transformers 5.10.1",
    targets=(
        Target(
            "transformers.trainer:Trainer._get_num_items_in_batch",
            wrapper=_count_targets,
            params=("self", "batch_samples", "device"),
            check=_counts_labels,
            fixed=_carries_the_fix,
        ),
        Target(
            "transformers.trainer:GradientAccumulationPlugin",
            wrapper=_plugin_one_step,
            check=_passes_gas_to_accelerate,
            versions=">=5.2.0,<5.5.4",
        ),
    ),
    upstream_tests=(
        "tests/upstream/transformers/test_trainer_token_count.py::"
        "test_gradient_accumulation_steps_not_leaked_to_accelerator",
    ),
    differences="The count follows upstream's final rule (5.15.0): causal-LM loss and not an "
                "encoder-decoder model; PR 46204 as first released (5.10.x - 5.14.x) also shifted the "
                "count of encoder-decoder models.",
    notes="Two upstream fixes: PR 46204 (the count, 5.10.1) and PR 45349 (accelerate's second division "
          "by the accumulation steps, 5.5.4 / 5.6.0; https://github.com/huggingface/transformers/pull/45349).",
)
