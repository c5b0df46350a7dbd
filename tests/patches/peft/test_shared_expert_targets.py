"""peft-shared-expert-targets on the real PEFT releases, with tiny random MoE models built from configs.

The expectation is computed here independently of the patch: PEFT's list semantics (an entry selects the
modules whose name equals it or ends with "." + entry) applied to the plain model's real module names and to
the pre-fusion names rebuilt from each fused expert parameter (family names written out below).
"""

import logging

import pytest

import compat_patches

NAME = "peft-shared-expert-targets"
REGEX = "peft-moe-regex-targets"
AFFECTED = dict(peft=">=0.19.0.dev0", transformers=">=5.0.0rc0")

torch = pytest.importorskip("torch")

R, ALPHA = 4, 8
SHARED = {"deepseek_v3": "shared_experts", "qwen3_next": "shared_expert", "qwen2_moe": "shared_expert"}


def _tiny(kind):
    import transformers

    torch.manual_seed(0)
    if kind == "deepseek_v3":  # layer 0 dense MLP, layers 1-2 routed experts + shared experts
        config = transformers.DeepseekV3Config(
            vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, n_shared_experts=1,
            num_experts_per_tok=2, first_k_dense_replace=1, n_group=1, topk_group=1, q_lora_rank=16,
            kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
        )
        return transformers.DeepseekV3ForCausalLM(config).eval()
    if kind == "qwen3_next":
        if not hasattr(transformers, "Qwen3NextConfig"):
            pytest.skip("this transformers has no Qwen3-Next")
        config = transformers.Qwen3NextConfig(
            vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
            shared_expert_intermediate_size=16, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, num_experts=4, num_experts_per_tok=2, linear_num_value_heads=4, linear_num_key_heads=2,
            linear_key_head_dim=8, linear_value_head_dim=8,
        )
        return transformers.Qwen3NextForCausalLM(config).eval()
    if kind == "qwen2_moe":
        config = transformers.Qwen2MoeConfig(
            vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
            shared_expert_intermediate_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            num_experts=4, num_experts_per_tok=2,
        )
        return transformers.Qwen2MoeForCausalLM(config).eval()
    if kind == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
            decoder_sparse_step=1, mlp_only_layers=[],
        )
        return transformers.Qwen3MoeForCausalLM(config).eval()
    raise AssertionError(kind)


def _selects(entries, key):
    return any(key == e or key.endswith("." + e) for e in entries)


def _expected(model, entries):
    """{name: (r, alpha)} that LoRA must land on under v4 list semantics, from the plain model."""
    out = {}
    for name, module in model.named_modules():
        if name and _selects(entries, name) and isinstance(module, torch.nn.Linear):
            out[name] = (R, ALPHA)
    for name, param in model.named_parameters():
        container, _, leaf = name.rpartition(".")
        n = param.shape[0] if param.dim() == 3 else 0

        def hit(v4):
            return _selects(entries, f"{container}.{v4}") or (
                n and all(_selects(entries, f"{container}.{e}.{v4}") for e in range(n)))

        if leaf == "gate_up_proj" and hit("gate_proj") and hit("up_proj"):
            out[name] = (2 * R, 2 * ALPHA)
        elif leaf == "down_proj" and param.dim() == 3 and hit("down_proj"):
            out[name] = (R, ALPHA)
    return out


def _adapted(peft_model, adapter="default"):
    out = {}
    for name, module in peft_model.named_modules():
        r = getattr(module, "r", None)
        if not isinstance(r, dict) or adapter not in r or not hasattr(module, "lora_A"):
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if getattr(module, "parameter_name", None):
            name = f"{name}.{module.parameter_name}"
        out[name] = (r[adapter], module.lora_alpha[adapter])
    return out


def _run(kind, target_modules, **kwargs):
    from peft import LoraConfig, get_peft_model

    model = _tiny(kind)
    try:
        peft_model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=target_modules, **kwargs))
    except ValueError as exc:
        return ("raised", type(exc).__name__, str(exc)), None
    return _adapted(peft_model), peft_model


def _shared(kind, layer, which=("gate", "up", "down")):
    return [f"model.layers.{layer}.mlp.{SHARED[kind]}.{w}_proj" for w in which]


def _view(config):
    return (config.target_modules, config.target_parameters, dict(config.rank_pattern or {}),
            dict(config.alpha_pattern or {}))


@pytest.mark.requires(**AFFECTED)
@pytest.mark.parametrize("kind", ["deepseek_v3", "qwen3_next"])
def test_without_patch_shared_expert_targets_move_onto_every_routed_expert(kind):
    outcome, _ = _run(kind, _shared(kind, 1))
    assert not any(SHARED[kind] in n for n in outcome)
    assert {n.rpartition(".")[2] for n in outcome} == {"gate_up_proj", "down_proj"}
    assert len({n.split(".")[2] for n in outcome}) > 1  # experts of more than the named layer
    outcome, _ = _run(kind, _shared(kind, 1, ("gate", "down")))
    assert outcome[0] == "raised" and "Cannot convert PEFT target(s) gate_proj without also targeting up_proj" \
        in outcome[2]


@pytest.mark.requires(**AFFECTED)
@pytest.mark.parametrize("kind", ["deepseek_v3", "qwen3_next"])
@pytest.mark.parametrize("which", [("gate", "up", "down"), ("gate", "down")])
def test_with_patch_exactly_the_named_shared_experts(kind, which):
    entries = _shared(kind, 1, which)
    with compat_patches.patched(NAME) as rep:
        assert rep[NAME].status in ("applied", "deferred"), rep[NAME]
        outcome, peft_model = _run(kind, entries)
    assert outcome == {n: (R, ALPHA) for n in entries}
    assert peft_model.peft_config["default"].target_modules == set(entries)


@pytest.mark.requires(**AFFECTED)
def test_bare_names_keep_dense_mlp_and_shared_experts_beside_the_routed_experts():
    entries = ["q_a_proj", "gate_proj", "up_proj", "down_proj"]
    plain, _ = _run("deepseek_v3", entries)
    expected = _expected(_tiny("deepseek_v3"), entries)
    assert "model.layers.0.mlp.gate_proj" in expected and "model.layers.1.mlp.shared_experts.up_proj" in expected
    assert plain != expected  # PEFT drops the dense MLP and the shared experts
    with compat_patches.patched(NAME):
        outcome, peft_model = _run("deepseek_v3", entries)
    assert outcome == expected
    config = peft_model.peft_config["default"]
    # PEFT's representation where it has the scope: entries, leaf parameter names, PEFT's rank key
    assert config.target_modules == set(entries)
    assert set(config.target_parameters) == {"gate_up_proj", "down_proj"}
    assert config.rank_pattern == {r".*\.gate_up_proj": 2 * R}


@pytest.mark.requires(**AFFECTED)
def test_layers_to_transform_limits_the_experts_too():
    # PEFT applies layers_to_transform to modules but turns the expert names into leaf parameter names,
    # which select the experts of every layer
    entries = ["q_proj", "gate_proj", "up_proj", "down_proj"]
    expected = {"model.layers.1.self_attn.q_proj": (R, ALPHA), "model.layers.1.mlp.experts.down_proj": (R, ALPHA),
                "model.layers.1.mlp.experts.gate_up_proj": (2 * R, 2 * ALPHA)}
    plain, _ = _run("qwen3_moe", entries, layers_to_transform=[1])
    assert plain != expected and "model.layers.0.mlp.experts.down_proj" in plain
    with compat_patches.patched(NAME):
        outcome, peft_model = _run("qwen3_moe", entries, layers_to_transform=[1])
    assert outcome == expected
    assert set(peft_model.peft_config["default"].target_parameters) == {
        "model.layers.1.mlp.experts.down_proj", "model.layers.1.mlp.experts.gate_up_proj"}


@pytest.mark.requires(**AFFECTED)
def test_qwen2_moe_shared_expert_stays_right():
    # Qwen2-MoE is not in PEFT's conversion table: right without and with the patch
    entries = _shared("qwen2_moe", 1)
    plain, _ = _run("qwen2_moe", entries)
    with compat_patches.patched(NAME):
        patched, _ = _run("qwen2_moe", entries)
    assert plain == patched == {n: (R, ALPHA) for n in entries}


@pytest.mark.requires(**AFFECTED)
@pytest.mark.parametrize("entries", [["q_proj", "gate_proj", "up_proj", "down_proj"], ["k_proj", "v_proj"],
                                     ["gate", "down_proj", "gate_proj", "up_proj"]])
def test_where_peft_is_right_the_config_is_peft_own(entries):
    plain, plain_model = _run("qwen3_moe", entries)
    with compat_patches.patched(NAME):
        patched, patched_model = _run("qwen3_moe", entries)
    assert patched == plain == _expected_with_router(entries)
    assert _view(patched_model.peft_config["default"]) == _view(plain_model.peft_config["default"])


def _expected_with_router(entries):
    out = _expected(_tiny("qwen3_moe"), entries)
    if "gate" in entries:
        out.update({f"model.layers.{i}.mlp.gate.weight": (R, ALPHA) for i in range(3)})
    return out


@pytest.mark.requires(peft=">=0.20.0.dev0", transformers=">=5.0.0rc0")  # 0.19.x cannot load MoE adapters
def test_layer_scoped_entries_use_full_names_and_round_trip(tmp_path):
    # only layer 2's routed experts: PEFT's leaf names would select every layer, so full names are written
    from peft import PeftModel

    entries = ["model.layers.2.mlp.experts.gate_proj", "model.layers.2.mlp.experts.up_proj",
               "model.layers.2.self_attn.q_proj"]
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(0))
    with compat_patches.patched(NAME):
        outcome, peft_model = _run("qwen3_moe", entries, init_lora_weights=False)
        config = peft_model.peft_config["default"]
        assert outcome == {"model.layers.2.mlp.experts.gate_up_proj": (2 * R, 2 * ALPHA),
                           "model.layers.2.self_attn.q_proj": (R, ALPHA)}
        assert config.target_modules == {"model.layers.2.self_attn.q_proj"}
        assert set(config.target_parameters) == {"model.layers.2.mlp.experts.gate_up_proj"}
        with torch.no_grad():
            before = peft_model(input_ids=ids).logits
        peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(_tiny("qwen3_moe"), tmp_path)  # without the patch
    assert _adapted(reloaded) == outcome
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, before)


@pytest.mark.requires(peft=">=0.20.0.dev0", transformers=">=5.0.0rc0")  # 0.19.x cannot load MoE adapters
def test_adapter_saved_without_patch_loads_with_it(tmp_path):
    from peft import PeftModel

    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(0))
    outcome, peft_model = _run("deepseek_v3", ["gate_proj", "up_proj", "down_proj"], init_lora_weights=False)
    with torch.no_grad():
        before = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(tmp_path)
    with compat_patches.patched(NAME):
        reloaded = PeftModel.from_pretrained(_tiny("deepseek_v3"), tmp_path)
        assert _adapted(reloaded) == outcome
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids=ids).logits, before)


@pytest.mark.requires(**AFFECTED)
def test_warnings_only_peft_rank_key_warning_and_our_explanation(caplog):
    import warnings

    entries = ["model.layers.1.mlp.experts.gate_proj", "model.layers.1.mlp.experts.up_proj"]
    with compat_patches.patched(NAME), warnings.catch_warnings(record=True) as caught, \
            caplog.at_level(logging.WARNING, logger="compat_patches"):
        warnings.simplefilter("always")
        outcome, _ = _run("qwen3_moe", entries)
    assert outcome == {"model.layers.1.mlp.experts.gate_up_proj": (2 * R, 2 * ALPHA)}
    peft_warnings = sorted(str(w.message).split(" keys ")[0] for w in caught
                           if w.category in (RuntimeWarning, UserWarning) and "peft" in w.filename)
    assert not any("no module was matched" in m for m in peft_warnings)
    ours = [r.getMessage() for r in caplog.records if r.name == "compat_patches" and NAME in r.getMessage()]
    if any("did not match any targeted module" in str(w.message) for w in caught):
        assert peft_warnings == ["The following alpha_pattern", "The following rank_pattern"]
        assert len(ours) == 1 and "expect PEFT's warning" in ours[0] and "gate_up_proj" in ours[0]
    else:  # releases before PEFT added that check (0.19.x)
        assert peft_warnings == [] and ours == []


@pytest.mark.requires(**AFFECTED)
@pytest.mark.parametrize("order", ["list-first", "regex-first"])
@pytest.mark.parametrize("revert", ["none", "list", "regex"])
def test_the_two_records_compose(order, revert):
    # both wrap convert_peft_config_for_transformers; applied in either order, and with either one reverted
    # (the first-applied one sits under the other), each keeps handling its own kind of target_modules
    names = [NAME, REGEX] if order == "list-first" else [REGEX, NAME]
    entries = _shared("deepseek_v3", 1)
    regex = r"model\.layers\.2\.mlp\.(shared_experts\.(gate|up|down)_proj|experts\.(gate|up|down)_proj)"
    scopes = {name: compat_patches.patched(name) for name in names}
    try:
        for name in names:
            scopes[name].__enter__()
        if revert != "none":
            scopes.pop(NAME if revert == "list" else REGEX).__exit__(None, None, None)
        status = compat_patches.report()
        assert status[NAME].status == ("applied" if revert != "list" else "pending")
        list_outcome, _ = _run("deepseek_v3", entries)
        regex_outcome, _ = _run("deepseek_v3", regex)
    finally:
        for scope in scopes.values():
            scope.__exit__(None, None, None)
    list_right = list_outcome == {n: (R, ALPHA) for n in entries}
    regex_right = regex_outcome == {
        **{n: (R, ALPHA) for n in _shared("deepseek_v3", 2)},
        "model.layers.2.mlp.experts.gate_up_proj": (2 * R, 2 * ALPHA),
        "model.layers.2.mlp.experts.down_proj": (R, ALPHA)}
    assert list_right == (revert != "list")
    assert regex_right == (revert != "regex")


@pytest.mark.requires(peft="<0.19.0.dev0")
def test_releases_without_conversion_report_not_needed():
    with compat_patches.patched(NAME) as rep:
        assert rep[NAME].status == "not-needed"
