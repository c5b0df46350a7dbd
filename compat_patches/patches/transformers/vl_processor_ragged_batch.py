"""transformers-vl-processor-ragged-batch: VL processors accept an unpadded ragged text batch again.

transformers 5.3.0 made ``return_mm_token_type_ids`` default to True in the Qwen2-VL, Qwen2.5-VL,
Qwen3-VL (also Qwen3.5 / Qwen3.5-MoE / Qwen3-VL-MoE, which use it), GLM-4.1V (also GLM-4.5V and
GLM-Image, which use it), GLM-4.6V and PaddleOCR-VL processors. Each ``__call__`` builds the
ids from the whole batch at once, ``np.array(text_inputs["input_ids"])``, so
``processor(text=[short, long])`` under the default ``padding=False`` raises
``ValueError: setting an array element with a sequence. The requested array has an inhomogeneous
shape after 1 dimensions``. 5.2.0 did not build the ids by default; 5.4.0 builds them one row at a
time (transformers PR 44563, ``ProcessorMixin.create_mm_token_type_ids`` and GLM's own).

The wrapper on each ``__call__`` resolves the call's text kwargs exactly as the call does
(``self._merge_kwargs`` with the processor's own kwargs class). Where ``return_mm_token_type_ids``
is off it calls the original untouched. Where it is on, it calls the original with it off (no
other argument changes), builds ``mm_token_type_ids`` row by row as 5.4.0 does, converts them
with the call's ``return_tensors`` through ``BatchFeature`` and puts the key where 5.4.0 has it:
after the tokenizer's keys, before the image and video keys. The result is the BatchFeature the
original returned, with that one key added.

Two more processors, each with its own range (``Target(..., versions=...)``):

* Gemma3 (``Gemma3Processor``) builds its default ``token_type_ids`` the same way, with
  ``np.array(text_inputs["input_ids"])``, in every 5.0 release from 5.0.0rc0 through 5.3.0; 5.4.0
  builds them row by row (the same PR 44563). Same wrapper, the key being ``token_type_ids``.
* Ernie-4.5-VL-MoE is not fixed upstream (through 5.25.0). From 5.0.0rc2 (the model's first
  release) through 5.15.1 its ``__call__`` builds ``mm_token_type_ids`` and
  ``moe_mm_token_type_ids`` with ``np.array(text_inputs["input_ids"])`` (the class is
  ``Ernie4_5_VL_MoeProcessor`` up to 5.2.0, ``Ernie4_5_VLMoeProcessor`` from 5.3.0): same wrapper,
  both keys built row by row. From 5.16.0 the ``__call__`` is ProcessorMixin's (row by row) plus
  ``create_moe_mm_token_type_ids(input_ids)``, which does ``np.array(input_ids)`` over the batch:
  that method is wrapped to run the original on one row at a time where it gets a list of rows
  (an unpadded batch; a padded one gives the same values either way).

Nothing heavy is imported at module level: numpy, inspect and sys come in inside the functions.
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces

_FLAG = "return_mm_token_type_ids"
# What a transformers tokenizer call can return (BatchEncoding keys), in addition to the
# tokenizer's model_input_names: the processors build their output as
# {**text_inputs, **image_inputs, **videos_inputs}, and 5.4.0 adds mm_token_type_ids to text_inputs.
_TOKENIZER_KEYS = frozenset({
    "input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "offset_mapping",
    "length", "overflowing_tokens", "num_truncated_tokens", "overflow_to_sample_mapping",
})


def qwen_row_types(processor, row):
    """One row's mm_token_type_ids as 5.4.0's ``ProcessorMixin.create_mm_token_type_ids`` builds it:
    0 text, 1 image token, 2 video token, 3 audio token (ids the processor lacks match nothing)."""
    import numpy as np

    ids = np.array(row)
    types = np.zeros_like(ids)
    types[np.isin(ids, [getattr(processor, "image_token_id", None)])] = 1
    types[np.isin(ids, [getattr(processor, "video_token_id", None)])] = 2
    types[np.isin(ids, [getattr(processor, "audio_token_id", None)])] = 3
    return types.tolist()


def glm_row_types(processor, row):
    """One row's mm_token_type_ids as 5.4.0's ``Glm4vProcessor`` / ``Glm46VProcessor``
    ``create_mm_token_type_ids`` builds it: GLM uses its image token for video frames too, so
    a token between <|begin_of_video|> and <|end_of_video|> is video (2), else image (1)."""
    import numpy as np

    ids = np.array(row)
    types = np.zeros_like(row)
    is_video = np.cumsum(ids == processor.video_start_id, axis=0) > np.cumsum(
        ids == processor.video_end_id, axis=0)
    types[(ids == processor.image_token_id) & is_video] = 2
    types[(ids == processor.image_token_id) & (~is_video)] = 1
    return types.tolist()


def ernie_row_types(processor, row):
    """One row's mm_token_type_ids as Ernie-4.5-VL-MoE's ``__call__`` (5.0.0rc2-5.15.1) builds them
    for a batch: 1 image token, 2 video token, 0 anything else."""
    import numpy as np

    ids = np.array(row)
    types = np.zeros_like(row)
    types[ids == processor.image_token_id] = 1
    types[ids == processor.video_token_id] = 2
    return types.astype(int).tolist()


def ernie_moe_row_types(processor, row):
    """One row's moe_mm_token_type_ids as the same ``__call__`` builds them: the mm types, plus the
    image start / end tokens as image (1) and the video start / end tokens as video (2)."""
    import numpy as np

    ids = np.array(row)
    types = np.array(ernie_row_types(processor, row), dtype=int)
    for token_id in (processor.image_start_token_id, processor.image_end_token_id):
        types[ids == token_id] = 1
    for token_id in (processor.video_start_token_id, processor.video_end_token_id):
        types[ids == token_id] = 2
    return types.astype(int).tolist()


def mm_token_type_ids(processor, input_ids, row_types):
    """mm_token_type_ids of a batch of rows of any lengths (lists, or an array / tensor)."""
    rows = input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids
    return [row_types(processor, row) for row in rows]


def _call_kwargs(wrapped, kwargs):
    """The **kwargs part of a call: `kwargs` without the named parameters (images, text, ...)."""
    import inspect

    named = {name for name, parameter in inspect.signature(wrapped).parameters.items()
             if parameter.kind is not inspect.Parameter.VAR_KEYWORD}
    return {key: value for key, value in kwargs.items() if key not in named}


def _with_flag_off(kwargs):
    """`kwargs` asking for no mm_token_type_ids, where the caller put the flag (the caller's dicts
    are not modified): a flag inside `text_kwargs` stays there (flat + dict raises upstream)."""
    kwargs = dict(kwargs)
    text_kwargs = kwargs.get("text_kwargs")
    if isinstance(text_kwargs, dict) and _FLAG in text_kwargs and _FLAG not in kwargs:
        kwargs["text_kwargs"] = dict(text_kwargs, **{_FLAG: False})
    else:
        kwargs[_FLAG] = False
    return kwargs


def _insert_after_text_keys(result, processor, value, key="mm_token_type_ids", after=()):
    """Put result[key] = value right after the leading tokenizer keys (and the keys `after`, put
    there before), as the original's ``text_inputs[key] = ...`` does; a key the tokenizer returned
    already (Gemma3's ``token_type_ids`` when the tokenizer returns them) is replaced where it is."""
    if key in result.data:
        result.data[key] = value
        return
    text_keys = _TOKENIZER_KEYS | set(getattr(processor.tokenizer, "model_input_names", ()) or ()) | set(after)
    items = list(result.data.items())
    position = 0
    while position < len(items) and items[position][0] in text_keys:
        position += 1
    items.insert(position, (key, value))
    result.data.clear()
    result.data.update(items)


def _make_wrapper(kwargs_class, row_types, keys=None):
    """The ``__call__`` wrapper. `keys`: ((output key, row builder), ...) in the order the original
    sets them; default (("mm_token_type_ids", row_types),)."""
    keys = tuple(keys or (("mm_token_type_ids", row_types),))

    def wrapper(wrapped, instance, args, kwargs):
        import sys

        processor = instance if instance is not None else (args[0] if args else None)
        try:
            options = processor._merge_kwargs(
                getattr(sys.modules[wrapped.__module__], kwargs_class),
                tokenizer_init_kwargs=processor.tokenizer.init_kwargs,
                **_call_kwargs(wrapped, kwargs),
            )["text_kwargs"]
        except Exception:
            # arguments the call itself rejects (or no processor): the original raises as it does
            return wrapped(*args, **kwargs)
        if not options.get(_FLAG):
            return wrapped(*args, **kwargs)
        result = wrapped(*args, **_with_flag_off(kwargs))
        if "input_ids" not in result:
            return result
        tensor_type = options.get("return_tensors")
        done = []
        for key, builder in keys:
            value = mm_token_type_ids(processor, result["input_ids"], builder)
            if tensor_type is not None:
                # converted as 5.4.0's BatchFeature(data={..., "mm_token_type_ids": list}) converts it
                value = type(result)({key: value}, tensor_type=tensor_type)[key]
            _insert_after_text_keys(result, processor, value, key, after=done)
            done.append(key)
        return result

    wrapper.__name__ = wrapper.__qualname__ = f"call_{row_types.__name__.split('_')[0]}"
    return wrapper


def _source(original):
    import inspect

    return inspect.getsource(original)


def _already_fixed(original):
    """5.4 development builds that carry PR 44563 call create_mm_token_type_ids."""
    if "create_mm_token_type_ids(" in _source(original):
        return "builds mm_token_type_ids with create_mm_token_type_ids (transformers PR 44563)"
    return None


def _fingerprint(kwargs_class, keys=("mm_token_type_ids",)):
    def check(original):
        source = _source(original)
        missing = [needle for needle in ("self._merge_kwargs(", f"{kwargs_class},",
                                         f'.pop("{_FLAG}"', 'np.array(text_inputs["input_ids"])',
                                         *(f'text_inputs["{key}"] = ' for key in keys),
                                         "BatchFeature(data={**text_inputs")
                   if needle not in source]
        if missing:
            return f"the source no longer contains {missing}"
        return None

    return check


def _target(module, cls, row_types, params=("self", "images", "text", "videos", "kwargs"),
            versions=None, keys=None):
    kwargs_class = f"{cls}Kwargs"
    keys = tuple(keys or (("mm_token_type_ids", row_types),))
    return Target(
        f"transformers.models.{module}.processing_{module}:{cls}.__call__",
        wrapper=_make_wrapper(kwargs_class, row_types, keys),
        params=params,
        check=_fingerprint(kwargs_class, tuple(key for key, _ in keys)),
        fixed=_already_fixed,
        versions=versions,
    )


def _rows(input_ids):
    """`input_ids` as a list of rows where it is a batch of rows given as a list / tuple (what
    ProcessorMixin's ``__call__`` hands over without return_tensors), else None."""
    if isinstance(input_ids, (list, tuple)) and input_ids and all(
            isinstance(row, (list, tuple)) or type(row).__name__ == "ndarray" for row in input_ids):
        return list(input_ids)
    return None


def call_moe_per_row(wrapped, instance, args, kwargs):
    """``create_moe_mm_token_type_ids(input_ids)`` on a list of rows: the original on one row at a
    time, its rows concatenated (a list of lists, as it returns for a list). Arrays and tensors
    (padded: return_tensors was given) go to the original untouched."""
    import inspect

    try:
        bound = inspect.signature(wrapped).bind(*args, **kwargs)
    except TypeError:
        return wrapped(*args, **kwargs)
    input_ids = bound.arguments.get("input_ids")
    rows = _rows(input_ids)
    if rows is None:
        return wrapped(*args, **kwargs)
    out = []
    for row in rows:
        bound.arguments["input_ids"] = [row]
        out.extend(wrapped(*bound.args, **bound.kwargs))
    return out


def _moe_fingerprint(original):
    source = _source(original)
    missing = [needle for needle in ("np.array(input_ids)", "moe_mm_token_type_ids", ".tolist()")
               if needle not in source]
    return f"the source no longer contains {missing}" if missing else None


def _moe_fixed(original):
    """An upstream fix that iterates the rows itself (as ProcessorMixin.create_mm_token_type_ids)."""
    if "np.array(input_ids)" not in _source(original) and "for " in _source(original):
        return "no longer makes one array of the whole batch (np.array(input_ids))"
    return None


# Per-class ranges. Measured: the six 5.2.0 fine (the ids are not built by default), 5.3.0 raises,
# 5.4.0 fixed; there is no rc of 5.3 or 5.4. `>=5.3.0.dev0` keeps source installs of the 5.3
# cycle in range, `<=5.4.0.dev0` those of the 5.4 cycle; a 5.4 build that already has the fix is
# recognised by its source (`fixed=`) and left alone.
QWEN_GLM_PADDLE = ">=5.3.0.dev0,<=5.4.0.dev0"
# Gemma3: the batch array in every release 5.0.0rc0-5.3.0 (read; measured 5.0.0, 5.3.0), row by
# row from 5.4.0 (PR 44563). 4.57.6 has the same code; transformers 4 is outside this package.
GEMMA3 = ">=5.0.0rc0,<=5.4.0.dev0"
# Ernie-4.5-VL-MoE (first in 5.0.0rc2): __call__ named Ernie4_5_VL_MoeProcessor up to 5.2.0,
# Ernie4_5_VLMoeProcessor 5.3.0-5.15.1 (same body), then create_moe_mm_token_type_ids from 5.16.0
# through 5.25.0 (newest, still affected). The renames are split at the .dev0 of the release
# that first has the new shape.
ERNIE_OLD_NAME = ">=5.0.0rc2,<5.3.0.dev0"
ERNIE_CALL = ">=5.3.0.dev0,<5.16.0.dev0"
ERNIE_METHOD = ">=5.16.0.dev0"
AFFECTED = ">=5.0.0rc0"

_REPLACES = Replaces(
    symbols=tuple(f"transformers.models.{module}.processing_{module}:{cls}.__call__"
                  for module, cls in (("qwen2_vl", "Qwen2VLProcessor"),
                                      ("qwen2_5_vl", "Qwen2_5_VLProcessor"),
                                      ("qwen3_vl", "Qwen3VLProcessor"), ("glm4v", "Glm4vProcessor"),
                                      ("glm46v", "Glm46VProcessor"),
                                      ("paddleocr_vl", "PaddleOCRVLProcessor"))),
    copies=tuple(
        Copy("huggingface/trl", path, commit="f2cd57710ae3", what=f"around line {line}")
        for path, line in (("trl/trainer/grpo_trainer.py", 1755), ("trl/trainer/rloo_trainer.py", 1160),
                           ("trl/experimental/gold/gold_trainer.py", 1720))
    ),
    note="These trl workarounds were added in trl PR 5503 and are guarded by "
         "`needs_padding_workaround = Version(\"5.3.0\") <= Version(transformers.__version__) < "
         "Version(\"5.4.0\")`. Each passes `padding=True` to `processing_class.apply_chat_template(...)` "
         "and then strips the pad tokens from `input_ids` by `attention_mask`. With this record "
         "applied, a user deletes the `needs_padding_workaround` flag, the "
         "`**({\"padding\": True} if needs_padding_workaround else {})` argument and the unpad branch, "
         "and keeps `prompt_ids = tokenized[\"input_ids\"]`. The field inventory found no hand patch "
         "of this bug in verl, ms-swift, LlamaFactory, axolotl or OpenRLHF, nor of the Gemma3 or "
         "Ernie-4.5-VL-MoE processors (trl's flag covers Gemma3 on 5.3.0 only). The scan finds the "
         "processors' `__call__` patched by hand; trl's inline branches are not patches it can see.",
)

PATCH = Patch(
    name="transformers-vl-processor-ragged-batch",
    summary="Qwen2-VL / Qwen2.5-VL / Qwen3-VL (Qwen3.5), GLM-4.1V / GLM-4.6V, PaddleOCR-VL (5.3), "
            "Gemma3 (5.0-5.3) and Ernie-4.5-VL-MoE (5.0.0rc2 onward) processors accept an unpadded "
            "ragged text batch (ValueError 'inhomogeneous shape' building the token type ids)",
    upstream="https://github.com/huggingface/transformers/pull/44563",
    # The union of the per-class ranges (QWEN_GLM_PADDLE, GEMMA3, ERNIE_*): open, Ernie is not
    # fixed upstream. Gemma3 and the six are fixed in 5.4.0 (their targets stop there).
    affected={"transformers": AFFECTED},
    verified_through={"transformers": "5.25.0"},
    fixed_in=None,
    targets=(
        _target("qwen2_vl", "Qwen2VLProcessor", qwen_row_types, versions=QWEN_GLM_PADDLE),
        _target("qwen2_5_vl", "Qwen2_5_VLProcessor", qwen_row_types, versions=QWEN_GLM_PADDLE),
        _target("qwen3_vl", "Qwen3VLProcessor", qwen_row_types, versions=QWEN_GLM_PADDLE),
        _target("glm4v", "Glm4vProcessor", glm_row_types, versions=QWEN_GLM_PADDLE),
        _target("glm46v", "Glm46VProcessor", glm_row_types, versions=QWEN_GLM_PADDLE),
        _target("paddleocr_vl", "PaddleOCRVLProcessor", qwen_row_types,
                params=("self", "images", "text", "kwargs"), versions=QWEN_GLM_PADDLE),
        # Gemma3's default token_type_ids: ProcessorMixin.create_mm_token_type_ids's types (image 1;
        # Gemma3 has no video or audio token), as 5.4.0 builds them
        _target("gemma3", "Gemma3Processor", qwen_row_types, params=("self", "images", "text", "kwargs"),
                versions=GEMMA3, keys=(("token_type_ids", qwen_row_types),)),
        _target("ernie4_5_vl_moe", "Ernie4_5_VL_MoeProcessor", ernie_row_types, versions=ERNIE_OLD_NAME,
                keys=(("mm_token_type_ids", ernie_row_types), ("moe_mm_token_type_ids", ernie_moe_row_types))),
        _target("ernie4_5_vl_moe", "Ernie4_5_VLMoeProcessor", ernie_row_types, versions=ERNIE_CALL,
                keys=(("mm_token_type_ids", ernie_row_types), ("moe_mm_token_type_ids", ernie_moe_row_types))),
        Target("transformers.models.ernie4_5_vl_moe.processing_ernie4_5_vl_moe:"
               "Ernie4_5_VLMoeProcessor.create_moe_mm_token_type_ids",
               wrapper=call_moe_per_row, params=("self", "input_ids"), check=_moe_fingerprint,
               fixed=_moe_fixed, versions=ERNIE_METHOD),
    ),
    upstream_tests=(),
    differences="Upstream rewrote each __call__ to call create_mm_token_type_ids; the patch "
                "wraps __call__ instead: it calls the original with return_mm_token_type_ids "
                "off and adds the ids it builds row by row (the same code as 5.4.0) where 5.4.0 "
                "puts them. The call's kwargs are resolved one more time (_merge_kwargs) to "
                "know whether the ids were asked for. Gemma3 (5.0.0rc0-5.3.x) is wrapped the same "
                "way, its key being token_type_ids. PR 44563 also changed about twenty other "
                "processors (LLaVA, InternVL, ...) whose ids are built only on request: not "
                "patched here (see the docs page). Ernie-4.5-VL-MoE has no upstream fix: its "
                "__call__ (up to 5.15.1) is wrapped the same way, both of its keys built row by "
                "row with its own batch code applied to one row; from 5.16.0 "
                "create_moe_mm_token_type_ids is called once per row on a list of rows.",
    notes="As in 5.4.0, a ragged batch with return_tensors='np' gives object arrays of rows and "
          "with 'pt' raises (tensors need padding=True). Per-class ranges: the six 5.3.x, Gemma3 "
          "5.0.0rc0-5.3.x, Ernie-4.5-VL-MoE 5.0.0rc2 onward (its __call__ up to 5.15.1, "
          "create_moe_mm_token_type_ids from 5.16.0; not fixed upstream, verified through 5.25.0). "
          "Not covered: an explicit return_mm_token_type_ids=True on 5.2.0 and older in the other "
          "processors.",
    replaces=_REPLACES,
)
