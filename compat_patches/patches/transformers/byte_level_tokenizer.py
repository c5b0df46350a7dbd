"""transformers-byte-level-tokenizer: AutoTokenizer keeps a byte-level tokenizer.json labelled LlamaTokenizer(Fast).

DeepSeek-R1-Distill-Llama, DeepSeek-V3 / coder / math / prover and other Llama-3-style checkpoints
ship a byte-level BPE ``tokenizer.json`` (ByteLevel pre-tokenizer and decoder) while
``tokenizer_config.json`` says ``"tokenizer_class": "LlamaTokenizerFast"``. Transformers 5 makes
``LlamaTokenizer`` a SentencePiece-style class: its ``__init__`` takes only the vocabulary and merges
from the file and installs its own Metaspace pre-tokenizer and ``▁`` decoder. When ``AutoTokenizer``
picks that class for such a file, every space is lost at encode and at decode (``"How are you"`` ->
``'Howareyou'``) and the ids differ from the file's own ``tokenizers.Tokenizer``.

Where AutoTokenizer picks LlamaTokenizer (measured on every release, see the docs page):
5.0.0rc0 - 5.21.1 for a tokenizer-only folder (no ``config.json``); 5.0.0rc0, 5.0.0rc1 and
5.3.0 - 5.21.1 with a ``config.json`` of ``model_type`` llama (5.0.0rc2 - 5.2.0 sent the unregistered
``llama`` model type to ``TokenizersBackend``); with ``model_type`` deepseek_v3 on 5.0.0rc0, 5.0.0rc1,
5.3.0 and 5.6.0 - 5.6.2 (TokenizersBackend on the other releases).

The fix (transformers 5.22.0, ``AutoTokenizer.from_pretrained``): when the declared class is
LlamaTokenizer(Fast) and ``tokenizer.json`` contains ``"ByteLevel"``, load ``TokenizersBackend``
instead, which takes the whole file (normalizer, pre-tokenizer, model, post-processor, decoder) as
it is. This patch makes the same decision at the one place every affected release passes through:
``LlamaTokenizer.from_pretrained`` (inherited from ``PreTrainedTokenizerBase``; wrapped on
``LlamaTokenizer`` only) called by AutoTokenizer (``_from_auto=True``) for a folder / repository
whose ``tokenizer.json`` is byte-level returns ``TokenizersBackend.from_pretrained`` with the same
arguments: the object the fixed releases return. SentencePiece (Metaspace) Llama tokenizers and
direct ``LlamaTokenizer(Fast).from_pretrained`` calls are left exactly as transformers makes them.

Nothing heavy is imported here; the wrapper imports ``transformers.utils`` only when it decides.
"""

import sys

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces

_LLAMA_MODULE = "transformers.models.llama.tokenization_llama"
_BACKEND_MODULE = "transformers.tokenization_utils_tokenizers"
TOKENIZER_FILE = "tokenizer.json"
# The keyword arguments of from_pretrained that locate a file (what upstream hands to cached_file).
_LOCATE = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def tokenizer_json_is_byte_level(text):
    """Whether the text of a tokenizer.json declares a ByteLevel component: the 5.22.0 test, verbatim
    (``'"ByteLevel"' in`` the file), so this patch routes exactly the files the fixed releases route."""
    return '"ByteLevel"' in text


def _resolved_tokenizer_json(path, kwargs):
    """The local path of `path`'s tokenizer.json (downloaded / cached as transformers does), or None."""
    from transformers.utils import cached_file

    options = {key: kwargs[key] for key in _LOCATE if key in kwargs}
    return cached_file(
        path, TOKENIZER_FILE,
        _raise_exceptions_for_gated_repo=False,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **options,
    )


def _has_byte_level_tokenizer_json(path, kwargs):
    """Upstream's ``TokenizersBackend._tokenizer_json_has_byte_level``; False where it cannot tell
    (no tokenizer.json, offline, a single-file path, ...): the load then goes on unchanged."""
    try:
        resolved = _resolved_tokenizer_json(path, kwargs)
        if resolved is None:
            return False
        with open(resolved, encoding="utf-8") as reader:
            return tokenizer_json_is_byte_level(reader.read())
    except Exception:  # never break a load the original would have done
        return False


def _llama_tokenizer():
    module = sys.modules.get(_LLAMA_MODULE)
    return None if module is None else getattr(module, "LlamaTokenizer", None)


def _route_byte_level(wrapped, instance, args, kwargs):
    """``LlamaTokenizer.from_pretrained(pretrained_model_name_or_path, *init_inputs, **kwargs)``
    (a classmethod: `instance` is the class it is called on)."""
    if kwargs.get("_from_auto") and instance is not None and instance is _llama_tokenizer():
        path = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        if path is not None and _has_byte_level_tokenizer_json(str(path), kwargs):
            backend = sys.modules[_BACKEND_MODULE].TokenizersBackend
            return backend.from_pretrained(*args, **kwargs)
    return wrapped(*args, **kwargs)


def _carries_fix(original):
    """A build (a 5.22 development install) whose AutoTokenizer already routes byte-level files."""
    from compat_patches.core.source_check import defines

    if defines(f"{_BACKEND_MODULE}:TokenizersBackend._tokenizer_json_has_byte_level"):
        return "TokenizersBackend._tokenizer_json_has_byte_level exists (AutoTokenizer routes byte-level files)"
    return None


_REPLACES = Replaces(
    # not AutoTokenizer.from_pretrained: hand patches of it are other features (ms-swift hands a
    # ready tokenizer back), and the workarounds below act on the loaded tokenizer instead
    symbols=(_LLAMA_MODULE + ":LlamaTokenizer.from_pretrained",),
    copies=(
        Copy("NVIDIA/TensorRT-LLM", "tensorrt_llm/tokenizer", "maybe_fix_byte_level_tokenizer",
             what="(PR 12829, 13924, 14452) called after `AutoTokenizer.from_pretrained` in "
                  "`TransformersTokenizer.from_pretrained`, AutoDeploy's `init_tokenizer` and the "
                  "router's `BlockHashMixin._get_tokenizer`."),
    ),
    note="The field inventory of framework mirrors (2026-11-28) found no hand patch of this bug in "
         "verl, ms-swift, trl, axolotl, LlamaFactory, OpenRLHF, SkyRL, prime-rl, AReaL or slime "
         "(listed under \"known items that were not found\"). Other workarounds, which a user of "
         "this record can delete:\n\n"
         "- **verl#6080** (issue thread, user code): after `AutoTokenizer.from_pretrained`, reassign "
         "`tokenizer.backend_tokenizer.pre_tokenizer = ByteLevel(add_prefix_space=False)` and "
         "`.decoder = ByteLevel()`. That repairs only those two components (not the Llama-3 split of "
         "a `Sequence` pre-tokenizer, nor the BPE model that LlamaTokenizer rebuilt with its own "
         "options); the record loads the whole file as the fixed releases do.\n"
         "- **RBLN-SW/rbln-model-zoo PR 87**: loads DeepSeek-R1-Distill-Llama with "
         "`PreTrainedTokenizerFast.from_pretrained` instead of `AutoTokenizer`.\n"
         "- Hub-side: setting `\"tokenizer_class\": \"TokenizersBackend\"` (or "
         "`PreTrainedTokenizerFast`) in the checkpoint's `tokenizer_config.json`, which is what the "
         "5.22.0 warning asks for.",
)

PATCH = Patch(
    name="transformers-byte-level-tokenizer",
    summary="AutoTokenizer loads a byte-level BPE tokenizer.json labelled LlamaTokenizer(Fast) "
            "(DeepSeek-R1-Distill-Llama, DeepSeek-V3) with TokenizersBackend, as 5.22 does, instead "
            "of LlamaTokenizer's Metaspace (every space lost at encode and decode)",
    upstream="https://github.com/huggingface/transformers/issues/45488",
    # Measured on every release 5.0.0rc0 - 5.24.0 (docs page): AutoTokenizer sends such a file to
    # LlamaTokenizer on 5.0.0rc0 - 5.21.1 (which inputs trigger it varies, see the module docstring);
    # 5.22.0 and newer route it to TokenizersBackend. `<=5.22.0.dev0` keeps source installs of the
    # 5.22 cycle in range; those that already carry the fix report not-needed (`fixed=`).
    affected={"transformers": ">=5.0.0rc0,<=5.22.0.dev0"},
    fixed_in="transformers 5.22.0",
    targets=(
        Target(
            _LLAMA_MODULE + ":LlamaTokenizer.from_pretrained",
            wrapper=_route_byte_level,
            params=("cls", "pretrained_model_name_or_path", "init_inputs", "cache_dir",
                    "force_download", "local_files_only", "token", "revision",
                    "trust_remote_code", "kwargs"),
            fixed=_carries_fix,
        ),
    ),
    differences="Upstream (5.22.0) decides inside AutoTokenizer.from_pretrained, before any class is "
                "chosen, and only when tokenizer_config.json (or config.json) names "
                "LlamaTokenizer(Fast), no auto_map is declared and the model type is not a "
                "MistralCommonBackend one; it also logs a warning. The patch decides where AutoTokenizer "
                "has chosen LlamaTokenizer itself (LlamaTokenizer.from_pretrained called with "
                "_from_auto), whatever led there, with the same byte-level test on the same file, and "
                "logs nothing. Every path of the affected releases that reaches LlamaTokenizer with a "
                "LlamaTokenizer(Fast) label is covered; beyond upstream it also routes a byte-level "
                "file reached through an untrusted auto_map or a model type mapped to LlamaTokenizer "
                "(idefics, idefics2) without a label. Direct LlamaTokenizer(Fast).from_pretrained "
                "calls are left alone, as upstream leaves them (still Metaspace on 5.24.0).",
    replaces=_REPLACES,
)
