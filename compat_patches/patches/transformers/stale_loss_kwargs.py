"""transformers-stale-loss-kwargs: let Trainer hand `num_items_in_batch` to the multimodal classes
that declare a stale ``accepts_loss_kwargs = False``.

``Trainer.__init__`` copies the model's class attribute ``accepts_loss_kwargs`` into
``self.model_accepts_loss_kwargs``. Where that is False, Trainer neither passes the accumulation
window's token count (``num_items_in_batch``) to ``forward`` nor counts it, and divides each
micro-batch's loss by the number of accumulation steps instead: the accumulated gradient is the mean
of per-micro-batch token means, not the token mean of the whole batch. That is only right for a
model whose loss cannot take the count. The classes in CLASSES declare ``accepts_loss_kwargs = False``
although, from the release given there, their ``forward`` hands ``**kwargs``, the count included, to
``self.loss_function`` (measured: with the flag set True the gradient is the token-mean gradient to
float32 rounding). The flag is a leftover of losses that could not take the count (Gemma3's filtered
loss, the VL classes' ``loss_function`` calls without ``**kwargs`` before 5.17); upstream removed it
from ``Gemma3ForConditionalGeneration`` in 5.17.0 together with that loss (the precedent), and left
it on the others.

The flag is a class attribute (a bool), read once per Trainer, so the patch wraps what reads it:
``Trainer.__init__``. After the original ``__init__`` it sets ``model_accepts_loss_kwargs = True``
on that Trainer when every one of these holds, and otherwise changes nothing:

* Trainer read False from the model (the deepspeed sequence-parallel override, which also sets
  False, is left alone);
* the model Trainer inspected (accelerate- and PEFT-unwrapped, as Trainer does) is an instance of a
  class whose ``accepts_loss_kwargs`` comes from one of CLASSES (a user subclass or an instance that
  sets the flag itself keeps its own value), on a transformers release from that class's first
  affected one.

Reverting restores ``Trainer.__init__`` itself (``is``); Trainers built while the patch was applied
keep the corrected flag, as they would keep any argument they were built with. Nothing is written on
any model class or instance. Nothing heavy is imported at module level.
"""

import sys

from compat_patches.core import Patch, Target
from compat_patches.core.versions import in_range, installed_version

# Each class and the first release whose `forward` hands the count to `self.loss_function` while the
# class declares `accepts_loss_kwargs = False` (read with `ast` in every wheel, measured with a Trainer
# step: docs/patches/transformers-stale-loss-kwargs.md). Before it the class did not exist or its loss
# ignored the count (the flag was right then); none is fixed on 5.24.0, the newest release. Not listed:
# PocketTTS / GradiumPhononTTS, whose flow-matching loss takes **kwargs but never reads the count.
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
}
CLASSES = {(f"transformers.models.{folder}.modeling_{folder}", name): first
           for folder, (name, first) in _FIRST_AFFECTED.items()}

_READS_FLAG = "self.model_accepts_loss_kwargs = unwrapped_model.accepts_loss_kwargs"


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
    if stale_flag_class(_unwrapped(trainer), installed_version("transformers")) is None:
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
    name="transformers-stale-loss-kwargs",
    summary="pass num_items_in_batch under gradient accumulation to the multimodal classes whose stale "
            "accepts_loss_kwargs=False gives a per-micro-batch mean gradient (Qwen2.5-VL, Qwen3-VL, "
            "Qwen3.5, GLM-4V, Gemma4, Gemma3n, ...: the page lists each class and its range)",
    upstream="",  # not fixed upstream; the precedent (Gemma3, 5.17.0) is on the docs page
    # The union of CLASSES' ranges (each class is checked against its own first release); measured
    # on the releases in docs/patches/transformers-stale-loss-kwargs.md, none fixed on 5.24.0.
    # torch and accelerate: Trainer cannot run without them (transformers 5 requires accelerate>=1.1.0).
    affected={"transformers": ">=5.0.0rc0", "torch": ">=2.0", "accelerate": ">=1.1.0"},
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
)
