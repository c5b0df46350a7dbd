"""transformers-missing-weights-init: initialise bf16/fp16 Linear weights themselves, not a copy.

Transformers 5.8.0 and 5.8.1 (regression from PR 45643) initialise Linear / Conv weights in
``PreTrainedModel._init_weights`` with ``init.normal_(module.weight.float(), mean=0.0, std=std)``.
For a float32 weight ``.float()`` is the weight itself; for a bfloat16 / float16 weight it is a
float32 COPY, which is initialised and thrown away: the weight is never written.

* ``from_pretrained(..., dtype=torch.bfloat16)`` of a causal-LM checkpoint into a model with a head
  the checkpoint lacks (``AutoModelForSequenceClassification`` / ``...TokenClassification`` ``score``,
  a reward / value head) leaves that head as the uninitialised memory it was allocated in: NaN,
  inf, 1e37 or zeros, whatever the allocator hands back. Training on it gives NaN gradients or a
  dead head. Biases are zeroed as usual, so only the weight is garbage.
* ``from_config(config, dtype=torch.bfloat16)`` leaves every Linear weight with torch's default
  ``kaiming_uniform_(a=sqrt(5))`` (std 1/sqrt(3 fan_in): 0.036 for fan_in 256) instead of
  normal(0, initializer_range).

The fix (upstream PR 46030, "Init the actual tensor, not a copy", released in 5.9.0) drops the
``.float()``. This patch wraps ``PreTrainedModel._init_weights`` and, for exactly the modules that
branch handles (``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d``, subclasses
included) whose weight is a floating-point tensor, runs the fixed branch instead of the original:
``init.normal_(module.weight, mean=0.0, std=std)`` then ``init.zeros_(module.bias)``, with ``std``
computed as the original computes it (asserted by the source fingerprint). Every other module goes
to the original unchanged. Model classes that override ``_init_weights`` and call
``super()._init_weights(module)`` reach the wrapper through ``super()``. Weights loaded from the
checkpoint carry ``_is_hf_initialized`` and are skipped by ``init.normal_``, as upstream.

Nothing heavy is imported at module level: torch and transformers only inside the wrapper and the
fingerprints, which run where transformers is already imported.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces

# The lines of 5.8.0/5.8.1's PreTrainedModel._init_weights that the wrapper reproduces (std and the
# Linear/Conv branch) or replaces (the buggy call), stripped of indentation.
_STD_LINES = (
    'if hasattr(self.config, "initializer_range"):',
    "std = self.config.initializer_range or 0.02",
    'elif hasattr(self.config, "init_std"):',
    "std = self.config.init_std",
    'elif hasattr(self.config, "initializer_factor"):',
    "std = self.config.initializer_factor",
    'std = getattr(self.config.get_text_config(), "initializer_range", 0.02)',
    "if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, "
    "nn.ConvTranspose2d)):",
    'if getattr(module, "weight", None) is not None:',
    "if module.bias is not None:",
    "init.zeros_(module.bias)",
)
_BUGGY_LINE = "init.normal_(module.weight.float(), mean=0.0, std=std)"
_FIXED_LINE = "init.normal_(module.weight, mean=0.0, std=std)"


def _source_lines(original):
    import inspect

    function = getattr(original, "__func__", original)
    return {line.strip() for line in inspect.getsource(function).splitlines()}


def _fixed(original):
    """Why this build already initialises the weight itself (a 5.8/5.9 dev build after PR 46030)."""
    lines = _source_lines(original)
    if _FIXED_LINE in lines and _BUGGY_LINE not in lines:
        return f"_init_weights calls `{_FIXED_LINE}` (transformers PR 46030)"
    return None


def _check(original):
    """Drift: the buggy call or the std / Linear-branch lines the wrapper reproduces changed."""
    lines = _source_lines(original)
    if _BUGGY_LINE not in lines:
        return f"_init_weights no longer calls `{_BUGGY_LINE}`"
    missing = [line for line in _STD_LINES if line not in lines]
    if missing:
        return f"_init_weights changed: lines the patch reproduces are gone: {missing}"
    return None


def init_std(config):
    """The std transformers 5.8's PreTrainedModel._init_weights uses for Linear / Conv weights."""
    if hasattr(config, "initializer_range"):
        return config.initializer_range or 0.02
    if hasattr(config, "init_std"):
        return config.init_std
    if hasattr(config, "initializer_factor"):
        return config.initializer_factor
    # 0.02 is the standard default value across the library
    return getattr(config.get_text_config(), "initializer_range", 0.02)


def _init_weights(wrapped, instance, args, kwargs):
    """PreTrainedModel._init_weights(self, module): the Linear / Conv branch as fixed in 5.9.0."""
    if instance is None:  # called on the class, self first
        if not args:
            return wrapped(*args, **kwargs)
        instance, rest = args[0], args[1:]
    else:
        rest = args
    if "module" in kwargs:
        module = kwargs["module"]
    elif rest:
        module = rest[0]
    else:
        return wrapped(*args, **kwargs)

    from torch import nn

    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                               nn.ConvTranspose2d)):
        return wrapped(*args, **kwargs)
    weight = getattr(module, "weight", None)
    if weight is not None and not weight.is_floating_point():
        # quantized storage: leave it to the original (upstream's normal_ would raise on it)
        return wrapped(*args, **kwargs)

    from transformers import initialization as init

    std = init_std(instance.config)
    if weight is not None:
        init.normal_(weight, mean=0.0, std=std)
    if module.bias is not None:
        init.zeros_(module.bias)
    return None


_REPLACES = Replaces(
    symbols=("transformers.modeling_utils:PreTrainedModel._init_weights",),
    copies=(
        Copy("axolotl-ai-cloud/axolotl", "src/axolotl/loaders/model.py",
             "ModelLoader._reinitialize_classification_head", commit="067b021c8b87",
             what="called from `_apply_post_model_load_setup` for `reward_model` / "
                  "`process_reward_model` configs, looks for a `score` / `classifier` Linear that is "
                  "non-finite, has |w| > 100 or is all zeros, and re-draws it with "
                  "`normal_(0, initializer_range)` and a zero bias. With this record applied, that "
                  "method and its call can be deleted; unlike it, the record also covers other heads "
                  "(token classification, value heads with other names), `from_config`, and heads "
                  "whose garbage happens to look plausible."),
        Copy("hiyouga/LlamaFactory", "pyproject.toml", commit="ff6d4d12eeb0",
             what="caps transformers at `<=5.8.0` (also in `src/llamafactory/extras/misc.py`, "
                  "`check_version`), which still admits the affected 5.8.0. With this record, "
                  "5.8.0 / 5.8.1 work; the cap is no substitute for the patch."),
    ),
    note="The field inventory of framework mirrors found no monkey-patch of `_init_weights` for this "
         "bug (\"bf16 head init\" is listed among the known items not found).",
)

PATCH = Patch(
    name="transformers-missing-weights-init",
    summary="initialise bf16/fp16 Linear weights missing from the checkpoint (reward / value / "
            "classification heads) and from_config Linear weights in transformers 5.8.0-5.8.1 "
            "instead of leaving uninitialised memory (NaN/inf) or torch's default init",
    upstream="https://github.com/huggingface/transformers/pull/46030",
    # Measured on 5.0.0, 5.3.0, 5.5.4, 5.6.0-5.6.2, 5.7.0, 5.8.0, 5.8.1, 5.9.0, 5.10.1, 5.24.0 (no 5.7-5.9
    # pre-releases exist on PyPI): only 5.8.0 and 5.8.1 are affected. The dev bounds keep source
    # installs of the 5.8/5.9 development cycles in range; the `fixed` fingerprint reports those that
    # predate PR 45643 or already carry PR 46030 `not-needed`. torch: transformers 5 builds no model
    # (and transformers.modeling_utils does not import) without torch >= 2.4 (its is_torch_available).
    affected={"transformers": ">=5.8.0.dev0,<=5.9.0.dev0", "torch": ">=2.4"},
    fixed_in="transformers 5.9.0",
    targets=(
        Target(
            "transformers.modeling_utils:PreTrainedModel._init_weights",
            wrapper=_init_weights,
            params=("self", "module"),
            check=_check,
            fixed=_fixed,
        ),
    ),
    differences="For a Linear / Conv module whose weight is not a floating-point tensor (quantized "
                "storage) the original 5.8 code runs unchanged (the fixed release would call "
                "normal_ on it and raise).",
    notes="No upstream regression test: PR 46030 changed one line of modeling_utils.py. Model "
          "classes whose own _init_weights never reaches PreTrainedModel._init_weights do not "
          "have the bug and are not touched.",
    replaces=_REPLACES,
)
