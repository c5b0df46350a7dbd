"""transformers-stale-loss-kwargs: let Trainer hand `num_items_in_batch` to the multimodal classes
that declare a stale ``accepts_loss_kwargs = False``, where (and only where) the count then really
reaches the loss.

``Trainer.__init__`` copies the model's class attribute ``accepts_loss_kwargs`` into
``self.model_accepts_loss_kwargs``. Where that is False, Trainer neither counts the accumulation
window's target tokens (``num_items_in_batch``) nor passes them to ``forward``, and divides each
micro-batch's loss by the number of accumulation steps instead: the accumulated gradient is the mean
of per-micro-batch token means, not the token mean of the whole batch. That is only right for a
model whose loss cannot take the count. The classes in CLASSES declare ``accepts_loss_kwargs = False``
although, from the release given there, their ``forward`` hands ``**kwargs``, the count included, to
``self.loss_function``. The flag is a leftover of losses that could not take the count (Gemma3's
filtered loss, the VL classes' ``loss_function`` calls without ``**kwargs`` before 5.17); upstream
removed it from ``Gemma3ForConditionalGeneration`` in 5.17.0 together with that loss (the precedent),
and left it on the others.

Setting the Trainer's flag True for good (this record's first form) is wrong for a Trainer whose
``compute_loss`` is overridden and never hands the count to the loss (``return model(**inputs).loss``):
Trainer then stops dividing by the accumulation steps and the gradient doubles. So the record acts at
run time, one micro-batch at a time, and only for a Trainer that *qualifies*: Trainer's flag is False
now, its (accelerate- and PEFT-unwrapped) model gets that False from one of CLASSES on a release from
the class's first affected one, and it has no ``compute_loss_func``, no deepspeed sequence
parallelism and no ``loss_is_scaled_for_ga`` of its own (a trainer that says how its loss is scaled,
such as TRL's DPO / GRPO trainers from trl 1.15, is left alone). For such a Trainer:

* ``Trainer.get_batch_samples``: returns what it returns unpatched (the count None); the record also
  counts the window as Trainer counts for a model whose flag is True (``self._get_num_items_in_batch``
  with the flag True for that call: the same count, gathered across ranks under
  ``average_tokens_across_devices``) and keeps it for the window's micro-batches.
* ``Trainer.training_step``: for a micro-batch of that window (or with a count its caller passed),
  the step runs with that count. A ``compute_loss`` that overrides Trainer's (any class between
  ``type(trainer)`` and Trainer, or an instance attribute) is called with the ``num_items_in_batch``
  its caller gave, exactly as unpatched (a one-shot instance attribute, removed when the step ends),
  except an override in COUNT_OVERRIDES (read and measured to normalise its own loss by the count:
  TRL's ``SFTTrainer`` from trl 1.15), which gets the count.
* ``Trainer.compute_loss`` (the base method, reached directly or through ``super()``): inside such a
  step, where the loss is computed from the count (the model's own loss from ``labels``, or a
  ``LabelSmoother`` that takes ``num_items_in_batch``, 5.15.0+), it runs with the count and the flag
  True; elsewhere exactly as unpatched.

The flag is True during a step only once the count has reached the loss, and Trainer reads it after
``compute_loss`` to decide whether to divide by the accumulation steps; the record puts the
Trainer's own value back when the step ends. A step where the count does not reach the loss runs
exactly as unpatched (bit for bit), so a custom ``compute_loss`` keeps the unpatched gradient and
TRL's ``SFTTrainer`` gets the token mean.

Run time, not construction: a Trainer built while the patch is applied and trained after it was
reverted is exactly unpatched, and one built before and trained while it is applied is patched.
``Trainer.__init__`` is wrapped only to notice the first case: a Trainer built inside a scope, with
a model of CLASSES and gradient accumulation, gets a callback that warns once (``compat_patches``
logger) if it starts training while the patch is not applied. Nothing is written on any model class
or instance. Nothing heavy is imported at module level.
"""

import sys

from compat_patches.core import Patch, Target
from compat_patches.core.log import WARNING, log
from compat_patches.core.record import Copy, Replaces
from compat_patches.core.versions import in_range, installed_version

NAME = "transformers-stale-loss-kwargs"

# Each class and the first release whose `forward` hands the count to `self.loss_function` while the
# class declares `accepts_loss_kwargs = False` (read with `ast` in every wheel, measured with a Trainer
# step: docs/patches/transformers-stale-loss-kwargs.md). Before it the class did not exist or its loss
# ignored the count (the flag was right then); none is fixed on 5.25.0, the newest release. Not listed:
# PocketTTS / GradiumPhononTTS, whose flow-matching loss takes **kwargs but never reads the count, and
# JevForDecision (5.25.0), whose decision loss ignores it too (its flag is meant).
_FIRST_AFFECTED = {  # model folder: (class, first affected release)
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "5.0.0rc0"),
    "gemma3n": ("Gemma3nForConditionalGeneration", "5.6.0"),
    "gemma4": ("Gemma4ForConditionalGeneration", "5.6.0"),
    "exaone4_5": ("Exaone4_5_ForConditionalGeneration", "5.8.0"),
    "gemma4_unified": ("Gemma4UnifiedForConditionalGeneration", "5.10.0"),
    "kimi_k25": ("Kimi_K25ForConditionalGeneration", "5.13.0"),
    "inkling": ("InklingForConditionalGeneration", "5.14.0"),
    "cosmos3_edge": ("Cosmos3EdgeForConditionalGeneration", "5.15.0"),
    "muse_glimmer": ("MuseGlimmerForConditionalGeneration", "5.15.0"),
    "cohere_compass": ("CohereCompassForConditionalGeneration", "5.16.0"),
    "glm5_next": ("Glm5NextForConditionalGeneration", "5.16.1"),
    "cosmos3_omni": ("Cosmos3OmniForConditionalGeneration", "5.17.0"),
    "ernie4_5_vl_moe": ("Ernie4_5_VLMoeForConditionalGeneration", "5.17.0"),
    "glm46v": ("Glm46VForConditionalGeneration", "5.17.0"),
    "glm4v": ("Glm4vForConditionalGeneration", "5.17.0"),
    "glm4v_moe": ("Glm4vMoeForConditionalGeneration", "5.17.0"),
    "glm_image": ("GlmImageForConditionalGeneration", "5.17.0"),
    "glm_ocr": ("GlmOcrForConditionalGeneration", "5.17.0"),
    "qwen3_5": ("Qwen3_5ForConditionalGeneration", "5.17.0"),
    "qwen3_5_moe": ("Qwen3_5MoeForConditionalGeneration", "5.17.0"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "5.17.0"),
    "qwen3_vl_moe": ("Qwen3VLMoeForConditionalGeneration", "5.17.0"),
    "qwen4_exp": ("Qwen4ExpForConditionalGeneration", "5.17.0"),
    "hyperclovax_vision_v2": ("HyperCLOVAXVisionV2ForConditionalGeneration", "5.18.0"),
    "molmo2": ("Molmo2ForConditionalGeneration", "5.20.0"),
    "muse_spark": ("MuseSparkForConditionalGeneration", "5.20.0"),
    "inkling2": ("Inkling2ForConditionalGeneration", "5.23.0"),
    "inkling2_loop": ("Inkling2LoopForConditionalGeneration", "5.24.0"),
    "ovis2_5": ("Ovis2_5ForConditionalGeneration", "5.25.0"),
}
CLASSES = {(f"transformers.models.{folder}.modeling_{folder}", name): first
           for folder, (name, first) in _FIRST_AFFECTED.items()}

# Overrides of Trainer.compute_loss that compute their own loss and divide it by `num_items_in_batch`
# when given one (read in every release of the range, measured with a Trainer step): (module,
# qualname) -> (distribution, range). trl 1.15.0 - 1.16.0 SFTTrainer: `per_token_loss.sum() /
# num_items_in_batch` (its own fused LM head), and its label-smoothing path hands the count to
# `LabelSmoother` on transformers 5.15+. trl 0.29 - 1.14 SFTTrainer calls `super().compute_loss`,
# which the base wrapper covers. Newer trl releases are unknown overrides (exactly unpatched) until
# measured.
COUNT_OVERRIDES = {
    ("trl.trainer.sft_trainer", "SFTTrainer.compute_loss"): ("trl", ">=1.15.0,<1.17"),
}

_READS_FLAG = "self.model_accepts_loss_kwargs = unwrapped_model.accepts_loss_kwargs"
_FLAG = "model_accepts_loss_kwargs"
_MISSING = object()


# ----- what the record acts on --------------------------------------------------------------------

_IN_RANGE = {}


def _in_range_cached(dist, spec):
    key = (dist, spec)
    if key not in _IN_RANGE:
        version = installed_version(dist)
        _IN_RANGE[key] = version is not None and in_range(version, spec)
    return _IN_RANGE[key]


def _unwrapped(trainer):
    """The model Trainer.__init__ inspected: accelerate-unwrapped, then PEFT-unwrapped as Trainer does
    (inline up to 5.1, `trainer_utils.unwrap_peft_model` from 5.2). A PEFT model exists only if peft
    was imported, so peft is never imported here."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    peft = sys.modules.get("peft")
    if peft is None or not isinstance(model, (peft.PeftModel, peft.PeftMixedModel)):
        return model
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model.base_model.model  # PeftMixedModel has no get_base_model


def _flag_owner(model):
    """The class in type(model).__mro__ whose body sets `accepts_loss_kwargs`, or None."""
    for klass in type(model).__mro__:
        if "accepts_loss_kwargs" in vars(klass):
            return klass
    return None


def stale_flag_class(model, version):
    """The (module, qualname) of CLASSES that gave `model` its stale False on transformers `version`,
    or None.

    None when the instance sets the flag itself, when the flag comes from a class outside CLASSES
    (a user subclass that declares it), when it is not False, or when `version` is below the
    class's first affected release (its loss ignored the count there: the flag was right).
    """
    if "accepts_loss_kwargs" in getattr(model, "__dict__", {}):
        return None
    owner = _flag_owner(model)
    if owner is None or vars(owner)["accepts_loss_kwargs"] is not False:
        return None
    key = (owner.__module__, owner.__qualname__)
    first = CLASSES.get(key)
    if first is None or not in_range(version, f">={first}"):
        return None
    return key


def sequence_parallel(trainer):
    """Trainer itself sets the flag False under deepspeed sequence parallelism and computes its own
    loss there: keep that."""
    config = getattr(getattr(trainer, "accelerator", None), "parallelism_config", None)
    return (config is not None and getattr(config, "sp_backend", None) == "deepspeed"
            and bool(getattr(config, "sp_enabled", False)))


def qualifies(trainer):
    """Whether the record acts on `trainer` now (see the module docstring)."""
    try:
        if trainer.__dict__.get(_FLAG) is not False:
            return False
        if getattr(trainer, "compute_loss_func", None) is not None:
            return False
        if getattr(trainer, "loss_is_scaled_for_ga", None) is not None:
            return False
        if sequence_parallel(trainer):
            return False
        return stale_flag_class(_unwrapped(trainer), installed_version("transformers")) is not None
    except AttributeError:  # not a Trainer as the record knows it: leave it alone
        return False


def smoother_takes_count(trainer):
    """Whether the Trainer's label smoother (if any) divides by `num_items_in_batch` (5.15.0+)."""
    import inspect

    smoother = getattr(trainer, "label_smoother", None)
    if smoother is None:
        return True
    try:
        return "num_items_in_batch" in inspect.signature(type(smoother).__call__).parameters
    except (TypeError, ValueError):
        return False


def count_reaches_base_loss(trainer, inputs):
    """Whether base Trainer.compute_loss computes its loss from the count for these inputs: the
    model's own loss from `labels` (Trainer passes the count to forward once its flag is True), or a
    LabelSmoother that takes the count; not with a compute_loss_func (Trainer passes the count to it
    already) nor under deepspeed sequence parallelism."""
    try:
        has_labels = "labels" in inputs
    except TypeError:
        return False
    return (has_labels and getattr(trainer, "compute_loss_func", None) is None
            and not sequence_parallel(trainer) and smoother_takes_count(trainer))


def compute_loss_owner(trainer):
    """("base", None), ("counted", function) or ("override", function): what `trainer.compute_loss`
    resolves to. "counted": an override in COUNT_OVERRIDES on a release of its range."""
    trainer_class = getattr(sys.modules.get("transformers.trainer"), "Trainer", None)
    if "compute_loss" in getattr(trainer, "__dict__", {}):
        return "override", trainer.__dict__["compute_loss"]
    for klass in type(trainer).__mro__:
        function = vars(klass).get("compute_loss")
        if function is None:
            continue
        if klass is trainer_class:
            return "base", None
        key = (getattr(function, "__module__", None), getattr(function, "__qualname__", None))
        rule = COUNT_OVERRIDES.get(key)
        if rule is not None and _in_range_cached(*rule):
            return "counted", function
        return "override", function
    return "override", None


def count_override_takes_count(trainer):
    """Whether a COUNT_OVERRIDES override divides by the count here: its own loss (no label
    smoother), or a label smoother that takes the count (trl hands it on transformers 5.15+)."""
    return (getattr(trainer, "compute_loss_func", None) is None and not sequence_parallel(trainer)
            and smoother_takes_count(trainer))


# ----- the window's count and the step --------------------------------------------------------------

_WINDOWS = None  # trainer -> [count, ids of the window's batches not yet trained on]: _windows()


def _windows():
    """The trainers' windows (a WeakKeyDictionary made on first use: importing the record imports
    nothing beyond our own modules)."""
    global _WINDOWS
    if _WINDOWS is None:
        import weakref

        _WINDOWS = weakref.WeakKeyDictionary()
    return _WINDOWS

# id(trainer) -> _Step, only while Trainer.training_step runs for a qualifying trainer
_STEPS = {}


class _Step:
    __slots__ = ("count", "caller", "overridden", "granted", "flag")

    def __init__(self, count, caller, overridden, flag):
        self.count, self.caller, self.overridden, self.flag = count, caller, overridden, flag
        self.granted = False


def _bind(args, kwargs, names, defaults):
    """The named arguments of a wrapped method call (self excluded), with defaults."""
    values = dict(defaults)
    values.update(zip(names, args))
    values.update(kwargs)
    return values


def _count_as_granted(trainer, batch_samples, device):
    """`trainer._get_num_items_in_batch` as Trainer calls it for a model whose flag is True."""
    before = trainer.__dict__.get(_FLAG, _MISSING)
    trainer.__dict__[_FLAG] = True
    try:
        return trainer._get_num_items_in_batch(batch_samples, device)
    finally:
        if before is _MISSING:
            trainer.__dict__.pop(_FLAG, None)
        else:
            trainer.__dict__[_FLAG] = before


def _batch_samples(wrapped, instance, args, kwargs):
    """Trainer.get_batch_samples(self, epoch_iterator, num_batches, device): unchanged result; for a
    qualifying trainer also keep the window's count as Trainer counts it with the flag True."""
    result = wrapped(*args, **kwargs)
    if instance is None:
        return result
    _windows().pop(instance, None)
    if not qualifies(instance):
        return result
    try:
        batch_samples, count = result
    except (TypeError, ValueError):
        return result
    if count is not None or not batch_samples:  # counted already (an override): Trainer's own
        return result
    device = _bind(args, kwargs, ("epoch_iterator", "num_batches", "device"), {}).get("device")
    count = _count_as_granted(instance, batch_samples, device)
    if count is not None:
        _windows()[instance] = [count, {id(batch) for batch in batch_samples}]
    return result


def _window_count(trainer, inputs):
    """The count of the window `inputs` belongs to (consumed once per micro-batch), or None."""
    entry = _windows().get(trainer)
    if entry is None or id(inputs) not in entry[1]:
        return None
    entry[1].discard(id(inputs))
    if not entry[1]:
        _windows().pop(trainer, None)
    return entry[0]


def _caller_count_shim(trainer, step, override):
    """A one-shot `compute_loss` instance attribute: the override, called with the count the step's
    caller gave (what it gets unpatched). Returns a function that removes it."""
    before = trainer.__dict__.get("compute_loss", _MISSING)
    bound = trainer.compute_loss

    def remove():
        if trainer.__dict__.get("compute_loss") is shim:
            if before is _MISSING:
                del trainer.__dict__["compute_loss"]
            else:
                trainer.__dict__["compute_loss"] = before

    def shim(*args, **kwargs):
        remove()
        if len(args) >= 4:
            args = args[:3] + (step.caller,) + args[4:]
        else:
            kwargs["num_items_in_batch"] = step.caller
        return bound(*args, **kwargs)

    trainer.__dict__["compute_loss"] = shim
    return remove


_STEP_NAMES = ("model", "inputs", "num_items_in_batch")


def _training_step(wrapped, instance, args, kwargs):
    """Trainer.training_step(self, model, inputs, num_items_in_batch=None): see the module docstring."""
    if instance is None or id(instance) in _STEPS or not qualifies(instance):
        return wrapped(*args, **kwargs)
    values = _bind(args, kwargs, _STEP_NAMES, {"num_items_in_batch": None})
    if "model" not in values or "inputs" not in values:
        return wrapped(*args, **kwargs)
    caller = values["num_items_in_batch"]
    count = caller if caller is not None else _window_count(instance, values["inputs"])
    if count is None:
        return wrapped(*args, **kwargs)
    kind, _ = compute_loss_owner(instance)
    step = _Step(count, caller, kind != "base", instance.__dict__.get(_FLAG, _MISSING))
    remove = None
    _STEPS[id(instance)] = step
    try:
        if kind == "counted" and count_override_takes_count(instance):
            step.granted = True
            instance.__dict__[_FLAG] = True
        elif kind != "base":
            remove = _caller_count_shim(instance, step, kind)
        return wrapped(values["model"], values["inputs"], count)
    finally:
        _STEPS.pop(id(instance), None)
        if remove is not None:
            remove()
        if step.granted and instance.__dict__.get(_FLAG) is True:
            if step.flag is _MISSING:
                instance.__dict__.pop(_FLAG, None)
            else:
                instance.__dict__[_FLAG] = step.flag


_LOSS_NAMES = ("model", "inputs", "return_outputs", "num_items_in_batch")


def granted_in_step(trainer):
    """Whether the count reached the loss in `trainer`'s current training step (for
    transformers-trainer-token-count)."""
    step = _STEPS.get(id(trainer))
    return step is not None and step.granted


def _compute_loss(wrapped, instance, args, kwargs):
    """Trainer.compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None): inside
    a qualifying step, with the count and the flag True where the count reaches the loss."""
    step = _STEPS.get(id(instance)) if instance is not None else None
    if step is None:
        return wrapped(*args, **kwargs)
    values = _bind(args, kwargs, _LOSS_NAMES, {"return_outputs": False, "num_items_in_batch": None})
    if "model" not in values or "inputs" not in values:
        return wrapped(*args, **kwargs)
    given = values["num_items_in_batch"]
    if count_reaches_base_loss(instance, values["inputs"]):
        step.granted = True
        instance.__dict__[_FLAG] = True
        return wrapped(values["model"], values["inputs"], values["return_outputs"],
                       num_items_in_batch=given if given is not None else step.count)
    # exactly as unpatched: the count the caller gives (training_step itself passes the caller's)
    if not step.overridden:
        given = step.caller
    current = instance.__dict__.get(_FLAG, _MISSING)
    instance.__dict__[_FLAG] = step.flag if step.flag is not _MISSING else False
    try:
        return wrapped(values["model"], values["inputs"], values["return_outputs"], num_items_in_batch=given)
    finally:
        if current is _MISSING:
            instance.__dict__.pop(_FLAG, None)
        else:
            instance.__dict__[_FLAG] = current


# ----- a Trainer built inside a scope that trains outside it ----------------------------------------

def _installed(attribute, wrapper):
    """Whether `wrapper` is in the wrapper chain of Trainer.<attribute> now."""
    import wrapt

    trainer_class = getattr(sys.modules.get("transformers.trainer"), "Trainer", None)
    target = None if trainer_class is None else vars(trainer_class).get(attribute)
    if target is None:
        return False
    try:
        return wrapt.is_wrapped_by(target, predicate=lambda w: getattr(w, "_self_wrapper", None) is wrapper)
    except Exception:  # an undeterminable chain: say nothing rather than warn falsely
        return True


def scope_watch(trainer, name, active, why):
    """Add (once per record and trainer) a TrainerCallback that warns once, through the
    compat_patches logger, when `trainer` starts training while `active()` is False."""
    from transformers.trainer_callback import TrainerCallback

    handler = getattr(trainer, "callback_handler", None)
    if handler is None:
        return None
    for callback in getattr(handler, "callbacks", ()):
        if getattr(callback, "compat_patches_watch", None) == name:
            return callback

    class CompatPatchesScopeWatch(TrainerCallback):
        compat_patches_watch = name
        warned = False

        def on_train_begin(self, args, state, control, **kwargs):
            if not self.warned and not active():
                self.warned = True
                log(WARNING, "%s: this Trainer was built while the patch was applied, but it is not "
                             "applied now that it trains, so it trains unpatched (%s). The patch acts "
                             "at run time: apply it around trainer.train() (or apply_all()).", name, why)

    callback = CompatPatchesScopeWatch()
    trainer.add_callback(callback)
    return callback


def _watching_init(wrapped, instance, args, kwargs):
    """Trainer.__init__: unchanged; a Trainer of a CLASSES model with gradient accumulation gets the
    scope watch."""
    result = wrapped(*args, **kwargs)
    try:
        if (instance is not None and getattr(instance.args, "gradient_accumulation_steps", 1) > 1
                and stale_flag_class(_unwrapped(instance), installed_version("transformers")) is not None):
            scope_watch(instance, NAME, lambda: _installed("training_step", _training_step),
                        "the gradient under gradient accumulation is the per-micro-batch mean")
    except Exception as exc:  # never break Trainer(): report and go on
        log(WARNING, "%s: could not add its scope watch to this Trainer: %r", NAME, exc)
    return result


# ----- drift ----------------------------------------------------------------------------------------

def _source_has(original, needles, where):
    import inspect

    source = inspect.getsource(original)
    for needle in needles:
        if needle not in source:
            return f"{where} no longer contains {needle!r}"
    return None


def _reads_the_flag(original):
    """Drift: Trainer.__init__ must still copy the model's class attribute into its own flag."""
    return _source_has(original, (_READS_FLAG,), "Trainer.__init__")


def _counts_in_batch_samples(original):
    return _source_has(original, ("self._get_num_items_in_batch(batch_samples, device)",),
                       "Trainer.get_batch_samples")


def _step_reads_flag_after_loss(original):
    """Drift: training_step calls compute_loss with the count, then decides the division from the flag."""
    return _source_has(original, ("self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)",
                                  "self.model_accepts_loss_kwargs", "self.current_gradient_accumulation_steps"),
                       "Trainer.training_step")


def _loss_passes_count_with_flag(original):
    return _source_has(original, ("if self.model_accepts_loss_kwargs:", "num_items_in_batch"),
                       "Trainer.compute_loss")


_REPLACES = Replaces(
    symbols=tuple(f"{module}:{name}.accepts_loss_kwargs" for module, name in CLASSES),
    copies=(
        Copy("axolotl-ai-cloud/axolotl", "src/axolotl/monkeypatch/gemma4_loss_kwargs.py",
             "patch_gemma4_accepts_loss_kwargs", commit="067b021c8b87", inventory=59,
             what="sets `accepts_loss_kwargs = True` on `Gemma4ForConditionalGeneration` and "
                  "`Gemma4UnifiedForConditionalGeneration` (permanently, process wide, before "
                  "`Trainer.__init__`)."),
    ),
    note="Adopting this record, a user deletes that module and its call; the record also covers "
         "Gemma3n and the other classes of its table, checks each class's first affected release "
         "(axolotl's patch would make a class before its range twice too large), leaves every custom "
         "`compute_loss` that never hands the count to the loss as unpatched, and writes nothing on the "
         "classes (a custom training loop that reads `model.accepts_loss_kwargs` itself still sees "
         "False). Related, not replaced: ms-swift's `Seq2SeqTrainer` sets `model_accepts_loss_kwargs = "
         "True` for every model and rescales the loss in its own `compute_loss` (a different mechanism), "
         "and unsloth PR 3597 works around the flag inside unsloth's own loss scaling.",
)

PATCH = Patch(
    name=NAME,
    summary="pass num_items_in_batch under gradient accumulation to the multimodal classes whose stale "
            "accepts_loss_kwargs=False gives a per-micro-batch mean gradient (Qwen2.5-VL, Qwen3-VL, "
            "Qwen3.5, GLM-4V, Gemma4, Gemma3n, ...: the page lists each class and its range)",
    upstream="",  # not fixed upstream; the precedent (Gemma3, 5.17.0) is on the docs page
    # The union of CLASSES' ranges (each class is checked against its own first release); measured
    # on the releases in docs/patches/transformers-stale-loss-kwargs.md, none fixed on 5.25.0.
    # torch and accelerate: Trainer cannot run without them (transformers 5 requires accelerate>=1.1.0).
    affected={"transformers": ">=5.0.0rc0", "torch": ">=2.0", "accelerate": ">=1.1.0"},
    fixed_in=None,
    verified_through={"transformers": "5.25.0"},
    targets=(
        Target("transformers.trainer:Trainer.get_batch_samples", wrapper=_batch_samples,
               params=("self", "epoch_iterator", "num_batches", "device"), check=_counts_in_batch_samples),
        Target("transformers.trainer:Trainer.training_step", wrapper=_training_step,
               params=("self", "model", "inputs", "num_items_in_batch"), check=_step_reads_flag_after_loss),
        Target("transformers.trainer:Trainer.compute_loss", wrapper=_compute_loss,
               params=("self", "model", "inputs", "return_outputs", "num_items_in_batch"),
               check=_loss_passes_count_with_flag),
        Target("transformers.trainer:Trainer.__init__", wrapper=_watching_init, check=_reads_the_flag),
    ),
    differences="Upstream's precedent (Gemma3, 5.17.0) deletes the class attribute; the patch leaves "
                "every model class untouched and acts per training step, for Trainer-based training only: "
                "the count reaches Trainer's own compute_loss (directly or through super()) and the overrides "
                "in COUNT_OVERRIDES; any other compute_loss override trains exactly as unpatched (a custom "
                "loop that reads the class attribute itself is not covered).",
    replaces=_REPLACES,
)
