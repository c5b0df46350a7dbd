"""transformers-rope-ignore-keys on the real transformers releases.

Trigger A: a config hands `ignore_keys_at_rope_validation` to PretrainedConfig.__init__ as a LIST
(vLLM 0.17.0 - 0.18.1 Qwen3.5 configs). Trigger B: `from_dict` of a config dict whose field is a list
(JSON written by export tooling), then `convert_rope_params_to_dict()` again (transformers #46121).

Every scenario below was run, without the patch, on every transformers 5.x release on PyPI
(5.0.0rc0 ... 5.24.0, the yanked 5.10.0 included); FAILS records where it raised and with which
operator. On the installed release each test asserts that measured row first (so it fails if the
bug is not there where we say it is), then that the patch makes it pass with the rope_parameters the
newest transformers gives the same config built with a set.

vLLM's own files are not vendored: they are read, without importing vllm, from an installed
vllm 0.17/0.18, or from the vllm 0.18.0 wheel on PyPI (downloaded once, reduced to the two files,
cached: tests/artifacts.py), checked by sha256; offline those tests skip and the faithful minimal
mirror (MiniQwen35TextConfig below) still runs everywhere.
"""

import copy
import hashlib
import importlib.metadata
import importlib.util
import inspect
import pathlib

import pytest

import compat_patches
from compat_patches.core.versions import in_range
from compat_patches.patches.transformers import rope_ignore_keys as mod

from ...artifacts import artifact_dir

NAME = "transformers-rope-ignore-keys"
AFFECTED = ">=5.0.0rc0,<=5.10.0.dev0"
FIXED = ">5.10.0.dev0"

LIST_KEYS = ["mrope_section", "mrope_interleaved"]
ROPE = {"rope_type": "default", "rope_theta": 10000000.0, "mrope_section": [11, 11, 10],
        "mrope_interleaved": True}
SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16)

# What transformers 5.24.0 (newest) gives for these configs built with a set (measured; also
# asserted on the fixed releases by test_fixed_release_not_needed_and_untouched).
NEWEST_PRF = dict(ROPE, partial_rotary_factor=0.25)
NEWEST_NOPRF = dict(ROPE)

# scenario -> [(release range, operator of the TypeError)] measured without the patch.
# `|`: convert_rope_params_to_dict's union with {"partial_rotary_factor"};
# `-=`: _check_received_keys, reached from RoPE validation.
FAILS = {
    "A_mini_prf": [("==5.2.*", "|"), ("==5.4.*", "-=")],
    "A_mini_noprf": [(">=5.0.0rc0,<5.4", "-="), ("==5.4.*", "-=")],
    "A_vllm_dense": [("==5.2.*", "|"), ("==5.4.*", "-=")],
    "A_vllm_moe": [("==5.2.*", "|"), ("==5.4.*", "-=")],
    "A_native": [("==5.4.*", "-=")],  # 5.2/5.3's Qwen3_5TextConfig overwrites the kwarg with a set
    "B_native": [("==5.4.*", "-="), (">=5.5,<5.10", "|")],
    "B_vllm": [("==5.2.*", "|"), ("==5.4.*", "-="), (">=5.5,<5.10", "|")],
}
VLLM_SHA256 = {  # identical in vLLM 0.17.0, 0.18.0 and 0.18.1 (0.19.0 passes a set)
    "qwen3_5.py": "778370a2e0e28691620a43865863f1abfe6b3e35a14f80bf2de519f529c9896e",
    "qwen3_5_moe.py": "b7ce572ba0654e785ebd50e252be79c65af7a088745f4ff401597bf04c1c2fd4",
}
VLLM_WITH_LIST = ">=0.17.0,<0.19.0"
VLLM_CONFIG_FILES = tuple(f"vllm/transformers_utils/configs/{name}" for name in VLLM_SHA256)


# ----- pure: gate, target shapes, the coercion (no transformers needed) -----------------------

@pytest.mark.parametrize("version, expected", [
    ("4.57.6", False), ("5.0.0.dev0", False), ("5.0.0rc0", True), ("5.0.0rc3", True),
    ("5.0.0", True), ("5.3.0+cu128", True), ("5.4.0", True), ("5.9.0", True),
    ("5.10.0.dev0", True), ("5.10.0.dev0+cu128", True), ("5.10.0", False), ("5.10.1", False),
    ("5.24.0", False), ("6.0.0.dev0", False),
])
def test_gate(version, expected):
    assert mod.PATCH.affected == {"transformers": AFFECTED}
    assert in_range(version, mod.PATCH.affected["transformers"]) is expected


@pytest.mark.parametrize("version, wrappers", [
    ("5.0.0rc0", {"_convert_keyword", "_check_received_keys"}),
    ("5.3.0", {"_convert_keyword", "_check_received_keys"}),
    ("5.3.0+cu128", {"_convert_keyword", "_check_received_keys"}),
    ("5.4.0.dev0", {"_convert_attribute", "_check_received_keys"}),
    ("5.4.0", {"_convert_attribute", "_check_received_keys"}),
    ("5.5.0.dev0", {"_convert_attribute", "_check_received_keys"}),
    ("5.5.0", {"_convert_attribute"}),
    ("5.9.0", {"_convert_attribute"}),
    ("5.10.0.dev0", {"_convert_attribute"}),
])
def test_target_shape_by_version(version, wrappers):
    chosen = [t for t in mod.PATCH.targets if t.versions is None or in_range(version, t.versions)]
    assert {t.wrapper.__name__ for t in chosen} == wrappers
    assert len({t.path for t in chosen}) == len(chosen)  # one shape per attribute


def test_as_key_set():
    assert mod.as_key_set(None) is None
    keys = {"a"}
    assert mod.as_key_set(keys) is keys
    frozen = frozenset({"a"})
    assert mod.as_key_set(frozen) is frozen
    assert mod.as_key_set(["a", "b", "a"]) == {"a", "b"}
    assert mod.as_key_set(("a",)) == {"a"}


def test_wrappers_coerce_only_the_keys():
    seen = {}

    def convert(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return kwargs

    cfg = object()
    mod._convert_keyword(convert, cfg, (), {"ignore_keys_at_rope_validation": ["x"], "rope_theta": 1})
    assert seen["kwargs"] == {"ignore_keys_at_rope_validation": {"x"}, "rope_theta": 1}
    mod._convert_keyword(convert, cfg, (("x",),), {})
    assert seen["args"] == ({"x"},)
    mod._convert_keyword(convert, None, (cfg, ["x"]), {})  # unbound call: self first
    assert seen["args"] == (cfg, {"x"})
    mod._convert_keyword(convert, cfg, (), {"ignore_keys_at_rope_validation": None})
    assert seen["kwargs"]["ignore_keys_at_rope_validation"] is None

    mod._check_received_keys(convert, None, ("default", {"a"}, set()), {"ignore_keys": ["a"]})
    assert seen["kwargs"] == {"ignore_keys": {"a"}}
    mod._check_received_keys(convert, None, ("default", {"a"}, set(), None, ["a"]), {})
    assert seen["args"] == ("default", {"a"}, set(), None, {"a"})

    class Config:
        ignore_keys_at_rope_validation = ["class", "level"]

    class_value = Config.__dict__["ignore_keys_at_rope_validation"]
    on_class, on_instance = Config(), Config()
    on_instance.ignore_keys_at_rope_validation = ["x"]
    mod._convert_attribute(convert, on_instance, (), {})
    assert on_instance.ignore_keys_at_rope_validation == {"x"}
    mod._convert_attribute(convert, on_class, (), {})
    assert on_class.__dict__["ignore_keys_at_rope_validation"] == {"class", "level"}
    assert Config.__dict__["ignore_keys_at_rope_validation"] is class_value  # class untouched
    already = {"y"}
    on_instance.ignore_keys_at_rope_validation = already
    mod._convert_attribute(convert, on_instance, (), {})
    assert on_instance.ignore_keys_at_rope_validation is already


# ----- the real releases -----------------------------------------------------------------------

def _transformers_version():
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def _expected_failure(scenario):
    """The operator this scenario fails with on the installed release (measured), or None."""
    version = _transformers_version()
    for spec, op in FAILS[scenario]:
        if in_range(version, spec):
            return op
    return None


def _root(exc):
    while exc.__cause__ is not None:  # 5.4's StrictDataclassClassValidationError wraps the TypeError
        exc = exc.__cause__
    return exc


def _mini_config_class(ignore_keys):
    """The lines of vLLM 0.18.0 qwen3_5.py that matter: a list handed to PretrainedConfig.__init__."""
    from transformers.configuration_utils import PretrainedConfig

    class MiniQwen35TextConfig(PretrainedConfig):
        model_type = "mini_qwen3_5_text"

        def __init__(self, rope_parameters=None, head_dim=16, num_hidden_layers=4, with_prf=True,
                     **kwargs):
            kwargs["ignore_keys_at_rope_validation"] = copy.copy(ignore_keys)
            self.head_dim = head_dim
            self.num_hidden_layers = num_hidden_layers
            self.rope_parameters = rope_parameters
            if with_prf:
                kwargs.setdefault("partial_rotary_factor", 0.25)
            super().__init__(**kwargs)

    return MiniQwen35TextConfig


@pytest.fixture(scope="module")
def vllm_configs(tmp_path_factory):
    """vLLM 0.18.0's qwen3_5 / qwen3_5_moe config modules, loaded from their files (vllm not imported)."""
    sources, where = {}, None
    try:
        dist = importlib.metadata.distribution("vllm")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None and in_range(dist.version, VLLM_WITH_LIST):
        where = f"installed vllm {dist.version}"
        for name in VLLM_SHA256:
            sources[name] = pathlib.Path(dist.locate_file(f"vllm/transformers_utils/configs/{name}")).read_bytes()
    else:
        where = "the vllm 0.18.0 wheel on PyPI"
        folder = artifact_dir("vllm", "0.18.0", "wheel", VLLM_CONFIG_FILES, wheel_tag="cp38-abi3-manylinux")
        for name in VLLM_SHA256:
            sources[name] = (folder / "vllm/transformers_utils/configs" / name).read_bytes()
    folder = tmp_path_factory.mktemp("vllm_configs")
    modules = {}
    for name, data in sources.items():
        assert hashlib.sha256(data).hexdigest() == VLLM_SHA256[name], f"{name} from {where} is not 0.18.0's"
        path = folder / name
        path.write_bytes(data)
        spec = importlib.util.spec_from_file_location(f"_vllm_0_18_{name[:-3]}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)  # imports only transformers.configuration_utils
        except ImportError as exc:
            pytest.skip(f"vLLM 0.18's config module does not import on this transformers: {exc}")
        modules[name[:-3]] = module
    return modules


def _scenario(name, request):
    """A zero-argument callable building the config of `name` (with a list) and the set reference."""
    import transformers

    if name in ("A_mini_prf", "A_mini_noprf"):
        prf = name == "A_mini_prf"
        as_list, as_set = _mini_config_class(LIST_KEYS), _mini_config_class(set(LIST_KEYS))
        return (lambda: as_list(rope_parameters=copy.deepcopy(ROPE), with_prf=prf),
                lambda: as_set(rope_parameters=copy.deepcopy(ROPE), with_prf=prf))
    if name in ("A_native", "B_native"):
        native = getattr(transformers, "Qwen3_5TextConfig", None)
        if native is None:
            pytest.skip("this transformers has no Qwen3_5TextConfig (added in 5.2.0)")
        if name == "A_native":
            def build(keys):
                return lambda: native(rope_parameters=copy.deepcopy(ROPE),
                                      ignore_keys_at_rope_validation=copy.copy(keys), **SMALL)
            return build(LIST_KEYS), build(set(LIST_KEYS))
        cls = native
    else:
        vllm = request.getfixturevalue("vllm_configs")
        if name == "A_vllm_dense":
            cls = vllm["qwen3_5"].Qwen3_5TextConfig
        elif name == "A_vllm_moe":
            cls = vllm["qwen3_5_moe"].Qwen3_5MoeTextConfig
        else:
            cls = vllm["qwen3_5"].Qwen3_5TextConfig
        if name.startswith("A_"):
            def reference():  # vLLM always passes its list: the set reference is transformers' own class
                ref = getattr(transformers, "Qwen3_5TextConfig", None)
                return None if ref is None else ref(rope_parameters=copy.deepcopy(ROPE), **SMALL)
            return (lambda: cls(rope_parameters=copy.deepcopy(ROPE), **SMALL)), reference

    def from_dict(keys):  # trigger B
        def build():
            cfg = cls.from_dict(dict(SMALL, rope_parameters=copy.deepcopy(ROPE), partial_rotary_factor=0.25,
                                     ignore_keys_at_rope_validation=copy.copy(keys)))
            cfg.convert_rope_params_to_dict()
            return cfg
        return build
    return from_dict(LIST_KEYS), (from_dict(set(LIST_KEYS)) if name == "B_native" else (lambda: None))


def _newest(name):
    return NEWEST_NOPRF if name == "A_mini_noprf" else NEWEST_PRF


@pytest.mark.requires(transformers=AFFECTED)
@pytest.mark.parametrize("mode", ["patched", "apply_all"])
@pytest.mark.parametrize("name", sorted(FAILS))
def test_trigger_on_affected_release(name, mode, request):
    build, reference = _scenario(name, request)
    op = _expected_failure(name)

    # 1. without the patch: the measured row of the table
    assert compat_patches.report()[NAME].status == "pending"
    if op is None:
        unpatched = build().rope_parameters
    else:
        with pytest.raises(Exception) as info:
            build()
        root = _root(info.value)
        assert isinstance(root, TypeError), repr(info.value)
        assert f"unsupported operand type(s) for {op}:" in str(root)

    # 2. with the patch
    if mode == "patched":
        with compat_patches.patched(NAME) as report:
            assert report[NAME].status == "applied", report[NAME].reason
            cfg = build()
    else:
        try:
            report = compat_patches.apply_all()
            assert report[NAME].status == "applied", report[NAME].reason
            cfg = build()
        finally:
            compat_patches.revert_all()
    assert compat_patches.report()[NAME].status == "pending"

    # 3. the same rope_parameters as the same config given a set: here, and on the newest release
    expected = _newest(name)
    assert cfg.rope_parameters == expected
    ref = reference()
    if ref is not None:
        assert ref.rope_parameters == expected
    if op is None:  # where the list did not break, the patch changes nothing
        assert unpatched == cfg.rope_parameters
    keys = getattr(cfg, "ignore_keys_at_rope_validation", None)
    if keys is not None and in_range(_transformers_version(), ">=5.4.0.dev0"):
        assert set(LIST_KEYS) <= set(keys)

    # 4. reverted: the bug is back (the patch fixed it, nothing else did)
    if op is not None:
        with pytest.raises(Exception):
            build()


DEFERRED_CHILD = r'''
import json, sys
import compat_patches
NAME = "transformers-rope-ignore-keys"
assert "transformers" not in sys.modules
out = {}

def build():  # what vLLM 0.18 does when the engine is created: transformers is imported inside
    from transformers.configuration_utils import PretrainedConfig

    class Mini(PretrainedConfig):
        model_type = "mini"
        def __init__(self, **kwargs):
            kwargs["ignore_keys_at_rope_validation"] = ["mrope_section", "mrope_interleaved"]
            self.rope_parameters = {"rope_type": "default", "rope_theta": 1e7, "mrope_section": [1, 1, 2]}
            super().__init__(**kwargs)
    return Mini().rope_parameters

with compat_patches.patched(NAME) as report:
    out["before_import"] = report[NAME].status
    out["rope_parameters"] = build()
    out["after_import"] = compat_patches.report()[NAME].status
out["after_exit"] = compat_patches.report()[NAME].status
try:
    build()
    out["unpatched"] = "passes"
except Exception as exc:  # 5.4 wraps the TypeError in StrictDataclassClassValidationError
    while exc.__cause__ is not None:
        exc = exc.__cause__
    out["unpatched"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
'''


@pytest.mark.requires(transformers=">=5.0.0rc0,<5.5")  # where a list without partial_rotary_factor fails
def test_deferred_until_transformers_is_imported():
    """`with patched(...): llm = LLM(...)` before anything imported transformers: a post-import hook."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", DEFERRED_CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before_import"] == "deferred"
    assert out["after_import"] == "applied"
    assert out["after_exit"] == "pending"
    assert out["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e7, "mrope_section": [1, 1, 2]}
    assert out["unpatched"].startswith("TypeError: unsupported operand type(s) for -=:")


def _targets():
    from transformers.modeling_rope_utils import RotaryEmbeddingConfigMixin

    return RotaryEmbeddingConfigMixin, {n: RotaryEmbeddingConfigMixin.__dict__[n] for n in
                                        ("convert_rope_params_to_dict", "_check_received_keys", "validate_rope")}


@pytest.mark.requires(transformers=AFFECTED)
def test_wraps_only_this_releases_targets_and_reverts_exactly():
    import transformers

    mixin, before = _targets()
    config_attrs = {n: getattr(transformers.PretrainedConfig, n) for n in before}
    version = _transformers_version()
    wrapped = {t.attribute.split(".")[-1] for t in mod.PATCH.targets
               if t.versions is None or in_range(version, t.versions)}
    signatures = {n: inspect.signature(getattr(mixin, n)) for n in before}
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied"
        for attr, original in before.items():
            now = mixin.__dict__[attr]
            assert (now is not original) == (attr in wrapped), attr
            assert inspect.signature(getattr(mixin, attr)) == signatures[attr]  # wrapt keeps it
    for attr, original in before.items():
        assert mixin.__dict__[attr] is original
        assert getattr(transformers.PretrainedConfig, attr) is config_attrs[attr]


@pytest.mark.requires(transformers=">=5.0.0rc0,<5.4.0.dev0")
def test_keyword_releases_coerce_the_argument_and_leave_the_attribute_alone():
    """Issue 13's first finding, measured on 5.2.0: before 5.4 no config stores
    `ignore_keys_at_rope_validation` (PretrainedConfig.__init__ pops the keyword) and nothing reads an
    attribute of that name. The patch coerces the keyword; it does not invent 5.4's attribute, which
    upstream's regression test asserts (so that test fails here with the patch too: the record's
    `differences`, tests/upstream's DIFFERS): these releases serialize the attribute, and a set makes
    to_json_string() / save_pretrained() raise."""
    import json

    from transformers import LlamaConfig

    keys_as_list = ["mrope_section", "mrope_interleaved"]
    # issue 46121's JSON path: a config dict carrying the keys as a list, loaded with from_dict
    cfg_dict = dict(LlamaConfig(partial_rotary_factor=0.25).to_dict(),
                    ignore_keys_at_rope_validation=list(keys_as_list))
    if in_range(_transformers_version(), "==5.2.*"):  # the only keyword release where it raises (`|`)
        with pytest.raises(TypeError, match=r"unsupported operand type\(s\) for \|"):
            LlamaConfig.from_dict(copy.deepcopy(cfg_dict))
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME].reason
        reloaded = LlamaConfig.from_dict(copy.deepcopy(cfg_dict))
        assert reloaded.rope_parameters["partial_rotary_factor"] == 0.25
        assert "ignore_keys_at_rope_validation" not in vars(reloaded)  # popped; the patch writes none
        json.loads(reloaded.to_json_string())
        # an attribute someone set is inert here: left the very same object, still serializable
        config = LlamaConfig(partial_rotary_factor=0.25)
        keys = list(keys_as_list)
        config.ignore_keys_at_rope_validation = keys
        config.convert_rope_params_to_dict(partial_rotary_factor=0.25)
        assert config.ignore_keys_at_rope_validation is keys
        assert json.loads(config.to_json_string())["ignore_keys_at_rope_validation"] == keys_as_list
    # why the patch leaves it a list: on these releases a set attribute breaks serialization
    config.ignore_keys_at_rope_validation = set(keys_as_list)
    with pytest.raises(TypeError, match="not JSON serializable"):
        config.to_json_string()


@pytest.mark.requires(transformers=">=5.4.0.dev0,<=5.10.0.dev0")
def test_config_subclass_definable_while_patched():
    """From 5.4 PreTrainedConfig is a strict dataclass: validate_* methods must keep (self)."""
    from huggingface_hub.dataclasses import strict
    from transformers import PreTrainedConfig

    with compat_patches.patched(NAME):
        @strict(accept_kwargs=True)
        class DefinedWhilePatched(PreTrainedConfig):
            model_type = "defined_while_patched"
            rope_parameters: dict | None = None
            ignore_keys_at_rope_validation = {"mrope_section"}

            def validate_custom(self):
                pass

        cfg = DefinedWhilePatched(rope_parameters=copy.deepcopy(ROPE))
        cfg.convert_rope_params_to_dict()
        names = {v.__name__ for v in DefinedWhilePatched.__class_validators__}
        assert {"validate_rope", "validate_custom"} <= names
    cfg = DefinedWhilePatched(rope_parameters=copy.deepcopy(ROPE))  # and after revert
    assert cfg.rope_parameters["mrope_section"] == [11, 11, 10]


@pytest.mark.requires(transformers=FIXED)
def test_fixed_release_not_needed_and_untouched(request):
    import transformers

    mixin, before = _targets()
    config_attrs = {n: getattr(transformers.PretrainedConfig, n) for n in before}
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed", report[NAME].reason
        for attr, original in before.items():
            assert mixin.__dict__[attr] is original
            assert getattr(transformers.PretrainedConfig, attr) is config_attrs[attr]
    # every scenario passes unpatched here, with the rope_parameters hard-coded above
    for name in ("A_mini_prf", "A_mini_noprf", "A_native", "B_native"):
        build, reference = _scenario(name, request)
        assert build().rope_parameters == _newest(name)
        ref = reference()
        if ref is not None:
            assert ref.rope_parameters == _newest(name)
