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

Both act at run time. ``Trainer._get_num_items_in_batch`` (same signature on every affected
release): the original gets shallow copies of the batches whose ``labels`` are what upstream counts,
and does the rest (distributed gathering, DP / TP / CP division) unchanged; the batches the model
trains on are not touched. On 5.2.0 - 5.5.3 also ``Trainer.training_step`` and ``Trainer.compute_loss``:
during a training step the accelerator's accumulation steps are 1 (what upstream's fix builds) where
the step's loss is divided by Trainer itself or normalised by the count (Trainer's own compute_loss
with the flag True and a model whose own loss reads the count, ``loss_reads_count``; a
``compute_loss_func``; a known override: ``stale_loss_kwargs.COUNT_OVERRIDES``), and restored after
the step. A step whose loss gets the count (flag True) but is not known to use it keeps accelerate's
division, exactly as unpatched: an unknown ``compute_loss`` override, and a model whose forward
takes ``**kwargs`` (so Trainer's flag is True) while its loss ignores the count (a sequence
classifier, a custom module). There Trainer does not divide, accelerate's division is what makes the
gradient the per-micro-batch mean, and upstream's fix doubles it (``return model(**inputs).loss`` on
Llama: 1.011 unpatched on 5.2.0 - 5.5.3, 2.023 where the fix is, measured on 5.0.0rc0 and 5.8.1;
LlamaForSequenceClassification: 1.000 and 2.000); the record does not. So a
Trainer built while the patch is applied and trained after it was reverted is exactly unpatched,
and one built before and trained inside is patched; ``Trainer.__init__`` is wrapped only to give a
Trainer with gradient accumulation built inside a scope a callback that warns once (``compat_patches``
logger) when it starts training outside it. Nothing heavy is imported at module level.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Replaces


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


# ----- accelerate's second division (5.2.0 - 5.5.3), at run time -----------------------------------

_FLAG = "model_accepts_loss_kwargs"
# id(trainer) -> the accelerator's accumulation steps before the step, while Trainer.training_step runs
_STEPS = {}


def _deepspeed(trainer):
    return str(getattr(trainer.accelerator, "distributed_type", "")).upper().endswith("DEEPSPEED")


def _training_step(wrapped, instance, args, kwargs):
    """Trainer.training_step(self, model, inputs, num_items_in_batch=None) on 5.2.0 - 5.5.3.

    Trainer built accelerate's plugin with num_steps=<accumulation steps>, so Accelerator.backward
    divides the loss by them again. For this step the accelerator's accumulation steps are 1 (what
    upstream's fix builds) where the step's loss is Trainer-divided or normalised by the count:
    Trainer divides it itself (flag False or no count), a compute_loss_func gets the count, a
    COUNT_OVERRIDES override gets it, or (decided in `_compute_loss`) Trainer's own compute_loss
    computes it from the count. Elsewhere (an override of compute_loss that gets the count but is not
    known to use it) the step keeps accelerate's division, exactly as unpatched. Restored after.
    """
    from . import stale_loss_kwargs as stale

    if instance is None or id(instance) in _STEPS:
        return wrapped(*args, **kwargs)
    try:
        accelerator = instance.accelerator
        before = accelerator.gradient_accumulation_steps
        if before == 1 or _deepspeed(instance):
            return wrapped(*args, **kwargs)
    except AttributeError:
        return wrapped(*args, **kwargs)
    values = stale._bind(args, kwargs, stale._STEP_NAMES, {"num_items_in_batch": None})
    count = values.get("num_items_in_batch")
    flag = getattr(instance, _FLAG, False)
    loss_func = getattr(instance, "compute_loss_func", None)
    trainer_divides = (not flag or count is None) and loss_func is None
    kind, _ = stale.compute_loss_owner(instance)
    _STEPS[id(instance)] = before
    try:
        if (trainer_divides or loss_func is not None
                or (kind == "counted" and stale.count_override_takes_count(instance))):
            accelerator.gradient_accumulation_steps = 1
        return wrapped(*args, **kwargs)
    finally:
        _STEPS.pop(id(instance), None)
        accelerator.gradient_accumulation_steps = before


_READS_COUNT = {}  # model class -> whether its forward hands the count to its loss


def _loss_call_passes_keywords(source):
    """Whether a `self.loss_function(...)` call in `source` passes `**` keyword arguments (the count
    travels in them: `**kwargs`, `**lm_kwargs`, ...)."""
    start = source.find("self.loss_function(")
    while start != -1:
        depth, index = 0, start + len("self.loss_function")
        for index in range(index, len(source)):
            depth += {"(": 1, ")": -1}.get(source[index], 0)
            if depth == 0:
                break
        if "**" in source[start:index]:
            return True
        start = source.find("self.loss_function(", index)
    return False


def loss_reads_count(model):
    """Whether `model`'s own loss (computed in its forward from `labels`) is normalised by
    `num_items_in_batch`: its class's forward names the count, or hands `**` keyword arguments to
    `self.loss_function` and that loss takes the count (ForCausalLM / ForMaskedLM: yes; the
    classification, QA, token-classification and detection losses of transformers: no). Unknown
    (no source) is False. PEFT wrappers are looked through."""
    import inspect

    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        model = get_base_model()
    klass = type(model)
    if klass not in _READS_COUNT:
        try:
            source = inspect.getsource(klass.forward)
        except (AttributeError, TypeError, OSError):
            source = ""
        reads = "num_items_in_batch" in source
        if not reads and _loss_call_passes_keywords(source):
            try:
                reads = "num_items_in_batch" in inspect.signature(model.loss_function).parameters
            except (AttributeError, TypeError, ValueError):
                reads = False
        _READS_COUNT[klass] = reads
    return _READS_COUNT[klass]


def _compute_loss(wrapped, instance, args, kwargs):
    """Trainer.compute_loss on 5.2.0 - 5.5.3: inside a training step whose loss Trainer computes from
    the count (flag True, a count, the model's own loss from labels, a loss that reads the count),
    accelerate's accumulation steps are 1 for the step's backward. A model whose own loss ignores the
    count (a classification head, a custom module whose forward only swallows `**kwargs`) keeps
    accelerate's division, as unpatched: Trainer does not divide it (flag True), so that division is
    what makes it the per-micro-batch mean (upstream's fix doubles it)."""
    if instance is not None and id(instance) in _STEPS:
        from . import stale_loss_kwargs as stale

        values = stale._bind(args, kwargs, stale._LOSS_NAMES, {"num_items_in_batch": None})
        if (getattr(instance, _FLAG, False) is True and values.get("num_items_in_batch") is not None
                and "inputs" in values and stale.count_reaches_base_loss(instance, values["inputs"])
                and _model_loss_reads_count(instance)):
            instance.accelerator.gradient_accumulation_steps = 1
    return wrapped(*args, **kwargs)


def _model_loss_reads_count(trainer):
    from . import stale_loss_kwargs as stale

    try:
        return loss_reads_count(stale._unwrapped(trainer))
    except AttributeError:
        return False


def _watching_init(wrapped, instance, args, kwargs):
    """Trainer.__init__: unchanged; a Trainer with gradient accumulation gets the scope watch."""
    from compat_patches.core.log import WARNING, log

    from . import stale_loss_kwargs as stale

    result = wrapped(*args, **kwargs)
    try:
        if instance is not None and getattr(instance.args, "gradient_accumulation_steps", 1) > 1:
            stale.scope_watch(instance, NAME, lambda: stale._installed("_get_num_items_in_batch", _count_targets),
                              "Trainer's token count under gradient accumulation is off")
    except Exception as exc:  # never break Trainer(): report and go on
        log(WARNING, "%s: could not add its scope watch to this Trainer: %r", NAME, exc)
    return result


_GAS_TO_ACCELERATE = 'grad_acc_kwargs["num_steps"] = self.args.gradient_accumulation_steps'


def _passes_gas_to_accelerate(original):
    """Drift: 5.2.0 - 5.5.3 create_accelerator_and_postprocess hands the accumulation steps to the
    plugin, and training_step divides by them itself and then calls Accelerator.backward."""
    import inspect

    from compat_patches.core.source_check import source_object

    try:  # the live method, or its source stand-in where transformers.trainer is not imported
        creator = source_object("transformers.trainer:Trainer.create_accelerator_and_postprocess")
    except LookupError:
        return "Trainer.create_accelerator_and_postprocess is gone"
    source = inspect.getsource(creator)
    for needle in (_GAS_TO_ACCELERATE, "GradientAccumulationPlugin(**grad_acc_kwargs)"):
        if needle not in source:
            return f"Trainer.create_accelerator_and_postprocess no longer contains {needle!r}"
    source = inspect.getsource(original)
    for needle in ("self.accelerator.backward(loss", "loss / self.current_gradient_accumulation_steps"):
        if needle not in source:
            return f"Trainer.training_step no longer contains {needle!r}"
    return None


def _loss_passes_count_with_flag(original):
    import inspect

    if "if self.model_accepts_loss_kwargs:" not in inspect.getsource(original):
        return "Trainer.compute_loss no longer contains 'if self.model_accepts_loss_kwargs:'"
    return None


NAME = "transformers-trainer-token-count"

_REPLACES = Replaces(
    symbols=("transformers.trainer:Trainer._get_num_items_in_batch",),
    note="The field inventory of framework mirrors (2026-11-28) lists no hand patch of these two defects. "
         "Found while measuring, and not the same fix (keep them): unsloth-zoo replaces "
         "`Trainer.get_batch_samples` (`unsloth_zoo/loss_utils.py`, `_unsloth_get_batch_samples`, counting "
         "`labels[..., 1:]`) for the models Unsloth patches; LlamaFactory's trainers set "
         "`model_accepts_loss_kwargs = False` whenever a multimodal processor is given (a per-micro-batch "
         "mean, which on 5.2.0 - 5.5.3 is still divided twice). A user adopting this record deletes any "
         "local override of `_get_num_items_in_batch` that only shifts the count, and any "
         "`trainer.accelerator.gradient_accumulation_steps = 1` reset written for 5.2 - 5.5.",
)

PATCH = Patch(
    name=NAME,
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
            "transformers.trainer:Trainer.training_step",
            wrapper=_training_step,
            params=("self", "model", "inputs", "num_items_in_batch"),
            check=_passes_gas_to_accelerate,
            versions=">=5.2.0,<5.5.4",
        ),
        Target(
            "transformers.trainer:Trainer.compute_loss",
            wrapper=_compute_loss,
            params=("self", "model", "inputs", "return_outputs", "num_items_in_batch"),
            check=_loss_passes_count_with_flag,
            versions=">=5.2.0,<5.5.4",
        ),
        Target("transformers.trainer:Trainer.__init__", wrapper=_watching_init),
    ),
    upstream_tests=(
        "tests/upstream/transformers/test_trainer_token_count.py::"
        "test_gradient_accumulation_steps_not_leaked_to_accelerator",
        # transformers' own gradient-accumulation tests, which PR 46204 relied on (cases around: they pass
        # unpatched too, the count scales the compared losses alike)
        "tests/upstream/transformers/test_trainer_gradient_accumulation.py::"
        "test_gradient_accumulation_loss_alignment_with_model_loss",
        "tests/upstream/transformers/test_trainer_gradient_accumulation.py::"
        "test_gradient_accumulation_loss_alignment_with_loss_func",
        "tests/upstream/transformers/test_trainer_gradient_accumulation.py::test_gradient_accumulation",
    ),
    differences="Accelerate's second division (PR 45349) is removed per training step, not by building the "
                "plugin with num_steps=1: the accelerator still reports the accumulation steps between steps, "
                "and a step whose compute_loss is an unknown override, or whose model's own loss ignores "
                "num_items_in_batch (a classification head), keeps the division (upstream's fix doubles such a "
                "step's gradient). The count follows upstream's "
                "final rule (5.15.0): causal-LM loss and not an encoder-decoder model; PR 46204 as first released "
                "(5.10.x - 5.14.x) also shifted the count of encoder-decoder models.",
    notes="Two upstream fixes: PR 46204 (the count, 5.10.1) and PR 45349 (accelerate's second division "
          "by the accumulation steps, 5.5.4 / 5.6.0; https://github.com/huggingface/transformers/pull/45349).",
    replaces=_REPLACES,
)
