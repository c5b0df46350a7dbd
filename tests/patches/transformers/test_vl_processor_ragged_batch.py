"""transformers-vl-processor-ragged-batch on the real transformers releases.

`processor(text=[short, long])` (no padding, the processors' default) on the six processors that
build `mm_token_type_ids` by default with `np.array` over the whole batch. Measured without the
patch on every release from 5.2.0 to 5.4.0 (there is no rc in between): 5.2.0 returns no
mm_token_type_ids, 5.3.0 raises `ValueError: ... inhomogeneous shape ...`, 5.4.0 builds them row by
row (transformers PR 44563). Gemma3 (default token_type_ids, 5.0.0rc0-5.3.0) is in the same
comparison on 5.3.0; Gemma3 on the rest of its range and Ernie-4.5-VL-MoE (5.0.0rc2 onward, not
fixed upstream) are checked against each row alone through the unpatched processor.

The reference is the first fixed release itself: transformers 5.4.0's wheel is unpacked (once,
sha256-checked, into the artifact cache of tests/artifacts.py) and run in a child interpreter on the
very same processor files, and its output is compared with the patched 5.3.0 output field by field
(key order, types, dtypes, shapes, values, bytes). Where the download is impossible (offline) those
tests skip; the rest still run.

The processors are built here from files this module writes: a byte-level BPE tokenizer trained
with `tokenizers`, the model's image-processor config, no hub. Their text path calls neither the
image nor the video processor, so both are stand-ins (the real ones of 5.4.0 import torch, and the
video processors need torchvision): unconstructed instances of the classes the processor checks
them against (`ImageProcessingMixin` carrying the model's image-processor config, and
`BaseVideoProcessor`), so neither torch, torchvision nor Pillow is needed. One extra processor
(`qwen2_vl+images`) carries the real Qwen2-VL image processor, to check where the key lands between
the text and image keys; it needs Pillow, and torch for 5.4.0's image processor module. The chat
cases (`apply_chat_template`, what trl's GRPO / RLOO call) need jinja2.
"""

import base64
import json
import os
import pathlib
import subprocess
import sys

import pytest

import compat_patches
from compat_patches.core.versions import in_range
from compat_patches.patches.transformers import vl_processor_ragged_batch as mod

NAME = "transformers-vl-processor-ragged-batch"
AFFECTED = ">=5.0.0rc0"  # the record's: the union of the per-class ranges (Ernie is open)
SIX = ">=5.3.0.dev0,<=5.4.0.dev0"  # Qwen / GLM / PaddleOCR-VL, and Gemma3's last affected release
GEMMA3 = ">=5.0.0rc0,<=5.4.0.dev0"
ERNIE = ">=5.0.0rc2"
FIXED = ">5.4.0.dev0"  # the six and Gemma3
REFERENCE_VERSION = "5.4.0"  # the first fixed release: its output is what the patch must give

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    "<|begin_of_image|>", "<|end_of_image|>", "<|image|>", "<|video|>", "<|begin_of_video|>",
    "<|end_of_video|>", "<|IMAGE_START|>", "<|IMAGE_END|>", "<|IMAGE_PLACEHOLDER|>", "<|im_start|>",
    "<|im_end|>", "<start_of_image>", "<image_soft_token>", "<end_of_image>", "<|VIDEO_START|>",
    "<|VIDEO_END|>", "<|VIDEO_PLACEHOLDER|>",
]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                 "{{ c['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["a short text", "a much longer text with more words in it", "describe the picture",
          "what happens in this video"]
QWEN_IMAGE = {"min_pixels": 3136, "max_pixels": 12544, "patch_size": 14, "temporal_patch_size": 2,
              "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711]}
GLM_IMAGE = dict(QWEN_IMAGE, size={"shortest_edge": 3136, "longest_edge": 12544})
PADDLE_IMAGE = dict(QWEN_IMAGE, temporal_patch_size=1, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])

# placeholder strings of each family: image, video (GLM marks video frames with its image token)
QWEN = ("<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>")
GLM = ("<|begin_of_image|><|image|><|end_of_image|>", "<|begin_of_video|><|image|><|image|><|end_of_video|>")
PADDLE = ("<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>", None)
GEMMA = ("<start_of_image><image_soft_token><end_of_image>", None)
ERNIE_TOKENS = ("<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>",
                "<|VIDEO_START|><|VIDEO_PLACEHOLDER|><|VIDEO_END|>")
GEMMA_IMAGE = {"size": {"height": 896, "width": 896}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
ERNIE_IMAGE = dict(QWEN_IMAGE, temporal_patch_size=2)

PROCESSORS = {  # key -> processor module, class, image-processor config, placeholders, extra tokens
    "qwen2_vl": ("qwen2_vl", "Qwen2VLProcessor", QWEN_IMAGE, QWEN, {}),
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VLProcessor", QWEN_IMAGE, QWEN, {}),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLProcessor", QWEN_IMAGE, QWEN, {}),
    "glm4v": ("glm4v", "Glm4vProcessor", GLM_IMAGE, GLM, {}),
    "glm46v": ("glm46v", "Glm46VProcessor", GLM_IMAGE, GLM, {}),
    "paddleocr_vl": ("paddleocr_vl", "PaddleOCRVLProcessor", PADDLE_IMAGE, PADDLE,
                     {"image_token": "<|IMAGE_PLACEHOLDER|>"}),
    # its default token_type_ids (5.0.0rc0-5.3.0); 5.4.0 builds them as for the six
    "gemma3": ("gemma3", "Gemma3Processor", GEMMA_IMAGE, GEMMA,
               {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                "eoi_token": "<end_of_image>"}),
}
SIX_KEYS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "glm46v", "paddleocr_vl"]
TYPE_KEY = {"gemma3": "token_type_ids"}  # else mm_token_type_ids
# not fixed upstream, so no release to compare with: the oracle is each row alone, unpatched
OTHER_PROCESSORS = {
    "ernie": ("ernie4_5_vl_moe", "Ernie4_5_VLMoeProcessor", ERNIE_IMAGE, ERNIE_TOKENS,
              {"image_token": "<|IMAGE_PLACEHOLDER|>", "image_start_token": "<|IMAGE_START|>",
               "image_end_token": "<|IMAGE_END|>", "video_token": "<|VIDEO_PLACEHOLDER|>",
               "video_start_token": "<|VIDEO_START|>", "video_end_token": "<|VIDEO_END|>"}),
}
OLD_CLASS_NAMES = {"Ernie4_5_VLMoeProcessor": "Ernie4_5_VL_MoeProcessor"}  # up to 5.2.0
WITH_IMAGES = "qwen2_vl+images"  # qwen2_vl with its real image processor


def _texts(case, placeholders):
    image, video = placeholders
    video = video or image
    short, long = "a short text", "a much longer text with more words"
    return {
        "ragged": [short, long],
        "ragged_mm": [f"{image} {short}", f"{long} {video} {image}"],
        "equal": [short, short],
        "equal_mm": [f"{image} {short}", f"{image} {short}"],
        "single": f"{image} {long}",
        "three_ragged": [long, "", f"{video}{short}"],
        # Ernie's image / video start and end marks without a placeholder (moe types 1 and 2): what
        # releases that refuse placeholders without images (5.25.0) still accept
        "ragged_marks": [f"<|IMAGE_START|><|IMAGE_END|> {short}", f"{long} <|VIDEO_START|><|VIDEO_END|>"],
    }[case.split(":")[0]]


# case -> extra call kwargs; the text comes from the name before ":"
CASES = {
    "ragged": {},
    "ragged_mm": {},
    "three_ragged": {},
    "ragged_mm:flag_true": {"return_mm_token_type_ids": True},
    "ragged_mm:flag_in_text_kwargs": {"text_kwargs": {"return_mm_token_type_ids": True}},
    "ragged_mm:flag_false": {"return_mm_token_type_ids": False},
    "ragged_mm:return_np": {"return_tensors": "np"},  # object arrays of rows, as in 5.4.0
    "ragged_mm:return_pt": {"return_tensors": "pt"},  # raises (tensors need padding), as 5.4.0 does
    "equal": {},
    "equal_mm": {},
    "equal_mm:return_np": {"return_tensors": "np"},
    "single": {},
    "ragged_mm:padded": {"padding": True},
    "ragged_mm:padded_left": {"padding": True, "padding_side": "left"},
    "ragged_mm:padded_np": {"padding": True, "return_tensors": "np"},
    "ragged_mm:padded_pt": {"padding": True, "return_tensors": "pt"},
    "ragged_mm:max_length": {"padding": "max_length", "max_length": 24, "return_tensors": "np"},
    # what trl's GRPO / RLOO trainers call (they pass padding=True on 5.3 and unpad)
    "chat": {},
    "chat:padded": {"padding": True},
}
ROW_ONLY_CASES = {"ragged_marks": {}, "ragged_marks:padded": {"padding": True}}  # Gemma3 / Ernie tests only
# measured on 5.3.0 without the patch: the ValueError of np.array over a ragged batch
RAGGED = {"ragged", "ragged_mm", "three_ragged", "chat", "ragged_mm:flag_true",
          "ragged_mm:flag_in_text_kwargs", "ragged_mm:return_np", "ragged_mm:return_pt"}
IMAGE_CASES = {"ragged_mm": 2, "ragged_mm:padded_np": 2, "single": 1}


# ----- building the processors (here and in the 5.4.0 child) ----------------------------------

def write_processor_files(folder):
    """The tiny processors' files: tokenizer.json (BPE trained here) and one JSON per processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = pathlib.Path(folder)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    for key, (module, cls, image_config, _, extra) in {**PROCESSORS, **OTHER_PROCESSORS}.items():
        (folder / f"{key}.json").write_text(json.dumps(
            {"module": module, "class": cls, "image_processor": image_config, "extra_special_tokens": extra}))
    return folder


_UNEXPORTED = {"VideoProcessorMixin": "transformers.video_processing_utils"}


def _base_class(component):
    """The class the processor checks `component` against (isinstance), for an unconstructed
    stand-in: without Pillow / torchvision transformers exports dummies under these names, whose
    constructors raise. 5.24.0 and newer check the video processor against VideoProcessorMixin,
    which transformers exports only with torchvision: then the real class from its own module,
    returned with the name to export while the processor is built (see build_processor)."""
    import importlib

    import transformers
    from transformers.processing_utils import MODALITY_TO_BASE_CLASS_MAPPING

    name = MODALITY_TO_BASE_CLASS_MAPPING[component]
    if hasattr(transformers, name):
        return getattr(transformers, name), None
    try:
        return getattr(importlib.import_module(_UNEXPORTED[name]), name), name
    except (KeyError, ImportError, AttributeError):
        import pytest

        pytest.skip(f"transformers {transformers.__version__} cannot build these processors here: "
                    f"it checks the {component} against transformers.{name}, which it does not export "
                    "without torchvision")


def build_processor(folder, key):
    """Processor `key` from the files in `folder`, on the transformers imported here."""
    import importlib

    import transformers
    from transformers import PreTrainedTokenizerFast

    folder = pathlib.Path(folder)
    real_images = key == WITH_IMAGES
    spec = json.loads((folder / f"{key.split('+')[0]}.json").read_text())
    processor_module = importlib.import_module(f"transformers.models.{spec['module']}.processing_{spec['module']}")
    processor_class = getattr(processor_module, spec["class"], None) or getattr(
        processor_module, OLD_CLASS_NAMES[spec["class"]])
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        extra_special_tokens=spec["extra_special_tokens"])
    if real_images:  # the PIL image processor: its own class up to 5.3, the Pil backend from 5.4
        try:
            image_class = importlib.import_module(
                "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl").Qwen2VLImageProcessorPil
        except ImportError:
            image_module = importlib.import_module("transformers.models.qwen2_vl.image_processing_qwen2_vl")
            image_class = image_module.Qwen2VLImageProcessor
        image_processor = image_class(**spec["image_processor"])
    else:
        image_processor = object.__new__(_base_class("image_processor")[0])
        image_processor.__dict__.update(spec["image_processor"])
    components = {"tokenizer": tokenizer, "image_processor": image_processor}
    export = None
    if "video_processor" in processor_class.get_attributes():
        video_class, export = _base_class("video_processor")
        components["video_processor"] = object.__new__(video_class)
    if export is None:
        return processor_class(**components, chat_template=CHAT_TEMPLATE)
    # the name the constructor's isinstance check looks up, exported as torchvision would have it
    setattr(transformers, export, video_class)
    try:
        return processor_class(**components, chat_template=CHAT_TEMPLATE)
    finally:
        delattr(transformers, export)


def images(count):
    """`count` deterministic RGB images of different sizes (PIL)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    shapes = [(56, 84, 3), (56, 56, 3), (84, 56, 3)]
    return [Image.fromarray(rng.integers(0, 255, shapes[i], dtype=np.uint8)) for i in range(count)]


def _conversations(placeholders):
    def turn(role, text):
        return {"role": role, "content": [{"type": "text", "text": text}]}

    return [
        [turn("user", "a short text")],
        [turn("user", "a much longer text with more words"), turn("assistant", "describe the picture"),
         turn("user", f"{placeholders[0]} what happens in this video")],
    ]


def call(processor, key, case):
    placeholders = {**PROCESSORS, **OTHER_PROCESSORS}[key.split("+")[0]][3]
    kwargs = json.loads(json.dumps({**CASES, **ROW_ONLY_CASES}[case]))  # a fresh copy per call
    if case.startswith("chat"):
        return processor.apply_chat_template(_conversations(placeholders), add_generation_prompt=True,
                                             tokenize=True, return_dict=True, **kwargs)
    if key == WITH_IMAGES:
        kwargs["images"] = images(IMAGE_CASES[case])
    return processor(text=_texts(case, placeholders), **kwargs)


def describe(value):
    """A JSON-able, exact description: types, dtypes, shapes, bytes, key order."""
    import numpy as np

    kind = type(value).__name__
    if hasattr(value, "data") and hasattr(value, "keys") and isinstance(value.data, dict):
        return [kind, [[k, describe(v)] for k, v in value.data.items()]]
    if isinstance(value, dict):
        return [kind, [[k, describe(v)] for k, v in value.items()]]
    if isinstance(value, (list, tuple)):
        return [kind, [describe(v) for v in value]]
    if isinstance(value, np.ndarray) and value.dtype == object:  # a ragged batch under return_tensors="np"
        return [kind, "object", list(value.shape), [describe(v) for v in value.ravel().tolist()]]
    if isinstance(value, np.ndarray):
        return [kind, str(value.dtype), list(value.shape), base64.b64encode(value.tobytes()).decode()]
    if type(value).__module__.startswith("torch"):
        array = value.detach().cpu().numpy()
        return [kind, str(value.dtype), list(value.shape), base64.b64encode(array.tobytes()).decode()]
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return [kind, repr(value)]
    raise TypeError(f"cannot describe {kind}")


def outcome(fn):
    try:
        return ["returns", describe(fn())]
    except Exception as exc:  # the error is part of the behaviour compared
        return ["raises", type(exc).__name__, str(exc)]


def run_cases(folder, plan):
    """{key: {case: outcome}} for [(key, case)] on the transformers imported here."""
    processors, results = {}, {}
    for key, case in plan:
        if key not in processors:
            processors[key] = build_processor(folder, key)
        results.setdefault(key, {})[case] = outcome(lambda: call(processors[key], key, case))
    return results


def _reference_child(argv):
    """The child interpreter: `python this_file.py FOLDER PLAN_JSON` prints run_cases as JSON."""
    import transformers

    folder, plan = argv[1], json.loads(argv[2])
    print(json.dumps({"version": transformers.__version__, "results": run_cases(folder, plan)}))



# ----- pure: gate, row types, kwargs, key order (no transformers needed) ------------------------

@pytest.mark.parametrize("version, expected", [
    ("5.2.0", False), ("5.3.0.dev0", True), ("5.3.0", True), ("5.3.0+cu128", True), ("5.3.1", True),
    ("5.4.0.dev0", True), ("5.4.0.dev0+cu128", True), ("5.4.0rc0", False), ("5.4.0", False),
    ("5.24.0", False), ("4.57.6", False),
])
def test_gate(version, expected):
    """The six classes keep their range (now their targets' own)."""
    assert mod.PATCH.affected == {"transformers": AFFECTED}
    assert all(t.versions == SIX for t in mod.PATCH.targets[:6])
    assert in_range(version, SIX) is expected


_GEMMA, _ERNIE_OLD, _ERNIE_CALL, _ERNIE_METHOD = (
    "Gemma3Processor.__call__", "Ernie4_5_VL_MoeProcessor.__call__", "Ernie4_5_VLMoeProcessor.__call__",
    "Ernie4_5_VLMoeProcessor.create_moe_mm_token_type_ids")


@pytest.mark.parametrize("version, expected", [
    ("4.57.6", None), ("5.0.0rc0", {_GEMMA}), ("5.0.0rc1", {_GEMMA}), ("5.0.0rc2", {_GEMMA, _ERNIE_OLD}),
    ("5.0.0rc3", {_GEMMA, _ERNIE_OLD}), ("5.0.0", {_GEMMA, _ERNIE_OLD}), ("5.2.0+cu128", {_GEMMA, _ERNIE_OLD}),
    ("5.3.0.dev0", {"six", _GEMMA, _ERNIE_CALL}), ("5.3.0", {"six", _GEMMA, _ERNIE_CALL}),
    ("5.4.0.dev0", {"six", _GEMMA, _ERNIE_CALL}), ("5.4.0", {_ERNIE_CALL}), ("5.15.1", {_ERNIE_CALL}),
    ("5.16.0.dev0", {_ERNIE_METHOD}), ("5.16.0", {_ERNIE_METHOD}), ("5.25.0", {_ERNIE_METHOD}),
    ("5.26.0.dev0", {_ERNIE_METHOD}), ("6.0.0rc0", {_ERNIE_METHOD}),
])
def test_per_class_ranges(version, expected):
    """Which targets each release selects: the union has no gap, so the gate never drifts."""
    if expected is None:
        assert not in_range(version, AFFECTED)
        return
    assert in_range(version, AFFECTED)
    selected = {t.path.split(":")[1] for t in mod.PATCH.targets if in_range(version, t.versions)}
    six = {t.path.split(":")[1] for t in mod.PATCH.targets[:6]}
    if "six" in expected:
        expected = (expected - {"six"}) | six
    assert selected == expected
    assert mod.PATCH.verified_through == {"transformers": "5.25.0"} and mod.PATCH.fixed_in is None


def test_targets():
    assert [t.path.split(":")[1] for t in mod.PATCH.targets] == [
        "Qwen2VLProcessor.__call__", "Qwen2_5_VLProcessor.__call__", "Qwen3VLProcessor.__call__",
        "Glm4vProcessor.__call__", "Glm46VProcessor.__call__", "PaddleOCRVLProcessor.__call__",
        _GEMMA, _ERNIE_OLD, _ERNIE_CALL, _ERNIE_METHOD]
    assert all(t.versions and t.fixed is not None and t.check is not None for t in mod.PATCH.targets)
    assert len({t.wrapper for t in mod.PATCH.targets}) == len(mod.PATCH.targets)


class _Processor:
    image_token_id, video_token_id = 7, 8
    video_start_id, video_end_id = 5, 6


def test_row_types_are_per_row():
    numpy = pytest.importorskip("numpy")  # what the row builders use
    p = _Processor()
    rows = [[1, 7, 7, 2], [8], [], [3, 7, 8, 9, 8, 7]]
    assert mod.mm_token_type_ids(p, rows, mod.qwen_row_types) == [[0, 1, 1, 0], [2], [], [0, 1, 2, 0, 2, 1]]
    # GLM: its image token is video inside <|begin_of_video|> ... <|end_of_video|>
    rows = [[7, 5, 7, 7, 6, 7], [1, 5, 7], [7]]
    assert mod.mm_token_type_ids(p, rows, mod.glm_row_types) == [[1, 0, 2, 2, 0, 1], [0, 0, 2], [1]]
    padded = numpy.array([[1, 7, 8], [7, 0, 0]])
    assert mod.mm_token_type_ids(p, padded, mod.qwen_row_types) == [[0, 1, 2], [1, 0, 0]]
    without_video = type("P", (), {"image_token_id": 7})()  # PaddleOCR-VL: no video token
    assert mod.qwen_row_types(without_video, [7, 8, 0]) == [1, 0, 0]
    # Ernie: mm types (image 1, video 2); moe types add the start / end tokens of each modality
    ernie = type("E", (), {"image_token_id": 7, "video_token_id": 8, "image_start_token_id": 3,
                           "image_end_token_id": 4, "video_start_token_id": 5, "video_end_token_id": 6})()
    rows = [[1, 3, 7, 4, 2], [5, 8, 8, 6], [], [9]]
    assert mod.mm_token_type_ids(ernie, rows, mod.ernie_row_types) == [[0, 0, 1, 0, 0], [0, 2, 2, 0], [], [0]]
    assert mod.mm_token_type_ids(ernie, rows, mod.ernie_moe_row_types) == [
        [0, 1, 1, 1, 0], [2, 2, 2, 2], [], [0]]
    assert all(type(v) is int for row in mod.mm_token_type_ids(ernie, rows, mod.ernie_moe_row_types) for v in row)


def test_moe_method_runs_the_original_per_row():
    """The 5.16+ wrapper: a list of rows goes to the original one row at a time; anything else
    (an array, a tensor: a padded batch) goes to it untouched."""
    numpy = pytest.importorskip("numpy")
    calls = []

    def original(input_ids):  # the shape of create_moe_mm_token_type_ids: np.array over the batch
        calls.append(input_ids)
        return (numpy.array(input_ids) == 7).astype(int).tolist()

    assert mod.call_moe_per_row(original, None, ([[7, 1], [7]],), {}) == [[1, 0], [1]]
    assert calls == [[[7, 1]], [[7]]]
    padded = numpy.array([[7, 1], [7, 0]])
    assert mod.call_moe_per_row(original, None, (), {"input_ids": padded}) == [[1, 0], [1, 0]]
    assert calls[-1] is padded


def test_flag_is_turned_off_where_the_caller_put_it():
    flat = {"return_mm_token_type_ids": True, "padding": True}
    assert mod._with_flag_off(flat) == {"return_mm_token_type_ids": False, "padding": True}
    assert flat["return_mm_token_type_ids"] is True  # the caller's dict is not modified
    nested = {"text_kwargs": {"return_mm_token_type_ids": True}}
    assert mod._with_flag_off(nested) == {"text_kwargs": {"return_mm_token_type_ids": False}}
    assert nested == {"text_kwargs": {"return_mm_token_type_ids": True}}
    assert mod._with_flag_off({"text_kwargs": {"padding": True}}) == {
        "text_kwargs": {"padding": True}, "return_mm_token_type_ids": False}
    assert mod._with_flag_off({}) == {"return_mm_token_type_ids": False}


def test_key_goes_after_the_tokenizer_keys():
    class Result:
        def __init__(self, keys):
            self.data = {k: k for k in keys}

    processor = type("P", (), {"tokenizer": type("T", (), {"model_input_names": ["input_ids", "extra"]})()})()
    for keys, expected in [
        (["input_ids", "attention_mask"], ["input_ids", "attention_mask", "mm"]),
        (["input_ids", "attention_mask", "pixel_values", "image_grid_thw"],
         ["input_ids", "attention_mask", "mm", "pixel_values", "image_grid_thw"]),
        (["input_ids", "extra", "length", "pixel_values_videos"], ["input_ids", "extra", "length", "mm",
                                                                   "pixel_values_videos"]),
    ]:
        result = Result(keys)
        mod._insert_after_text_keys(result, processor, "mm")
        assert [k if k != "mm_token_type_ids" else "mm" for k in result.data] == expected
        assert result.data["mm_token_type_ids"] == "mm"


# ----- the real releases -----------------------------------------------------------------------

def _installed():
    import importlib.metadata

    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def _plan():
    keys = list(PROCESSORS) + [WITH_IMAGES]
    return [(key, case) for key in keys for case in CASES
            if (key != WITH_IMAGES or case in IMAGE_CASES)]


def _skip_reason(key, case):
    import importlib.util

    if case.startswith("chat") and importlib.util.find_spec("jinja2") is None:
        return "apply_chat_template needs jinja2"
    if case.endswith("pt") and importlib.util.find_spec("torch") is None:
        return "return_tensors='pt' needs torch"
    if key == WITH_IMAGES:
        if importlib.util.find_spec("PIL") is None:
            return "the real image processor needs Pillow"
        if importlib.util.find_spec("torch") is None:
            return "5.4.0's Qwen2-VL image processor module imports torch"
    return None


def _selected_targets():
    """The record's targets that the installed transformers selects (their own ranges)."""
    version = _installed()
    return [t for t in mod.PATCH.targets if in_range(version, t.versions)]


@pytest.fixture(scope="module")
def processor_files(tmp_path_factory):
    pytest.importorskip("tokenizers")
    return write_processor_files(tmp_path_factory.mktemp("vl_processors"))


def _reference_site():
    """transformers 5.4.0's wheel, sha256-checked and unpacked once (tests/artifacts.py); the child
    puts it first on its path and uses this venv's dependencies."""
    from ...artifacts import artifact_dir

    return artifact_dir("transformers", REFERENCE_VERSION, "wheel", None, wheel_tag="py3-none-any")


@pytest.fixture(scope="module")
def reference(processor_files):
    """What transformers 5.4.0 returns for every (processor, case) on the same files."""
    plan = [item for item in _plan() if _skip_reason(*item) is None]
    site = _reference_site()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("COMPAT_PATCHES_ONLY", None)
    proc = subprocess.run([sys.executable, __file__, str(processor_files), json.dumps(plan)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"] == REFERENCE_VERSION
    return out["results"]


@pytest.fixture(scope="module")
def processors(processor_files):
    """Processors by key, built once; every target module imported (the report says `applied`,
    not `deferred` waiting for the processor modules no test has imported yet)."""
    import importlib

    for target in _selected_targets():
        importlib.import_module(target.module)
    cache = {}

    def get(key):
        if key not in cache:
            cache[key] = build_processor(processor_files, key)
        return cache[key]

    return get


@pytest.mark.requires(transformers=SIX)
@pytest.mark.parametrize("key, case", _plan(), ids=[f"{k}-{c}" for k, c in _plan()])
def test_affected_release(key, case, processors, reference):
    reason = _skip_reason(key, case)
    if reason:
        pytest.skip(reason)
    processor = processors(key)

    # 1. without the patch: the measured row
    assert compat_patches.report()[NAME].status == "pending"
    unpatched = outcome(lambda: call(processor, key, case))
    if case in RAGGED:
        assert unpatched[:2] == ["raises", "ValueError"], unpatched
        assert "inhomogeneous shape" in unpatched[2]
    else:
        assert unpatched[0] == "returns", unpatched

    # 2. with the patch: exactly what transformers 5.4.0 returns for the same files and call
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME].reason
        patched = outcome(lambda: call(processor, key, case))
    assert compat_patches.report()[NAME].status == "pending"
    assert patched == reference[key][case]

    # 3. where the original worked (padded, equal lengths, flag off), the patch changes no bit
    if case not in RAGGED:
        assert patched == unpatched
    # 4. reverted: the bug is back
    if case in RAGGED:
        assert outcome(lambda: call(processor, key, case)) == unpatched


@pytest.mark.requires(transformers=AFFECTED)
def test_wraps_the_calls_and_reverts_exactly(processors):
    import importlib
    import inspect

    owners = []
    for target in _selected_targets():
        cls_name, attr = target.attribute.split(".")
        owners.append((getattr(importlib.import_module(target.module), cls_name), attr))
    before = [owner.__dict__[attr] for owner, attr in owners]
    signatures = [inspect.signature(getattr(owner, attr)) for owner, attr in owners]
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME].reason
        for (owner, attr), original, signature in zip(owners, before, signatures):
            assert owner.__dict__[attr] is not original
            assert inspect.signature(getattr(owner, attr)) == signature
    for (owner, attr), original in zip(owners, before):
        assert owner.__dict__[attr] is original


@pytest.mark.requires(transformers=AFFECTED)
def test_fingerprints_accept_this_release():
    import importlib

    assert _selected_targets()
    for target in _selected_targets():
        cls_name, attr = target.attribute.split(".")
        original = getattr(getattr(importlib.import_module(target.module), cls_name), attr)
        assert target.check(original) is None, target.path
        assert target.fixed(original) is None, target.path


@pytest.mark.requires(transformers=">=5.4.0,<5.5")
def test_fixed_fingerprint_recognises_the_upstream_fix():
    """A 5.4.0.dev0 source build (in range) that already has PR 44563 is left alone: 5.4.0's code."""
    import importlib

    targets = [t for t in mod.PATCH.targets if t.versions in (SIX, GEMMA3)]
    assert len(targets) == 7
    for target in targets:
        cls_name, attr = target.attribute.split(".")
        original = getattr(getattr(importlib.import_module(target.module), cls_name), attr)
        assert "create_mm_token_type_ids" in target.fixed(original), target.path


def _six_owners():
    import importlib

    owners = []
    for target in mod.PATCH.targets[:6]:
        cls_name, attr = target.attribute.split(".")
        owner = getattr(importlib.import_module(target.module), cls_name, None)
        if owner is not None:  # from 5.5 the call may be ProcessorMixin's own
            owners.append((owner, attr, getattr(owner, attr)))
    return owners


@pytest.mark.requires(transformers=">=5.2.0,<5.3.0.dev0")
@pytest.mark.parametrize("key", SIX_KEYS)
def test_release_before_the_regression(key, processors):
    """5.2: the ids are built only on request, so the default call accepts a ragged batch; the
    record applies here for Gemma3 and Ernie only and leaves the six alone."""
    owners = _six_owners()
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME].reason
        assert all(getattr(owner, attr) is original for owner, attr, original in owners)
    out = processors(key)(text=_texts("ragged_mm", PROCESSORS[key][3]))
    assert list(out.keys()) == ["input_ids", "attention_mask"]
    assert len({len(row) for row in out["input_ids"]}) == 2


@pytest.mark.requires(transformers=FIXED)
def test_fixed_release_leaves_the_six_and_gemma3_alone(processors):
    """Fixed for the six and Gemma3 (5.4.0): only Ernie's target is selected and installed."""
    import importlib

    owners = _six_owners()
    gemma = importlib.import_module("transformers.models.gemma3.processing_gemma3").Gemma3Processor
    owners.append((gemma, "__call__", gemma.__call__))
    assert len(owners) > 1
    ernie = mod.PATCH.targets[8] if in_range(_installed(), "<5.16.0.dev0") else mod.PATCH.targets[9]
    assert _selected_targets() == [ernie]
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME].reason
        assert all(getattr(owner, attr) is original for owner, attr, original in owners)
    assert all(getattr(owner, attr) is original for owner, attr, original in owners)


@pytest.mark.requires(transformers=FIXED)
@pytest.mark.parametrize("key", list(PROCESSORS))
def test_fixed_release_accepts_a_ragged_batch(key, processors):
    # plain text: from 5.5 PaddleOCR-VL refuses image placeholders without images
    out = processors(key)(text=_texts("ragged", PROCESSORS[key][3]))
    lengths = [len(row) for row in out["input_ids"]]
    assert len(set(lengths)) == 2
    assert out[TYPE_KEY.get(key, "mm_token_type_ids")] == [[0] * n for n in lengths]


# ----- Gemma3 on every release it is affected on, Ernie on every release (no upstream fix) --------
# The oracle: each row of the ragged batch alone, through the unpatched processor (a batch of one
# is never ragged), and the same batch padded.

ROW_RANGES = {"gemma3": GEMMA3, "ernie": ERNIE}
ROW_CASES = ["ragged", "ragged_mm", "ragged_marks", "three_ragged", "chat"]
PADDED_CASES = ["ragged_mm:padded", "ragged_mm:padded_left", "ragged_mm:padded_np", "ragged_mm:padded_pt",
                "ragged_mm:max_length", "ragged_marks:padded", "equal_mm", "single", "chat:padded"]
NO_IMAGES = ("but no images were passed", "but no videos were passed")  # refused from 5.24/5.25


def _skip_refused(result):
    if result[0] == "raises" and any(text in result[2] for text in NO_IMAGES):
        pytest.skip(f"transformers {_installed()} refuses image placeholders without images: {result[2]}")


def _row_skip(key, case):
    if not in_range(_installed(), ROW_RANGES[key]):
        pytest.skip(f"{key} is not affected on transformers {_installed()} ({ROW_RANGES[key]})")
    reason = _skip_reason(key, case)
    if reason:
        pytest.skip(reason)


def _alone(processor, key, case):
    """Each row of `case`, alone, through the processor as it is now."""
    placeholders = {**PROCESSORS, **OTHER_PROCESSORS}[key][3]
    if case.startswith("chat"):
        return [processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=True,
                                              return_dict=True) for conversation in _conversations(placeholders)]
    return [processor(text=[text]) for text in _texts(case, placeholders)]


@pytest.mark.parametrize("key", list(ROW_RANGES))
@pytest.mark.parametrize("case", ROW_CASES)
def test_ragged_batch_rows_equal_each_row_alone(key, case, processors):
    _row_skip(key, case)
    processor = processors(key)
    unpatched = outcome(lambda: call(processor, key, case))
    _skip_refused(unpatched)
    assert unpatched[:2] == ["raises", "ValueError"], unpatched
    assert "inhomogeneous shape" in unpatched[2]
    rows = _alone(processor, key, case)
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME].reason
        patched = call(processor, key, case)
    assert list(patched.keys()) == list(rows[0].keys())
    type_keys = [k for k in patched.keys() if k.endswith("token_type_ids")]
    assert type_keys == (["token_type_ids"] if key == "gemma3" else ["mm_token_type_ids", "moe_mm_token_type_ids"])
    for name in patched.keys():
        assert patched[name] == [row[name][0] for row in rows], name
    assert len({len(row) for row in patched["input_ids"]}) > 1
    assert outcome(lambda: call(processor, key, case)) == unpatched  # reverted: the bug is back


@pytest.mark.parametrize("key", list(ROW_RANGES))
@pytest.mark.parametrize("case", ["ragged_mm", "ragged_marks"])
def test_ragged_rows_equal_the_padded_batch(key, case, processors):
    """The same values as the batch code gives for the batch padded (right): row i cut to its length."""
    _row_skip(key, case)
    processor = processors(key)
    padded = outcome(lambda: call(processor, key, f"{case}:padded"))
    _skip_refused(padded)
    padded = call(processor, key, f"{case}:padded")
    with compat_patches.patched(NAME):
        patched = call(processor, key, case)
    for name in patched.keys():
        for i, row in enumerate(patched[name]):
            assert padded[name][i][:sum(padded["attention_mask"][i])] == row, name
    # there is something to type: image placeholders; for Ernie video ones and the start / end marks
    typed = "moe_mm_token_type_ids" if key == "ernie" else TYPE_KEY.get(key, "mm_token_type_ids")
    if case == "ragged_mm" or key == "ernie":
        assert {v for row in patched[typed] for v in row} >= {0, 1}


@pytest.mark.parametrize("key", list(ROW_RANGES))
@pytest.mark.parametrize("case", PADDED_CASES)
def test_calls_the_release_handles_are_bitwise_unchanged(key, case, processors):
    _row_skip(key, case)
    processor = processors(key)
    unpatched = outcome(lambda: call(processor, key, case))
    _skip_refused(unpatched)
    assert unpatched[0] == "returns", unpatched
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME].reason
        assert outcome(lambda: call(processor, key, case)) == unpatched

if __name__ == "__main__":
    _reference_child(sys.argv)
