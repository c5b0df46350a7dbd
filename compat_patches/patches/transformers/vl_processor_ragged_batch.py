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


def _insert_after_text_keys(result, processor, value):
    """Put result['mm_token_type_ids'] = value right after the leading tokenizer keys."""
    text_keys = _TOKENIZER_KEYS | set(getattr(processor.tokenizer, "model_input_names", ()) or ())
    items = list(result.data.items())
    position = 0
    while position < len(items) and items[position][0] in text_keys:
        position += 1
    items.insert(position, ("mm_token_type_ids", value))
    result.data.clear()
    result.data.update(items)


def _make_wrapper(kwargs_class, row_types):
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
        value = mm_token_type_ids(processor, result["input_ids"], row_types)
        tensor_type = options.get("return_tensors")
        if tensor_type is not None:
            # converted as 5.4.0's BatchFeature(data={..., "mm_token_type_ids": list}) converts it
            value = type(result)({"mm_token_type_ids": value}, tensor_type=tensor_type)["mm_token_type_ids"]
        _insert_after_text_keys(result, processor, value)
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


def _fingerprint(kwargs_class):
    def check(original):
        source = _source(original)
        missing = [needle for needle in ("self._merge_kwargs(", f"{kwargs_class},",
                                         f'.pop("{_FLAG}"', 'np.array(text_inputs["input_ids"])',
                                         'text_inputs["mm_token_type_ids"] = ',
                                         "BatchFeature(data={**text_inputs")
                   if needle not in source]
        if missing:
            return f"the source no longer contains {missing}"
        return None

    return check


def _target(module, cls, row_types, params=("self", "images", "text", "videos", "kwargs")):
    kwargs_class = f"{cls}Kwargs"
    return Target(
        f"transformers.models.{module}.processing_{module}:{cls}.__call__",
        wrapper=_make_wrapper(kwargs_class, row_types),
        params=params,
        check=_fingerprint(kwargs_class),
        fixed=_already_fixed,
    )


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
         "of this bug in verl, ms-swift, LlamaFactory, axolotl or OpenRLHF. The scan finds the "
         "processors' `__call__` patched by hand; trl's inline branches are not patches it can see.",
)

PATCH = Patch(
    name="transformers-vl-processor-ragged-batch",
    summary="Qwen2-VL / Qwen2.5-VL / Qwen3-VL (Qwen3.5), GLM-4.1V / GLM-4.6V and PaddleOCR-VL "
            "processors accept an unpadded ragged text batch (transformers 5.3: ValueError "
            "'inhomogeneous shape' building mm_token_type_ids)",
    upstream="https://github.com/huggingface/transformers/pull/44563",
    # Measured: 5.2.0 fine (the ids are not built by default), 5.3.0 raises, 5.4.0 fixed; there is
    # no rc of 5.3 or 5.4. `>=5.3.0.dev0` keeps source installs of the 5.3 cycle in range,
    # `<=5.4.0.dev0` those of the 5.4 cycle; a 5.4 build that already has the fix is recognised by
    # its source (`fixed=`) and left alone.
    affected={"transformers": ">=5.3.0.dev0,<=5.4.0.dev0"},
    fixed_in="transformers 5.4.0",
    targets=(
        _target("qwen2_vl", "Qwen2VLProcessor", qwen_row_types),
        _target("qwen2_5_vl", "Qwen2_5_VLProcessor", qwen_row_types),
        _target("qwen3_vl", "Qwen3VLProcessor", qwen_row_types),
        _target("glm4v", "Glm4vProcessor", glm_row_types),
        _target("glm46v", "Glm46VProcessor", glm_row_types),
        _target("paddleocr_vl", "PaddleOCRVLProcessor", qwen_row_types,
                params=("self", "images", "text", "kwargs")),
    ),
    upstream_tests=(),
    differences="Upstream rewrote each __call__ to call create_mm_token_type_ids; the patch "
                "wraps __call__ instead: it calls the original with return_mm_token_type_ids "
                "off and adds the ids it builds row by row (the same code as 5.4.0) where 5.4.0 "
                "puts them. The call's kwargs are resolved one more time (_merge_kwargs) to "
                "know whether the ids were asked for. PR 44563 also changed about twenty other "
                "processors (LLaVA, Gemma3, InternVL, ...) whose ids are built only on request "
                "or by default since before 5.3.0: not patched here (see the docs page).",
    notes="As in 5.4.0, a ragged batch with return_tensors='np' gives object arrays of rows and "
          "with 'pt' raises (tensors need padding=True). Not covered (other ranges): Gemma3's "
          "default token_type_ids (raises on 5.2.0 and 5.3.0), Ernie-4.5-VL-MoE (still raises on "
          "5.4.0), and an explicit return_mm_token_type_ids=True on 5.2.0 and older.",
    replaces=_REPLACES,
)
