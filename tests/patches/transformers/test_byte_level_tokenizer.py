"""transformers-byte-level-tokenizer on the real transformers releases.

The tokenizer files are trained here with the `tokenizers` library (nothing from a hub):

* byte-level BPE, "plain" (ByteLevel pre-tokenizer with its own regex: GPT-2 / DeepSeek-V3 style) and
  "llama3" (Sequence[Split(Llama-3 regex), ByteLevel(use_regex=False)]: DeepSeek-R1-Distill-Llama
  style), ByteLevel decoder, BOS template post-processor;
* SentencePiece-style (Metaspace) Llama BPE with byte fallback: must be left exactly as transformers
  makes it.

Each folder holds tokenizer.json and tokenizer_config.json (``"tokenizer_class"``:
``LlamaTokenizerFast`` or ``LlamaTokenizer``, with or without ``add_prefix_space`` / ``legacy``),
and a config.json of model_type llama, of model_type deepseek_v3, or none (a tokenizer-only folder).

Every scenario was run without the patch on every transformers release 5.0.0rc0 ... 5.24.0;
BROKEN records where AutoTokenizer loses the spaces. On the installed release each test asserts that
measured row first, then that with the patch the tokenizer is the one the fixed releases (5.22.0+)
return: ``TokenizersBackend`` with the file's own pipeline, ids equal to the raw
``tokenizers.Tokenizer``, and decode round-trips.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

import compat_patches
from compat_patches.core import PatchManager
from compat_patches.core.versions import in_range, installed_version
from compat_patches.patches.transformers import byte_level_tokenizer as mod

NAME = "transformers-byte-level-tokenizer"
AFFECTED = ">=5.0.0rc0,<=5.22.0.dev0"

# (config.json, tokenizer.json style) -> releases where AutoTokenizer, unpatched, loads the byte-level
# file through LlamaTokenizer's Metaspace pipeline (spaces lost). Measured on every release
# 5.0.0rc0 - 5.24.0, the yanked 5.10.0 included; the label (LlamaTokenizerFast / LlamaTokenizer) and the
# add_prefix_space / legacy keys change nothing.
#  - model_type llama: 5.0.0rc2 - 5.2.0 send the unregistered `llama` model type to TokenizersBackend.
#  - no config.json: the tokenizer_config label alone decides: LlamaTokenizer on every release < 5.22.
#  - model_type deepseek_v3: TokenizersBackend on 5.0.0rc2 - 5.2.0, 5.4.0 - 5.5.4 and from 5.7.0.
#  - 5.0.0rc0's LlamaTokenizer still kept a Sequence pre-tokenizer: the llama3 style survives there.
BROKEN = {
    ("llama", "plain"): (">=5.0.0rc0,<5.0.0rc2", ">=5.3.0,<5.22.0.dev0"),
    ("llama", "llama3"): ("==5.0.0rc1", ">=5.3.0,<5.22.0.dev0"),
    (None, "plain"): (">=5.0.0rc0,<5.22.0.dev0",),
    (None, "llama3"): (">=5.0.0rc1,<5.22.0.dev0",),
    ("deepseek_v3", "plain"): (">=5.0.0rc0,<5.0.0rc2", "==5.3.*", "==5.6.*"),
    ("deepseek_v3", "llama3"): ("==5.0.0rc1", "==5.3.*", "==5.6.*"),
}
# Releases whose TokenizersBackend writes tokenizer_config.json's add_prefix_space into the ByteLevel
# pre-tokenizer (the fixed route then adds a prefix space there, with or without the patch).
PREFIX_SPACE_APPLIED = "==5.0.0rc0"
CONFIGS = ("llama", None, "deepseek_v3")
STYLES = ("plain", "llama3")
LABELS = ("LlamaTokenizerFast", "LlamaTokenizer")
KEYS = {"none": {}, "prefix_legacy": {"add_prefix_space": True, "legacy": True},
        "no_prefix_no_legacy": {"add_prefix_space": False, "legacy": False}}

CORPUS = ["How are you doing today?", "Hello world, this is a test.", "  leading spaces and\nnewlines\ttabs",
          "The quick brown fox jumps over the lazy dog.", "naïve café ℕ 数学 😀",
          "def f(x):\n    return x + 1"] * 20
TEXTS = ["How are you", "How are you doing  today?\nnaïve ℕ 数学 😀", "  two leading spaces",
         "def f(x):\n    return x + 1\n", "The quick brown fox."]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


# ----- the tokenizer files, trained here --------------------------------------------------------

def _byte_level_json(style):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    if style == "plain":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=[BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                                      special_tokens=[(BOS, tok.token_to_id(BOS))]),
    ])
    return tok.to_str()


def _metaspace_json():
    """A SentencePiece-style Llama tokenizer.json: BPE with byte fallback, Metaspace, `▁` decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok.to_str()


_JSON = {}


def _tokenizer_json(style):
    if style not in _JSON:
        _JSON[style] = _metaspace_json() if style == "metaspace" else _byte_level_json(style)
    return _JSON[style]


def write_folder(folder, *, style="plain", label="LlamaTokenizerFast", keys=None, model_type="llama"):
    """tokenizer.json (+ tokenizer_config.json, + config.json unless model_type is None) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(_tokenizer_json(style), encoding="utf-8")
    if style == "metaspace":
        config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    else:  # as DeepSeek-R1-Distill-Llama / DeepSeek-V3 ship it
        config = {"bos_token": BOS, "eos_token": EOS, "unk_token": None}
    config.update({"tokenizer_class": label, "add_bos_token": True, "add_eos_token": False,
                   "clean_up_tokenization_spaces": False, "model_max_length": 16384}, **(keys or {}))
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if model_type is not None:
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    return str(folder)


# ----- pure: the gate and the byte-level test (no transformers needed) -------------------------

@pytest.mark.parametrize("version, expected", [
    ("4.57.6", False), ("5.0.0.dev0", False), ("5.0.0rc0", True), ("5.0.0rc3", True), ("5.2.0", True),
    ("5.3.0", True), ("5.3.0+cu128", True), ("5.10.0", True), ("5.21.1", True), ("5.22.0.dev0", True),
    ("5.22.0rc0", False), ("5.22.0", False), ("5.22.2", False), ("5.24.0", False), ("6.0.0.dev0", False),
])
def test_gate(version, expected):
    assert mod.PATCH.affected == {"transformers": AFFECTED}
    assert in_range(version, mod.PATCH.affected["transformers"]) is expected


def test_byte_level_test_is_upstreams():
    pytest.importorskip("tokenizers")
    assert mod.tokenizer_json_is_byte_level(_tokenizer_json("plain"))
    assert mod.tokenizer_json_is_byte_level(_tokenizer_json("llama3"))
    assert not mod.tokenizer_json_is_byte_level(_tokenizer_json("metaspace"))


def test_wrapper_passes_through_everything_else():
    """Only LlamaTokenizer itself, called by AutoTokenizer, is ever re-routed."""
    calls = []

    def original(*args, **kwargs):
        calls.append((args, kwargs))
        return "original"

    class NotLlama:
        pass

    assert mod._route_byte_level(original, NotLlama, ("/nowhere",), {"_from_auto": True}) == "original"
    assert mod._route_byte_level(original, None, ("/nowhere",), {}) == "original"
    assert calls == [(("/nowhere",), {"_from_auto": True}), (("/nowhere",), {})]


# ----- the real releases -----------------------------------------------------------------------

@pytest.fixture
def neutral_dir():
    """An empty folder whose path names no model type. Up to 5.1.0, AutoConfig guesses the model type
    of a folder without config.json from its path (`"mt5" in "/tmp/tmp5mt5_29r"` -> MT5Config), which
    changes AutoTokenizer's choice: random temporary names (and pytest's, which carry the test name:
    `..._llama_...`) would make the tokenizer-only scenarios flaky."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    root = pathlib.Path(tempfile.gettempdir())
    number = os.getpid() * 1000
    while True:  # digits only: no model type is made of digits
        path = root / f"{number}"
        try:
            path.mkdir()
            break
        except FileExistsError:
            number += 1
    try:
        named = [model_type for model_type in CONFIG_MAPPING.keys() if model_type in str(path)]
        assert not named, f"the temporary folder {path} names model types {named}: set TMPDIR elsewhere"
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _version():
    return installed_version("transformers")


def _broken_here(model_type, style):
    return any(in_range(_version(), spec) for spec in BROKEN[(model_type, style)])


def _load(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _components(tok):
    """The backend pipeline as JSON, as the tokenizers library serializes it."""
    data = json.loads(tok.backend_tokenizer.to_str())
    return {key: data[key] for key in ("normalizer", "pre_tokenizer", "model", "post_processor", "decoder")}


def _fingerprint(tok):
    """Everything a training / inference loop gets from the tokenizer (compared bitwise)."""
    return {
        "class": type(tok).__name__,
        "backend": tok.backend_tokenizer.to_str(),
        "vocab": sorted(tok.get_vocab().items()),
        "len": len(tok),
        "special": {k: str(v) for k, v in tok.special_tokens_map.items()},
        "ids": [tok.encode(t) for t in TEXTS],
        "plain_ids": [tok.encode(t, add_special_tokens=False) for t in TEXTS],
        "decoded": [tok.decode(tok.encode(t, add_special_tokens=False)) for t in TEXTS],
        "batch": tok(TEXTS[:2])["input_ids"],
    }


def _set_prefix_space(node, value):
    """What 5.0.0rc0's TokenizersBackend does with `add_prefix_space` from tokenizer_config.json: write it
    into every pre-tokenizer (nested ones too) that has the field."""
    if isinstance(node, dict):
        if "add_prefix_space" in node:
            node["add_prefix_space"] = value
        for child in node.values():
            _set_prefix_space(child, value)
    elif isinstance(node, list):
        for child in node:
            _set_prefix_space(child, value)


def _raw(folder, keys=None):
    """The file's own tokenizers.Tokenizer (with the config's add_prefix_space where the release applies it)."""
    from tokenizers import Tokenizer

    data = json.loads((pathlib.Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    if keys and "add_prefix_space" in keys and in_range(_version(), PREFIX_SPACE_APPLIED):
        _set_prefix_space(data["pre_tokenizer"], keys["add_prefix_space"])
    return Tokenizer.from_str(json.dumps(data))


def _assert_faithful_to_file(tok, folder, keys=None, pipeline=True):
    """ids of the raw tokenizers.Tokenizer of the same file, decode round-trips, the file's pipeline."""
    raw = _raw(folder, keys)
    prefix_space = json.loads(raw.to_str()) != json.loads((pathlib.Path(folder) / "tokenizer.json").read_text("utf-8"))
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == raw.encode(text, add_special_tokens=False).ids
        assert tok.encode(text) == raw.encode(text).ids  # BOS from the file's post-processor
        assert tok.decode(ids) == raw.decode(ids)
        if not prefix_space:  # (with a prefix space the ByteLevel decoder gives it back: " How are you")
            assert tok.decode(ids) == text
            assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    if not prefix_space:
        assert tok.decode(tok.encode("How are you", add_special_tokens=False)) == "How are you"
    if pipeline:
        assert _components(tok) == {key: json.loads(raw.to_str())[key] for key in _components(tok)}


@pytest.mark.requires(transformers=AFFECTED)
@pytest.mark.parametrize("keys", sorted(KEYS))
@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("model_type", CONFIGS, ids=lambda m: f"config={m}")
def test_byte_level_file_on_affected_release(model_type, style, label, keys, neutral_dir):
    from transformers import TokenizersBackend

    folder = write_folder(neutral_dir, style=style, label=label, keys=KEYS[keys], model_type=model_type)

    # 1. without the patch: the measured row
    assert compat_patches.report()[NAME].status in ("pending", "deferred")
    unpatched = _load(folder)
    if _broken_here(model_type, style):
        assert type(unpatched).__name__ == "LlamaTokenizer"
        assert type(unpatched.backend_tokenizer.pre_tokenizer).__name__ == "Metaspace"
        assert unpatched.decode(unpatched.encode("How are you", add_special_tokens=False)) == "Howareyou"
        with pytest.raises(AssertionError):
            _assert_faithful_to_file(unpatched, folder, KEYS[keys])
    else:  # (5.0.0rc0's LlamaTokenizer keeps a Sequence pre-tokenizer but rebuilds the model)
        _assert_faithful_to_file(unpatched, folder, KEYS[keys], pipeline=type(unpatched).__name__ != "LlamaTokenizer")

    # 2. with the patch: what the fixed releases return (TokenizersBackend with the whole file)
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status in ("applied", "deferred"), report[NAME].reason
        patched = _load(folder)
        # deferred where AutoTokenizer never imported the Llama tokenizer module (nothing to fix there)
        imported = "transformers.models.llama.tokenization_llama" in sys.modules
        assert compat_patches.report()[NAME].status == ("applied" if imported else "deferred")
    assert compat_patches.report()[NAME].status == "pending"
    _assert_faithful_to_file(patched, folder, KEYS[keys])
    reference = TokenizersBackend.from_pretrained(folder)
    assert type(patched) is TokenizersBackend
    assert _fingerprint(patched) == _fingerprint(reference)
    if not _broken_here(model_type, style) and type(unpatched) is TokenizersBackend:
        assert _fingerprint(unpatched) == _fingerprint(patched)  # nothing changes where nothing was wrong

    # 3. reverted: the bug is back (the patch fixed it, nothing else did)
    if _broken_here(model_type, style):
        again = _load(folder)
        assert again.decode(again.encode("How are you", add_special_tokens=False)) == "Howareyou"


@pytest.mark.requires(transformers=AFFECTED)
def test_apply_all(neutral_dir):
    folder = write_folder(neutral_dir, style="plain", model_type=None)
    try:
        report = compat_patches.apply_all()
        assert report[NAME].status in ("applied", "deferred"), report[NAME].reason
        tok = _load(folder)
    finally:
        compat_patches.revert_all()
    _assert_faithful_to_file(tok, folder)
    assert compat_patches.report()[NAME].status == "pending"


@pytest.mark.requires(transformers=">=5.0.0rc0")
@pytest.mark.parametrize("model_type", CONFIGS, ids=lambda m: f"config={m}")
@pytest.mark.parametrize("label", LABELS)
def test_sentencepiece_llama_tokenizer_untouched(model_type, label, neutral_dir):
    """A real Metaspace Llama tokenizer: bitwise the same ids and pipeline with and without the patch."""
    folder = write_folder(neutral_dir, style="metaspace", label=label, model_type=model_type)
    unpatched = _load(folder)
    assert type(unpatched.backend_tokenizer.pre_tokenizer).__name__ == "Metaspace"
    assert unpatched.decode(unpatched.encode("How are you", add_special_tokens=False)) == "How are you"
    with compat_patches.patched(NAME):
        patched = _load(folder)
    assert _fingerprint(patched) == _fingerprint(unpatched)
    assert _components(patched) == _components(unpatched)


@pytest.mark.requires(transformers=AFFECTED)
def test_direct_llama_tokenizer_calls_untouched(neutral_dir):
    """Only AutoTokenizer is re-routed, as upstream: an explicit LlamaTokenizerFast.from_pretrained
    stays what transformers makes (Metaspace; still so on 5.24.0)."""
    from transformers import LlamaTokenizerFast

    folder = write_folder(neutral_dir, style="llama3")
    unpatched = LlamaTokenizerFast.from_pretrained(folder)
    with compat_patches.patched(NAME):
        patched = LlamaTokenizerFast.from_pretrained(folder)
    assert type(patched) is LlamaTokenizerFast
    assert _fingerprint(patched) == _fingerprint(unpatched)


@pytest.mark.requires(transformers=AFFECTED)
def test_wraps_only_llama_tokenizer_and_reverts_exactly():
    from transformers import LlamaTokenizer, TokenizersBackend
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    base = PreTrainedTokenizerBase.__dict__["from_pretrained"]
    assert "from_pretrained" not in LlamaTokenizer.__dict__
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied"
        assert "from_pretrained" in LlamaTokenizer.__dict__
        assert PreTrainedTokenizerBase.__dict__["from_pretrained"] is base
        assert "from_pretrained" not in TokenizersBackend.__dict__
    assert "from_pretrained" not in LlamaTokenizer.__dict__
    assert PreTrainedTokenizerBase.__dict__["from_pretrained"] is base


@pytest.mark.requires(transformers=AFFECTED)
def test_build_carrying_the_fix_is_not_needed():
    """A 5.22 development install whose AutoTokenizer already routes byte-level files."""
    from transformers import TokenizersBackend

    manager = PatchManager([mod.PATCH])
    TokenizersBackend._tokenizer_json_has_byte_level = staticmethod(lambda *a, **k: True)
    try:
        with manager.patched(NAME) as report:
            assert report[NAME].status == "not-needed"
            assert "already carries the upstream fix" in report[NAME].reason
    finally:
        del TokenizersBackend._tokenizer_json_has_byte_level
    with manager.patched(NAME) as report:
        assert report[NAME].status == "applied"


@pytest.mark.requires(transformers=">5.22.0.dev0")
@pytest.mark.parametrize("model_type", CONFIGS, ids=lambda m: f"config={m}")
@pytest.mark.parametrize("style", STYLES)
def test_fixed_release_not_needed_and_untouched(model_type, style, neutral_dir):
    from transformers import LlamaTokenizer, TokenizersBackend

    folder = write_folder(neutral_dir, style=style, model_type=model_type)
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed"
        assert "from_pretrained" not in LlamaTokenizer.__dict__
        tok = _load(folder)
    assert type(tok) is TokenizersBackend
    _assert_faithful_to_file(tok, folder)


DEFERRED_CHILD = r'''
import json, sys
import compat_patches
NAME = "transformers-byte-level-tokenizer"
folder = sys.argv[1]  # a byte-level tokenizer.json + tokenizer_config.json, no config.json
assert "transformers.models.llama.tokenization_llama" not in sys.modules
out = {}
with compat_patches.patched(NAME) as report:
    out["before_import"] = report[NAME].status
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    out["after_import"] = compat_patches.report()[NAME].status
out["class"] = type(tok).__name__
out["decoded"] = tok.decode(tok.encode("How are you", add_special_tokens=False))
unpatched = AutoTokenizer.from_pretrained(folder)
out["unpatched"] = unpatched.decode(unpatched.encode("How are you", add_special_tokens=False))
print(json.dumps(out))
'''


@pytest.mark.requires(transformers=AFFECTED)
def test_deferred_until_the_llama_tokenizer_is_imported(neutral_dir):
    """`with patched(...)` before transformers (or its Llama tokenizer module) is imported."""
    folder = write_folder(neutral_dir, style="plain", model_type=None)
    proc = subprocess.run([sys.executable, "-c", DEFERRED_CHILD, folder],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before_import"] == "deferred"
    assert out["after_import"] == "applied"
    assert out["class"] == "TokenizersBackend"
    assert out["decoded"] == "How are you"
    assert out["unpatched"] == "Howareyou"
