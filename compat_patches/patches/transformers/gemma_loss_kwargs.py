"""transformers-gemma-loss-kwargs: let Trainer hand `num_items_in_batch` to the Gemma multimodal classes.

``Trainer.__init__`` copies the model's class attribute ``accepts_loss_kwargs`` into
``self.model_accepts_loss_kwargs``. Where that is False, Trainer neither passes the accumulation
window's token count (``num_items_in_batch``) to ``forward`` nor counts it, and divides each
micro-batch's loss by the number of accumulation steps instead: the accumulated gradient is the mean
of per-micro-batch token means, not the token mean of the whole batch. That is only right for a
model whose loss cannot take the count. ``Gemma4ForConditionalGeneration`` (and the other classes in
CLASSES) declare ``accepts_loss_kwargs = False`` although their ``forward`` hands ``**kwargs``, the
count included, to ``self.loss_function`` (measured on every release from 5.6.0: with the flag set
True the gradient is the token-mean gradient to float32 rounding). The flag is a leftover of
Gemma3's old loss, which filtered logits by the attention mask and could not take the count; upstream
removed it from ``Gemma3ForConditionalGeneration`` in 5.17.0 together with that loss (the precedent).
Gemma4, Gemma4Unified and Gemma3n still carry it on 5.24.0 (the newest release measured).

The flag is a class attribute (a bool), read once per Trainer, so the patch wraps what reads it:
``Trainer.__init__``. After the original ``__init__`` it sets ``model_accepts_loss_kwargs = True``
on that Trainer when every one of these holds, and otherwise changes nothing:

* Trainer read False from the model (the deepspeed sequence-parallel override, which also sets
  False, is left alone);
* the model Trainer inspected (accelerate- and PEFT-unwrapped, as Trainer does) is an instance of a
  class whose ``accepts_loss_kwargs`` comes from one of CLASSES (a user subclass or an instance that
  sets the flag itself keeps its own value).

Reverting restores ``Trainer.__init__`` itself (``is``); Trainers built while the patch was applied
keep the corrected flag, as they would keep any argument they were built with. Nothing is written on
any model class or instance. Nothing heavy is imported at module level.
"""

from compat_patches.core import Patch, Target

# The classes whose declared `accepts_loss_kwargs = False` is stale (module, qualified name): from
# 5.6.0 their forward hands `num_items_in_batch` to `self.loss_function` (Gemma4Unified exists from
# 5.10.0). Before 5.6.0 their loss ignored the count (the flag was then right, or absent): the
# record's range starts at 5.6.0 for that reason.
CLASSES = frozenset({
    ("transformers.models.gemma4.modeling_gemma4", "Gemma4ForConditionalGeneration"),
    ("transformers.models.gemma4_unified.modeling_gemma4_unified", "Gemma4UnifiedForConditionalGeneration"),
    ("transformers.models.gemma3n.modeling_gemma3n", "Gemma3nForConditionalGeneration"),
})

_READS_FLAG = "self.model_accepts_loss_kwargs = unwrapped_model.accepts_loss_kwargs"


def _unwrapped(trainer):
    """The model Trainer.__init__ inspected: accelerate-unwrapped, then PEFT-unwrapped (as Trainer)."""
    from transformers.trainer_utils import unwrap_peft_model

    return unwrap_peft_model(trainer.accelerator.unwrap_model(trainer.model))


def _flag_owner(model):
    """The class in type(model).__mro__ whose body sets `accepts_loss_kwargs`, or None."""
    for klass in type(model).__mro__:
        if "accepts_loss_kwargs" in vars(klass):
            return klass
    return None


def stale_flag_class(model):
    """The (module, qualname) of CLASSES that gave `model` its stale False, or None.

    None when the instance sets the flag itself, when the flag comes from a class outside CLASSES
    (a user subclass that declares it), or when it is not False.
    """
    if "accepts_loss_kwargs" in getattr(model, "__dict__", {}):
        return None
    owner = _flag_owner(model)
    if owner is None or vars(owner)["accepts_loss_kwargs"] is not False:
        return None
    key = (owner.__module__, owner.__qualname__)
    return key if key in CLASSES else None


def _sequence_parallel_override(trainer):
    """Trainer itself sets the flag False under deepspeed sequence parallelism: keep that."""
    config = getattr(getattr(trainer, "accelerator", None), "parallelism_config", None)
    return (config is not None and getattr(config, "sp_backend", None) == "deepspeed"
            and bool(getattr(config, "sp_enabled", False)))


def grant_loss_kwargs(trainer):
    """Set `trainer.model_accepts_loss_kwargs = True` where the model's False is stale; True if set."""
    if getattr(trainer, "model_accepts_loss_kwargs", None) is not False:
        return False
    if _sequence_parallel_override(trainer):
        return False
    if stale_flag_class(_unwrapped(trainer)) is None:
        return False
    trainer.model_accepts_loss_kwargs = True
    return True


def _trainer_init(wrapped, instance, args, kwargs):
    """Trainer.__init__: run it, then correct `model_accepts_loss_kwargs` for CLASSES."""
    result = wrapped(*args, **kwargs)
    trainer = instance if instance is not None else (args[0] if args else None)
    if trainer is not None:
        grant_loss_kwargs(trainer)
    return result


def _reads_the_flag(original):
    """Drift: Trainer.__init__ must still copy the model's class attribute into its own flag."""
    import inspect

    source = inspect.getsource(original)
    if _READS_FLAG not in source:
        return f"Trainer.__init__ no longer contains {_READS_FLAG!r}"
    return None


PATCH = Patch(
    name="transformers-gemma-loss-kwargs",
    summary="pass num_items_in_batch to Gemma4 / Gemma4Unified / Gemma3n ForConditionalGeneration "
            "under gradient accumulation (their stale accepts_loss_kwargs=False gives a per-micro-batch "
            "mean gradient) in transformers >=5.6",
    upstream="",  # not fixed upstream; the precedent (Gemma3, 5.17.0) is on the docs page
    # Measured on every release 5.0.0rc0 - 5.24.0 (docs/patches/transformers-gemma-loss-kwargs.md):
    # the forward of each class uses the count from 5.6.0; not fixed on 5.24.0 (the newest).
    # torch and accelerate: Trainer cannot run without them (transformers 5 requires accelerate>=1.1.0).
    affected={"transformers": ">=5.6.0", "torch": ">=2.0", "accelerate": ">=1.1.0"},
    fixed_in=None,
    targets=(
        Target(
            "transformers.trainer:Trainer.__init__",
            wrapper=_trainer_init,
            check=_reads_the_flag,
        ),
    ),
    differences="Upstream's precedent (Gemma3, 5.17.0) deletes the class attribute; the patch leaves "
                "every model class untouched and sets the Trainer's own model_accepts_loss_kwargs after "
                "Trainer.__init__, for Trainer-based training only (a custom loop that reads the class "
                "attribute itself is not covered).",
    notes="Other multimodal classes carry the same stale flag (Qwen2.5-VL, Qwen3-VL, Qwen3.5, GLM-4V, "
          "...): not covered by this record; see its page.",
)
