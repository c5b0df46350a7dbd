"""transformers-gpt-oss-num-experts on the real transformers releases.

`observe()` runs every way a config meets the name `num_experts` (read, hasattr, keyword argument,
both keys, from_dict, setattr, a type-invalid value through the alias, save/load) and returns what
happened. Measured without the patch on every release 5.0.0rc0 - 5.6.2 (and 5.7.0, 5.24.0): each
affected release gives UNPATCHED, each fixed release gives FIXED. On an affected release the tests
assert UNPATCHED first (the bug is where we say it is), then FIXED with the patch, then UNPATCHED
again after the revert; on a fixed release they assert FIXED without it and that the patch is
`not-needed` and touches nothing. No torch is needed, except by the one aux-loss test.
"""

import json

import pytest

import compat_patches
from compat_patches.core.versions import in_range, installed_version
from compat_patches.patches.transformers import gpt_oss_num_experts as mod

NAME = "transformers-gpt-oss-num-experts"
AFFECTED = ">=5.0.0rc0,<=5.6.0.dev0"
FIXED_RELEASES = ">=5.6.0"
MISSING = "AttributeError: 'GptOssConfig' object has no attribute 'num_experts'"
SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2, head_dim=8,
             num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2)

# What each scenario gives; measured (torch not installed) on every listed release.
UNPATCHED = {  # 5.0.0rc0 - rc3, 5.0.0, 5.1.0, 5.2.0, 5.3.0, 5.4.0, 5.5.0 - 5.5.4 (and 4.55 - 4.57)
    "read_default": MISSING,
    "hasattr": False,
    "keyword": {"num_local_experts": 128, "num_experts": 4, "to_dict": 4},
    "both_keywords": {"num_local_experts": 8, "num_experts": 4, "to_dict": 4},
    "from_dict_both": {"num_local_experts": 128, "num_experts": 4, "to_dict": 4},
    "setattr": {"num_local_experts": 128, "num_experts": 8, "to_dict": 8, "in___dict__": True},
    "setattr_invalid": {"num_local_experts": 128, "num_experts": "x", "to_dict": "x", "in___dict__": True},
    "saved_and_loaded": {"num_local_experts": 8, "num_experts": MISSING, "json_keys": ["num_local_experts"]},
}
FIXED = {  # 5.6.0, 5.6.1, 5.6.2, 5.7.0, 5.24.0
    "read_default": 128,
    "hasattr": True,
    "keyword": {"num_local_experts": 4, "num_experts": 4, "to_dict": "absent"},
    "both_keywords": {"num_local_experts": 4, "num_experts": 4, "to_dict": "absent"},
    "from_dict_both": {"num_local_experts": 4, "num_experts": 4, "to_dict": "absent"},
    "setattr": {"num_local_experts": 8, "num_experts": 8, "to_dict": "absent", "in___dict__": False},
    # the strict validators run under the name given: nothing checks a value written through the alias
    "setattr_invalid": {"num_local_experts": "x", "num_experts": "x", "to_dict": "absent",
                        "in___dict__": False},
    "saved_and_loaded": {"num_local_experts": 8, "num_experts": 8, "json_keys": ["num_local_experts"]},
}


# ----- pure: gate and target shapes (no transformers needed) -----------------------------------

@pytest.mark.parametrize("version, expected", [
    ("4.55.0", False), ("4.57.6", False), ("5.0.0.dev0", False), ("5.0.0rc0", True),
    ("5.0.0rc3", True), ("5.0.0", True), ("5.3.0+cu128", True), ("5.4.0", True), ("5.5.4", True),
    ("5.6.0.dev0", True), ("5.6.0.dev0+cu128", True), ("5.6.0rc1", False), ("5.6.0", False),
    ("5.6.2", False), ("5.24.0", False), ("6.0.0.dev0", False),
])
def test_gate(version, expected):
    assert mod.PATCH.affected == {"transformers": AFFECTED}
    assert in_range(version, mod.PATCH.affected["transformers"]) is expected


@pytest.mark.parametrize("version, wrappers", [
    ("5.0.0rc0", {"_get", "_set"}), ("5.0.0", {"_get", "_set"}), ("5.3.0+cu128", {"_get", "_set"}),
    ("5.4.0.dev0", {"_get", "_set_strict"}), ("5.4.0", {"_get", "_set_strict"}),
    ("5.5.4", {"_get", "_set_strict"}), ("5.6.0.dev0", {"_get", "_set_strict"}),
])
def test_target_shape_by_version(version, wrappers):
    chosen = [t for t in mod.PATCH.targets if t.versions is None or in_range(version, t.versions)]
    assert {t.wrapper.__name__ for t in chosen} == wrappers
    assert len({t.path for t in chosen}) == len(chosen)  # one shape per attribute


def test_wrappers_rename_only_the_alias():
    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return "result"

    me = object()
    assert mod._get(record, me, ("num_experts",), {}) == "result"
    assert mod._get(record, None, (me, "num_experts"), {}) == "result"  # unbound: self first
    mod._get(record, me, ("num_local_experts",), {})
    mod._get(record, me, (), {"key": "num_experts"})
    mod._set(record, me, ("num_experts", 3), {})
    mod._set(record, None, (me, "num_experts", 3), {})
    mod._set(record, me, ("hidden_size", 3), {})
    mod._set(record, me, (), {"key": "num_experts", "value": 3})
    mod._set(record, me, ("num_experts",), {"value": 3})
    mod._set_strict(record, me, ("hidden_size", 3), {})  # anything but the alias: untouched
    assert calls == [
        (("num_local_experts",), {}), ((me, "num_local_experts"), {}), (("num_local_experts",), {}),
        ((), {"key": "num_local_experts"}), (("num_local_experts", 3), {}),
        ((me, "num_local_experts", 3), {}), (("hidden_size", 3), {}),
        ((), {"key": "num_local_experts", "value": 3}), (("num_local_experts",), {"value": 3}),
        (("hidden_size", 3), {}),
    ]


# ----- the real releases -------------------------------------------------------------------------

def _version():
    return installed_version("transformers")


def _config_class():
    from transformers import GptOssConfig

    return GptOssConfig


def _outcome(function):
    try:
        return function()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _state(config, keys=("num_local_experts", "num_experts", "to_dict")):
    out = {
        "num_local_experts": config.num_local_experts,
        "num_experts": _outcome(lambda: config.num_experts),
        "to_dict": config.to_dict().get("num_experts", "absent"),
        "in___dict__": "num_experts" in config.__dict__,
    }
    return {key: out[key] for key in keys}


def observe(tmp_path):
    config_class = _config_class()
    with_dict = ("num_local_experts", "num_experts", "to_dict", "in___dict__")
    out = {
        "read_default": _outcome(lambda: config_class().num_experts),
        "hasattr": hasattr(config_class(), "num_experts"),
        "keyword": _state(config_class(num_experts=4)),
        "both_keywords": _state(config_class(num_experts=4, num_local_experts=8)),
        "from_dict_both": _state(config_class.from_dict({"num_experts": 4, "num_local_experts": 128})),
    }
    config = config_class()
    config.num_experts = 8
    out["setattr"] = _state(config, with_dict)
    config = config_class()
    config.num_experts = "x"
    out["setattr_invalid"] = _state(config, with_dict)
    folder = tmp_path / "saved"
    config_class(num_local_experts=8).save_pretrained(folder)
    loaded = config_class.from_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    out["saved_and_loaded"] = {"num_local_experts": loaded.num_local_experts,
                               "num_experts": _outcome(lambda: loaded.num_experts),
                               "json_keys": sorted(k for k in saved if "experts" in k and "tok" not in k)}
    return out


@pytest.mark.requires(transformers=AFFECTED)
@pytest.mark.parametrize("mode", ["patched", "apply_all"])
def test_affected_release_gets_the_fixed_releases_alias(mode, tmp_path):
    assert compat_patches.report()[NAME].status == "pending"
    assert observe(tmp_path / "before") == UNPATCHED  # the bug, as measured

    if mode == "patched":
        with compat_patches.patched(NAME) as report:
            assert report[NAME].status == "applied", report[NAME].reason
            found = observe(tmp_path / "patched")
    else:
        try:
            report = compat_patches.apply_all()
            assert report[NAME].status == "applied", report[NAME].reason
            found = observe(tmp_path / "patched")
        finally:
            compat_patches.revert_all()
    assert found == FIXED  # exactly what 5.6.0 - 5.24.0 do

    assert compat_patches.report()[NAME].status == "pending"
    assert observe(tmp_path / "after") == UNPATCHED  # reverted: the patch fixed it, nothing else did


@pytest.mark.requires(transformers=FIXED_RELEASES)
def test_fixed_release_not_needed_and_untouched(tmp_path):
    config_class = _config_class()
    before = dict(vars(config_class))
    assert observe(tmp_path / "native") == FIXED
    assert config_class.attribute_map == {"num_experts": "num_local_experts"}
    entry = compat_patches.apply_all(only=[NAME])[NAME]
    try:
        assert entry.status == "not-needed", entry.reason
        assert "fixed upstream in transformers 5.6.0" in entry.reason
        assert vars(config_class) == before
        assert all(vars(config_class)[k] is v for k, v in before.items())
    finally:
        compat_patches.revert_all()


def _configs():
    """Configs that name no `num_experts`: the patch must not change any of their data."""
    config_class = _config_class()
    return {
        "default": lambda: config_class(),
        "experts": lambda: config_class(num_local_experts=8),
        "small": lambda: config_class(**SMALL),
        "from_dict": lambda: config_class.from_dict(dict(SMALL, num_experts_per_tok=4)),
    }


def _serialized(config, folder):
    config.save_pretrained(folder)
    loaded = type(config).from_pretrained(folder)
    again = type(config).from_dict(config.to_dict())
    return {
        "to_dict": config.to_dict(),
        "to_diff_dict": config.to_diff_dict(),
        "json": config.to_json_string(),
        "json_full": config.to_json_string(use_diff=False),
        "file": (folder / "config.json").read_bytes(),
        "loaded": loaded.to_json_string(use_diff=False),
        "from_dict": again.to_json_string(use_diff=False),
    }, (loaded, again)


@pytest.mark.requires(transformers=AFFECTED)
@pytest.mark.parametrize("kind", ["default", "experts", "small", "from_dict"])
def test_serialization_unchanged(kind, tmp_path):
    build = _configs()[kind]
    unpatched, unpatched_loads = _serialized(build(), tmp_path / "unpatched")
    with compat_patches.patched(NAME):
        built_patched = build()
        patched, patched_loads = _serialized(built_patched, tmp_path / "patched")
        assert built_patched.num_experts == built_patched.num_local_experts  # the alias is there
        # a file written without the patch loads, with it, into the same config
        cross = type(built_patched).from_pretrained(tmp_path / "unpatched").to_json_string(use_diff=False)
    assert patched == unpatched  # equal dicts, identical strings and bytes
    assert patched_loads == unpatched_loads  # from_pretrained / from_dict: equal configs
    assert cross == unpatched["loaded"]
    assert "num_experts" not in unpatched["to_dict"] and "num_experts" not in patched["to_dict"]


@pytest.mark.requires(transformers=AFFECTED)
def test_configs_made_before_during_and_after(tmp_path):
    config_class = _config_class()
    before = config_class(num_local_experts=8)
    explicit = config_class(num_experts=4)  # unpatched: an extra attribute beside num_local_experts
    snapshots = {id(c): c.to_json_string(use_diff=False) for c in (before, explicit)}
    assert _outcome(lambda: before.num_experts) == MISSING
    assert (explicit.num_local_experts, explicit.num_experts) == (128, 4)

    with compat_patches.patched(NAME):
        assert before.num_experts == 8  # made before the patch: the alias reaches it too
        during = config_class(num_local_experts=6)
        assert during.num_experts == 6
        # the alias reads num_local_experts; the stored extra value is still there, untouched
        assert explicit.num_experts == 128 and explicit.__dict__["num_experts"] == 4
        assert {id(c): c.to_json_string(use_diff=False) for c in (before, explicit)} == snapshots

    assert _outcome(lambda: before.num_experts) == MISSING
    assert _outcome(lambda: during.num_experts) == MISSING
    assert during.num_local_experts == 6 and "num_experts" not in during.__dict__
    assert during.to_json_string(use_diff=False) == config_class(num_local_experts=6).to_json_string(
        use_diff=False)
    assert explicit.num_experts == 4  # back to the unpatched reading
    assert {id(c): c.to_json_string(use_diff=False) for c in (before, explicit)} == snapshots


@pytest.mark.requires(transformers=AFFECTED)
def test_wraps_only_gpt_oss_and_reverts_exactly():
    from transformers.configuration_utils import PreTrainedConfig
    from transformers.models.mixtral.configuration_mixtral import MixtralConfig

    config_class = _config_class()
    names = ("__getattribute__", "__setattr__", "attribute_map")
    own = {n: config_class.__dict__[n] for n in names if n in config_class.__dict__}
    base = {n: PreTrainedConfig.__dict__[n] for n in names}
    mixtral = {n: MixtralConfig.__dict__.get(n) for n in names}
    attribute_map = config_class.attribute_map
    assert "__getattribute__" not in own and "attribute_map" not in own  # inherited on every release
    assert attribute_map is PreTrainedConfig.attribute_map and attribute_map == {}

    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied"
        for name in ("__getattribute__", "__setattr__"):
            assert config_class.__dict__[name] is not own.get(name, base[name])
        assert config_class.attribute_map is attribute_map  # the dict itself is never touched
        assert {n: PreTrainedConfig.__dict__[n] for n in names} == base
        assert all(PreTrainedConfig.__dict__[n] is v for n, v in base.items())
        assert all(MixtralConfig.__dict__.get(n) is v for n, v in mixtral.items())
        assert _outcome(lambda: PreTrainedConfig().num_experts).startswith("AttributeError")

    assert {n: config_class.__dict__[n] for n in names if n in config_class.__dict__}.keys() == own.keys()
    assert all(config_class.__dict__[n] is v for n, v in own.items())
    assert config_class.__getattribute__ is PreTrainedConfig.__getattribute__
    assert config_class.attribute_map is attribute_map and attribute_map == {}
    assert all(PreTrainedConfig.__dict__[n] is v for n, v in base.items())


@pytest.mark.requires(transformers=AFFECTED)
def test_build_that_already_carries_the_fix_is_not_patched(monkeypatch):
    """A 5.6.0.dev0 source install after PR 45473: in range by version, the alias already there."""
    config_class = _config_class()
    fixed_map = {"num_experts": "num_local_experts"}
    monkeypatch.setattr(config_class, "attribute_map", fixed_map, raising=False)
    own = dict(vars(config_class))
    try:
        entry = compat_patches.apply_all(only=[NAME])[NAME]
        assert entry.status == "not-needed", entry
        assert "already carries the upstream fix" in entry.reason
        assert dict(vars(config_class)) == own and all(vars(config_class)[k] is v for k, v in own.items())
        assert config_class().num_experts == 128  # through the build's own attribute_map
    finally:
        compat_patches.revert_all()
        monkeypatch.undo()
        with compat_patches.patched(NAME):  # clear the finding: the next attempt decides again
            pass
    assert compat_patches.report()[NAME].status == "pending"


@pytest.mark.requires(transformers=">=4.55,<5.0.0rc0")
def test_transformers_4_not_patched():
    """4.x has no alias on GptOssConfig, nor on any MoE config (Mixtral's arrives in 5.0)."""
    from transformers import MixtralConfig

    assert _outcome(lambda: _config_class()().num_experts) == MISSING
    assert not hasattr(MixtralConfig(), "num_experts")
    assert compat_patches.report()[NAME].status == "not-needed"


@pytest.mark.requires(transformers=AFFECTED)
def test_moe_aux_loss_reads_config_num_experts():
    """What trl's SFT/GRPO aux-loss does on transformers 5 (trl 5754): `config.num_experts`."""
    torch = pytest.importorskip("torch")
    from transformers import GptOssForCausalLM
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(0)
    config = _config_class()(**SMALL, output_router_logits=True)
    model = GptOssForCausalLM(config).eval()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=ids)

    def trl_aux_loss():  # trl/trainer/utils.py without its gpt-oss workaround
        return load_balancing_loss_func(out.router_logits, model.config.num_experts,
                                        model.config.num_experts_per_tok, mask)

    assert _outcome(trl_aux_loss) == MISSING
    with compat_patches.patched(NAME):
        aux = trl_aux_loss()
    assert torch.equal(aux, out.aux_loss)  # bitwise what the model itself computes
    assert model.num_experts == SMALL["num_local_experts"]

