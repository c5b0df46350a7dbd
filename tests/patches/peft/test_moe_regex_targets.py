"""peft-moe-regex-targets on the real PEFT releases, with tiny random MoE models built from configs.

The expectation is computed here independently of the patch: walk the plain model, fullmatch the regex
against every module name and against the pre-fusion names rebuilt from each fused expert parameter
(family names written out below, not taken from PEFT's tables).
"""

import re

import pytest

import compat_patches

NAME = "peft-moe-regex-targets"
AFFECTED = dict(peft=">=0.19.0.dev0", transformers=">=5.0.0rc0")

torch = pytest.importorskip("torch")

# family -> (gate, up, down) v4 per-expert names; fused into gate_up_proj / down_proj on v5
V4_NAMES = {
    "qwen3_moe": ("gate_proj", "up_proj", "down_proj"),
    "mixtral": ("w1", "w3", "w2"),
    "glm4_moe": ("gate_proj", "up_proj", "down_proj"),
}
R, ALPHA = 4, 8


def _tiny(kind):
    import transformers

    torch.manual_seed(0)
    if kind == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
        )
        return transformers.Qwen3MoeForCausalLM(config).eval()
    if kind == "mixtral":
        config = transformers.MixtralConfig(
            vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
            num_experts_per_tok=2,
        )
        return transformers.MixtralForCausalLM(config).eval()
    if kind == "glm4_moe":  # has dense shared experts whose gate_proj/up_proj stay real Linear modules
        config = transformers.Glm4MoeConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=0,
            n_group=1, topk_group=1,
        )
        return transformers.Glm4MoeForCausalLM(config).eval()
    if kind == "qwen3_5_moe":
        if not hasattr(transformers, "Qwen3_5MoeTextConfig"):
            pytest.skip("this transformers has no Qwen3.5-MoE")
        config = transformers.Qwen3_5MoeTextConfig(
            vocab_size=64, hidden_size=32, moe_intermediate_size=16, shared_expert_intermediate_size=16,
            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            num_experts=4, num_experts_per_tok=2, linear_num_value_heads=4, linear_num_key_heads=2,
            linear_key_head_dim=8, linear_value_head_dim=8,
        )
        return transformers.Qwen3_5MoeForCausalLM(config).eval()
    raise AssertionError(kind)


def _regexes(kind):
    gate, up, down = V4_NAMES[kind]
    return {
        # a layer subset: attention + all three expert projections of layers 0 and 1 only
        "layers01": rf"model\.layers\.[01]\.(self_attn\.(q|k|v|o)_proj|mlp\.experts\.({gate}|{up}|{down}))",
        # attention only, one layer
        "q0": r"model\.layers\.0\.self_attn\.q_proj",
        # experts only, layer 2, gate+up but not down
        "gateup2": rf"model\.layers\.2\.mlp\.experts\.({gate}|{up})",
        # the v4 per-expert form (expert index in the name), layer 1
        "indexed1": rf"model\.layers\.1\.(self_attn\.v_proj|mlp\.experts\.\d+\.({gate}|{up}|{down}))",
    }


def _expected(model, kind, regex):
    """{name: (r, alpha)} that LoRA must land on, computed from the plain model."""
    pattern = re.compile(regex)
    gate, up, down = V4_NAMES[kind]
    out = {}
    for name, module in model.named_modules():
        if pattern.fullmatch(name):
            assert isinstance(module, torch.nn.Linear), f"test regex must only hit Linear modules: {name}"
            out[name] = (R, ALPHA)

    def hit(container, v4, n_experts):
        if pattern.fullmatch(f"{container}.{v4}"):
            return True
        return all(pattern.fullmatch(f"{container}.{e}.{v4}") for e in range(n_experts))

    for name, param in model.named_parameters():
        container, _, leaf = name.rpartition(".")
        if leaf == "gate_up_proj":
            g, u = hit(container, gate, param.shape[0]), hit(container, up, param.shape[0])
            assert g == u, "test regexes select whole pairs; the half-pair case has its own test"
            if g:
                out[name] = (2 * R, 2 * ALPHA)
        elif leaf == "down_proj" and param.dim() == 3:
            if hit(container, down, param.shape[0]):
                out[name] = (R, ALPHA)
    return out


def _adapted(peft_model):
    """{module or parameter name: (r, alpha)} of every LoRA layer for adapter 'default'."""
    out = {}
    for name, module in peft_model.named_modules():
        r = getattr(module, "r", None)
        if not isinstance(r, dict) or "default" not in r or not hasattr(module, "lora_A"):
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        parameter = getattr(module, "parameter_name", None)
        if parameter:
            name = f"{name}.{parameter}"
        out[name] = (r["default"], module.lora_alpha["default"])
    return out


def _run(kind, target_modules, **lora_kwargs):
    """(outcome, model, peft_model, config): outcome is the adapted dict or ('raised', type, message)."""
    from peft import LoraConfig, get_peft_model

    model = _tiny(kind)
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=target_modules, **lora_kwargs)
    try:
        peft_model = get_peft_model(model, config)
    except Exception as exc:  # noqa: BLE001 - the outcome is what we compare
        return ("raised", type(exc).__name__, str(exc)[:2000]), model, None, config
    return _adapted(peft_model), model, peft_model, peft_model.peft_config["default"]


def _plain_expected(kind, regex):
    return _expected(_tiny(kind), kind, regex)


KINDS = ["qwen3_moe", "mixtral"]


@pytest.mark.requires(**AFFECTED)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["layers01", "q0", "gateup2"])
def test_without_patch_the_regex_result_is_wrong(kind, which):
    regex = _regexes(kind)[which]
    outcome, *_ = _run(kind, regex)
    assert outcome != _plain_expected(kind, regex), (
        "PEFT got this regex right without the patch: the gate is wrong for this release"
    )


@pytest.mark.requires(**AFFECTED)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["layers01", "q0", "gateup2", "indexed1"])
def test_with_patch_lora_lands_exactly_on_the_regex(kind, which):
    regex = _regexes(kind)[which]
    expected = _plain_expected(kind, regex)
    assert expected  # the regex selects something
    with compat_patches.patched(NAME) as rep:
        assert rep[NAME].status in ("applied", "deferred"), rep[NAME]
        outcome, _, peft_model, config = _run(kind, regex)
    assert outcome == expected
    # alpha/r unchanged everywhere, fused ranks doubled
    assert {a / r for r, a in outcome.values()} == {ALPHA / R}


@pytest.mark.requires(**AFFECTED)
@pytest.mark.parametrize("kind", KINDS)
def test_forward_runs_and_zero_lora_b_keeps_logits_bitwise(kind):
    regex = _regexes(kind)["layers01"]
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with compat_patches.patched(NAME):
        outcome, model, peft_model, _ = _run(kind, regex)
    assert isinstance(outcome, dict) and outcome
    # reference: same seed, plain model
    reference = _tiny(kind)
    with torch.no_grad():
        before = reference(input_ids=ids).logits
        after = peft_model(input_ids=ids).logits
    assert torch.equal(before, after)
    # and the expert LoRA is really on the forward path: a non-zero B of one fused parameter moves logits
    wrapped = [m for n, m in peft_model.named_modules()
               if getattr(m, "parameter_name", None) == "gate_up_proj" and ".layers.0." in n]
    assert len(wrapped) == 1
    with torch.no_grad():
        wrapped[0].lora_B["default"].weight.normal_()
        moved = peft_model(input_ids=ids).logits
    assert not torch.equal(before, moved)


def _config_view(config):
    if config is None:
        return None
    return (config.target_modules, config.target_parameters, dict(config.rank_pattern or {}),
            dict(config.alpha_pattern or {}))


@pytest.mark.requires(**AFFECTED)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("targets", [
    "list", "all-linear", "invalid-regex", "attention-list",
])
def test_non_regex_targets_keep_peft_behaviour(kind, targets):
    gate, up, down = V4_NAMES[kind]
    target_modules = {
        "list": ["q_proj", "v_proj", gate, up, down],
        "attention-list": ["q_proj", "k_proj"],
        "all-linear": "all-linear",
        "invalid-regex": r"model\.layers\.(0\.self_attn\.q_proj",
    }[targets]
    plain = _run(kind, target_modules)
    with compat_patches.patched(NAME):
        patched = _run(kind, target_modules)
    assert patched[0] == plain[0]
    assert _config_view(patched[3]) == _config_view(plain[3])


@pytest.mark.requires(**AFFECTED)
@pytest.mark.parametrize("kind", KINDS)
def test_half_of_a_fused_pair_is_a_clear_error(kind):
    gate, _, _ = V4_NAMES[kind]
    regex = rf"model\.layers\.[01]\.(self_attn\.q_proj|mlp\.experts\.{gate})"
    with compat_patches.patched(NAME):
        outcome, *_ = _run(kind, regex)
    assert outcome[0] == "raised" and outcome[1] == "ValueError", outcome
    assert "model.layers.0.mlp.experts.gate_up_proj" in outcome[2]
    # PEFT's own wording first (PEFT's tests match it), ours after it
    assert outcome[2].startswith(f"Cannot convert PEFT target(s) {gate} without also targeting ")
    assert outcome[2].index("because they are fused into gate_up_proj.") < outcome[2].index(NAME)


@pytest.mark.requires(**AFFECTED)
def test_some_experts_of_a_packed_tensor_is_a_clear_error():
    regex = r"model\.layers\.0\.mlp\.experts\.[01]\.(gate_proj|up_proj|down_proj)"
    with compat_patches.patched(NAME):
        outcome, *_ = _run("qwen3_moe", regex)
    assert outcome[0] == "raised" and outcome[1] == "ValueError", outcome
    assert "packs all experts" in outcome[2]


@pytest.mark.requires(**AFFECTED)
def test_user_rank_pattern_per_branch_is_respected_and_fused_keys_are_exact():
    regex = r"model\.layers\.[02]\.mlp\.experts\.(gate_proj|up_proj|down_proj)"
    with compat_patches.patched(NAME):
        outcome, _, _, config = _run(
            "qwen3_moe", regex, rank_pattern={"gate_proj": 2, "up_proj": 2}, alpha_pattern={"gate_proj": 6,
                                                                                           "up_proj": 6})
    assert outcome == {
        "model.layers.0.mlp.experts.gate_up_proj": (4, 12),
        "model.layers.2.mlp.experts.gate_up_proj": (4, 12),
        "model.layers.0.mlp.experts.down_proj": (R, ALPHA),
        "model.layers.2.mlp.experts.down_proj": (R, ALPHA),
    }
    from peft.utils.other import get_pattern_key

    fused_key = next(iter(config.rank_pattern))
    for layer in range(3):
        key = f"model.layers.{layer}.mlp.experts.gate_up_proj"
        assert (get_pattern_key(config.rank_pattern.keys(), key) == fused_key) == (layer != 1)


@pytest.mark.requires(**AFFECTED)
def test_qwen3_5_moe_is_left_to_peft():
    # PEFT does not list qwen3_5_moe_text in its conversion table: nothing to convert, nothing patched
    regex = r"model\.layers\.3\.(self_attn\.(q|k|v|o)_proj)"
    plain = _run("qwen3_5_moe", regex)
    with compat_patches.patched(NAME):
        patched = _run("qwen3_5_moe", regex)
    assert patched[0] == plain[0] == _expected_modules_only(_tiny("qwen3_5_moe"), regex)


def _expected_modules_only(model, regex):
    pattern = re.compile(regex)
    return {n: (R, ALPHA) for n, _ in model.named_modules() if pattern.fullmatch(n)}


@pytest.mark.requires(**AFFECTED)
def test_converting_twice_is_idempotent():
    import peft.utils.transformers_weight_conversion as conv
    from peft import LoraConfig

    model = _tiny("qwen3_moe")
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=_regexes("qwen3_moe")["layers01"])
    with compat_patches.patched(NAME):
        conv.convert_peft_config_for_transformers(config, model=model, conversions=None)
        first = _config_view(config)
        conv.convert_peft_config_for_transformers(config, model=model, conversions=None)
    assert _config_view(config) == first
    assert config.target_parameters == {
        f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1) for p in ("gate_up_proj", "down_proj")
    }


@pytest.mark.requires(peft="<0.19.0.dev0")
def test_releases_without_conversion_report_not_needed():
    assert compat_patches.report()[NAME].status == "not-needed"
    with compat_patches.patched(NAME) as rep:
        assert rep[NAME].status == "not-needed"


@pytest.mark.requires(peft=">=0.20.0.dev0", transformers=">=5.0.0rc0")
@pytest.mark.parametrize("kind", KINDS)
def test_agrees_with_peft_020_resolver_where_that_is_right(kind):
    # a regex that does not restrict layers: PEFT's own leaf-name resolution is right here (the oracle)
    gate, up, down = V4_NAMES[kind]
    regex = rf".*\.(q_proj|o_proj|{gate}|{up}|{down})"
    plain = _run(kind, regex)
    with compat_patches.patched(NAME):
        patched = _run(kind, regex)
    assert patched[0] == plain[0] == _plain_expected(kind, regex)


@pytest.mark.requires(peft=">=0.20.0.dev0", transformers=">=5.0.0rc0")  # 0.19: one target_parameters adapter only
def test_second_adapter_on_a_wrapped_model_keeps_the_scope():
    # PEFT requires every adapter using target_parameters to target the same parameters (its own clear
    # error otherwise), so the second adapter uses the same regex with another rank; the model it is
    # resolved against now carries PEFT wrappers (`.base_layer` in the names)
    from peft import LoraConfig

    kind = "qwen3_moe"
    regex = _regexes(kind)["layers01"]
    with compat_patches.patched(NAME):
        _, model, peft_model, _ = _run(kind, regex)
        peft_model.add_adapter("other", LoraConfig(r=2, lora_alpha=6, target_modules=regex))
    got = {}
    for name, module in peft_model.named_modules():
        r = getattr(module, "r", None)
        if isinstance(r, dict) and "other" in r:
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            if getattr(module, "parameter_name", None):
                name = f"{name}.{module.parameter_name}"
            got[name] = (r["other"], module.lora_alpha["other"])
    scale = {(R, ALPHA): (2, 6), (2 * R, 2 * ALPHA): (4, 12)}
    assert got == {n: scale[v] for n, v in _plain_expected(kind, regex).items()}


@pytest.mark.requires(**AFFECTED)
@pytest.mark.parametrize("kind", KINDS)
def test_router_matched_by_its_module_name_becomes_its_weight_in_that_layer_only(kind):
    # PEFT maps the v4 router module `mlp.gate` to the v5 parameter `mlp.gate.weight`
    regex = r"model\.layers\.1\.(mlp\.gate|self_attn\.q_proj)"
    with compat_patches.patched(NAME):
        outcome, *_ = _run(kind, regex)
    assert outcome == {"model.layers.1.self_attn.q_proj": (R, ALPHA), "model.layers.1.mlp.gate.weight": (R, ALPHA)}


@pytest.mark.requires(**AFFECTED)
def test_shared_expert_linears_stay_modules_and_routed_experts_become_parameters():
    # (PEFT's list path rewrites shared-expert names too: peft issue 3711; the regex path must not)
    kind = "glm4_moe"
    regex = r"model\.layers\.0\.mlp\.(shared_experts|experts)\.(gate|up|down)_proj"
    expected = _plain_expected(kind, regex)
    assert "model.layers.0.mlp.shared_experts.gate_proj" in expected
    assert expected["model.layers.0.mlp.experts.gate_up_proj"] == (2 * R, 2 * ALPHA)
    with compat_patches.patched(NAME):
        outcome, *_ = _run(kind, regex)
    assert outcome == expected


# ---- representation (issue 16, item 3) and warnings (item 4) ------------------------------------------------

@pytest.mark.requires(peft=">=0.20.0.dev0", transformers=">=5.0.0rc0")
@pytest.mark.parametrize("regex", [r".*\.(q_proj|k_proj|v_proj|gate_proj|up_proj|down_proj)", r".*\.q_proj",
                                   r"^(model(?=\.).*\.(q_proj|k_proj|v_proj|gate_proj|up_proj|down_proj))$"])
def test_where_the_regex_covers_every_layer_the_config_is_peft_own(regex):
    plain = _run("qwen3_moe", regex)
    with compat_patches.patched(NAME):
        patched = _run("qwen3_moe", regex)
    assert patched[0] == plain[0] == _plain_expected("qwen3_moe", regex)
    assert _config_view(patched[3]) == _config_view(plain[3])
    assert isinstance(patched[3].target_modules, set) and "." not in "".join(patched[3].target_modules)


@pytest.mark.requires(**AFFECTED)
def test_a_layer_scoped_regex_is_written_as_full_names():
    regex = _regexes("qwen3_moe")["layers01"]
    with compat_patches.patched(NAME):
        outcome, _, _, config = _run("qwen3_moe", regex)
    assert outcome == _plain_expected("qwen3_moe", regex)
    assert config.target_modules == {f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qkvo"}
    assert set(config.target_parameters) == {f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1)
                                             for p in ("gate_up_proj", "down_proj")}
    (key, rank), = config.rank_pattern.items()
    assert rank == 2 * R and config.alpha_pattern == {key: 2 * ALPHA}
    assert all(re.fullmatch(key, f"model.layers.{i}.mlp.experts.gate_up_proj") for i in (0, 1))
    assert not re.fullmatch(key, "model.layers.2.mlp.experts.gate_up_proj")


def _logits(model):
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.requires(peft=">=0.20.0.dev0", transformers=">=5.0.0rc0")  # 0.19.x cannot load fused-MoE adapters
def test_adapter_saved_with_patch_loads_without_it_and_the_reverse(tmp_path):
    import json

    from peft import LoraConfig, PeftModel

    kind = "qwen3_moe"  # one family: the representation does not depend on it (Mixtral: same code path)
    regex = _regexes(kind)["layers01"]
    expected = _plain_expected(kind, regex)
    # saved with the patch, loaded without it: the same LoRA layers, bitwise the same logits
    with compat_patches.patched(NAME):
        outcome, _, peft_model, _ = _run(kind, regex, init_lora_weights=False)
        before = _logits(peft_model)
        peft_model.save_pretrained(tmp_path / "with")
    assert outcome == expected
    saved = json.loads((tmp_path / "with" / "adapter_config.json").read_text())
    assert LoraConfig.from_pretrained(tmp_path / "with").target_parameters  # this release reads it back
    assert isinstance(saved["target_modules"], list)
    reloaded = PeftModel.from_pretrained(_tiny(kind), tmp_path / "with")
    assert _adapted(reloaded) == expected
    assert torch.equal(_logits(reloaded), before)
    # saved without the patch (PEFT widens the regex to every layer), loaded with it: PEFT's own structure
    outcome, _, peft_model, _ = _run(kind, regex, init_lora_weights=False)
    before = _logits(peft_model)
    peft_model.save_pretrained(tmp_path / "without")
    with compat_patches.patched(NAME):
        reloaded = PeftModel.from_pretrained(_tiny(kind), tmp_path / "without")
        assert _adapted(reloaded) == outcome
        assert torch.equal(_logits(reloaded), before)


@pytest.mark.requires(**AFFECTED)
def test_warnings_an_expert_only_regex(caplog):
    import logging
    import warnings

    regex = r"model\.layers\.[12]\.mlp\.experts\.(gate_proj|up_proj|down_proj)"
    with compat_patches.patched(NAME), warnings.catch_warnings(record=True) as caught, \
            caplog.at_level(logging.WARNING, logger="compat_patches"):
        warnings.simplefilter("always")
        outcome, *_ = _run("qwen3_moe", regex)
    assert outcome == _plain_expected("qwen3_moe", regex)
    peft_warnings = sorted(str(w.message).split(" keys ")[0] for w in caught
                           if w.category in (RuntimeWarning, UserWarning) and "peft" in w.filename)
    ours = [r.getMessage() for r in caplog.records if r.name == "compat_patches" and NAME in r.getMessage()]
    # never "target_modules=... were set but no module was matched": no module is targeted, so none is set
    assert not any("no module was matched" in m for m in peft_warnings)
    if peft_warnings:  # PEFT >= 0.20 checks rank/alpha keys against module targets only: one line of ours says so
        assert peft_warnings == ["The following alpha_pattern", "The following rank_pattern"]
        assert len(ours) == 1 and "expect PEFT's warning" in ours[0]
        assert "model.layers.1.mlp.experts.gate_up_proj" in ours[0]
    else:
        assert ours == []
