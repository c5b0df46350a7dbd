"""compat_patches.moe.packed_experts: oracle = transformers 5's own reverse weight conversion.

`save_pretrained(save_original_format=True)` (the default) runs
`transformers.core_model_loading.revert_weight_conversion(model, state_dict)`, which undoes the
`qwen2_moe` WeightConverter (MergeModulelist + Concatenate) and writes the original per-expert v4
keys. Our expansion must give exactly the same names and bitwise the same tensors, as views.
"""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from compat_patches.moe import (  # noqa: E402
    PACKED_NATIVE_MODEL_TYPES,
    expand_packed_experts,
    iter_vllm_compatible_moe_params,
    packed_expert_kind,
)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

E, I, H = 4, 6, 20  # H != 2I != I so a swapped dimension cannot pass a shape check


def _storage_ptr(t):
    return t.untyped_storage().data_ptr()


def _randomize(model, seed=0):
    """Distinct values everywhere, so a swapped gate/up or expert index cannot compare equal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
    return model


# ------------------------------------------------------------------ tiny models from configs

def _qwen3_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        vocab_size=64, hidden_size=H, intermediate_size=32, moe_intermediate_size=I,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        num_experts=E, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
    )
    return Qwen3MoeForCausalLM(cfg)


_QWEN35_TEXT = dict(
    vocab_size=64, hidden_size=H, moe_intermediate_size=I, shared_expert_intermediate_size=I,
    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_experts=E,
    num_experts_per_tok=2, layer_types=["linear_attention", "full_attention"],
    linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=8, linear_value_head_dim=8,
)


def _qwen3_5_moe_text():
    import transformers

    if not hasattr(transformers, "Qwen3_5MoeForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no Qwen3.5-MoE")
    return transformers.Qwen3_5MoeForCausalLM(transformers.Qwen3_5MoeTextConfig(**_QWEN35_TEXT))


def _qwen3_5_moe_vl():
    import transformers

    if not hasattr(transformers, "Qwen3_5MoeForConditionalGeneration"):
        pytest.skip(f"transformers {transformers.__version__} has no Qwen3.5-MoE")
    cfg = transformers.Qwen3_5MoeConfig(
        text_config=dict(_QWEN35_TEXT),
        vision_config=dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=H),
    )
    return transformers.Qwen3_5MoeForConditionalGeneration(cfg)


def _qwen3_vl_moe():
    import transformers

    if not hasattr(transformers, "Qwen3VLMoeForConditionalGeneration"):
        pytest.skip(f"transformers {transformers.__version__} has no Qwen3-VL-MoE")
    cfg = transformers.Qwen3VLMoeConfig(
        text_config=dict(
            vocab_size=64, hidden_size=H, intermediate_size=32, moe_intermediate_size=I,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
            num_experts=E, num_experts_per_tok=2,
            rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=16,
                           out_hidden_size=H, deepstack_visual_indexes=[0]),
    )
    return transformers.Qwen3VLMoeForConditionalGeneration(cfg)


ALL_MODELS = {
    "qwen3_moe": _qwen3_moe,
    "qwen3_5_moe_text": _qwen3_5_moe_text,
    "qwen3_5_moe": _qwen3_5_moe_vl,
    "qwen3_vl_moe": _qwen3_vl_moe,
}


def _revert(model, state_dict):
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # pragma: no cover - transformers 4.x
        pytest.skip("this transformers has no revert_weight_conversion (not 5.x)")
    return revert_weight_conversion(model, dict(state_dict))


# ------------------------------------------------------------------ oracle: reverse conversion

@pytest.mark.requires(transformers=">=5.0.0rc0")
@pytest.mark.parametrize("model_id", list(ALL_MODELS))
def test_expansion_equals_transformers_reverse_conversion_bitwise(model_id):
    model = _randomize(ALL_MODELS[model_id]())
    state_dict = model.state_dict()
    packed = [k for k in state_dict if packed_expert_kind(k)]
    assert packed, "the tiny model must have packed experts (else the test proves nothing)"

    oracle = _revert(model, state_dict)
    if any(packed_expert_kind(k) for k in oracle):
        # Qwen3-VL-MoE's Hub checkpoints are fused ([E, H, 2I]); from some 5.x release on its
        # conversion is a Transpose, not qwen2_moe's MergeModulelist (5.0.0rc2 still used the latter),
        # so there is no per-expert v4 layout to compare with: the forward test below covers it.
        assert model_id == "qwen3_vl_moe", "only Qwen3-VL-MoE may keep packed keys in v4 format"
        pytest.skip("this transformers saves Qwen3-VL-MoE experts fused (no per-expert oracle)")
    ours = dict(expand_packed_experts(state_dict.items()))

    assert sorted(ours) == sorted(oracle)  # the whole state dict, names exactly
    n_expert_keys = 0
    for name, tensor in oracle.items():
        mine = ours[name]
        assert mine.dtype == tensor.dtype and mine.shape == tensor.shape, name
        assert torch.equal(mine, tensor), name
        if ".mlp.experts." in name:
            n_expert_keys += 1
            assert mine.is_contiguous(), name
    assert n_expert_keys == 3 * E * len(packed) // 2

    # zero-copy: every expert tensor lives in the storage of its packed parameter
    for name in packed:
        ptr = _storage_ptr(state_dict[name])
        for sub_name, sub in iter_vllm_compatible_moe_params(name, state_dict[name]):
            assert _storage_ptr(sub) == ptr, sub_name


@pytest.mark.requires(transformers=">=5.0.0rc0")
@pytest.mark.parametrize("builder", ALL_MODELS.values(), ids=ALL_MODELS)
def test_expanded_experts_compute_what_the_packed_module_computes(builder):
    _check_forward_matches_expansion(_randomize(builder()))


def _check_forward_matches_expansion(model):
    if hasattr(model, "set_experts_implementation"):  # 5.x releases that dispatch grouped_mm
        model.set_experts_implementation("eager")
    checked = 0
    for mod_name, module in model.named_modules():
        if not (hasattr(module, "gate_up_proj") and hasattr(module, "down_proj")):
            continue
        if not isinstance(getattr(module, "gate_up_proj"), torch.nn.Parameter):
            continue
        prefix = f"{mod_name}."
        params = dict(expand_packed_experts(
            (prefix + n, p.detach()) for n, p in module.named_parameters(recurse=False)))
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(5, H, generator=gen)
        top_k_index = torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0], [0, 2]]) % E
        top_k_weights = torch.rand(5, 2, generator=gen)
        with torch.no_grad():
            got = module(x, top_k_index, top_k_weights)
        ref = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for k in range(top_k_index.shape[1]):
                e = int(top_k_index[t, k])
                w = lambda p: params[f"{prefix}{e}.{p}.weight"]  # noqa: E731
                hidden = module.act_fn(x[t] @ w("gate_proj").T) * (x[t] @ w("up_proj").T)
                ref[t] += top_k_weights[t, k] * (hidden @ w("down_proj").T)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked, "no packed experts module found"


@pytest.mark.requires(transformers=">=5.0.0rc0")
def test_reassembling_the_expansion_gives_back_the_packed_tensors_bitwise():
    model = _randomize(_qwen3_moe())
    for name, tensor in model.state_dict().items():
        kind = packed_expert_kind(name)
        if kind is None:
            continue
        parts = dict(iter_vllm_compatible_moe_params(name, tensor))
        base = name[: -len(kind)]
        if kind == "gate_up_proj":
            again = torch.stack([
                torch.cat([parts[f"{base}{e}.gate_proj.weight"], parts[f"{base}{e}.up_proj.weight"]])
                for e in range(E)])
        else:
            again = torch.stack([parts[f"{base}{e}.down_proj.weight"] for e in range(E)])
        assert torch.equal(again, tensor) and again.dtype == tensor.dtype


# ------------------------------------------------------------------ contract of the helper

def test_names_with_or_without_trailing_weight():
    t = torch.randn(3, 2 * I, H)
    a = list(iter_vllm_compatible_moe_params("m.layers.0.mlp.experts.gate_up_proj", t))
    b = list(iter_vllm_compatible_moe_params("m.layers.0.mlp.experts.gate_up_proj.weight", t))
    assert [n for n, _ in a] == [n for n, _ in b] == [
        f"m.layers.0.mlp.experts.{e}.{p}.weight" for e in range(3) for p in ("gate_proj", "up_proj")]
    assert all(x is not y and torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    d = torch.randn(3, H, I)
    assert [n for n, _ in iter_vllm_compatible_moe_params("mlp.experts.down_proj.weight", d)] == [
        f"mlp.experts.{e}.down_proj.weight" for e in range(3)]


def test_views_are_zero_copy_contiguous_and_share_storage():
    t = torch.randn(E, 2 * I, H, dtype=torch.bfloat16)
    d = torch.randn(E, H, I, dtype=torch.bfloat16)
    out = list(expand_packed_experts([("x.mlp.experts.gate_up_proj", t), ("x.mlp.experts.down_proj", d)]))
    assert len(out) == 3 * E
    item = t.element_size()
    for name, v in out:
        src = t if "gate" in name or "up_proj" in name else d
        assert _storage_ptr(v) == _storage_ptr(src) and v.is_contiguous(), name
        e = int(name.split(".")[-3])
        if ".gate_proj" in name:
            assert v.data_ptr() == t.data_ptr() + e * 2 * I * H * item
        elif ".up_proj" in name:
            assert v.data_ptr() == t.data_ptr() + (e * 2 * I + I) * H * item
        else:
            assert v.data_ptr() == d.data_ptr() + e * H * I * item
    # writes through the view land in the packed tensor: proves it is not a copy
    out[1][1].fill_(7)
    assert torch.all(t[0, I:] == 7)


def test_dense_and_per_expert_pairs_pass_through_as_the_same_objects():
    pairs = [
        ("model.embed_tokens.weight", torch.randn(4, 3)),
        ("model.layers.0.mlp.gate.weight", torch.randn(E, H)),
        ("model.layers.0.mlp.experts.3.gate_proj.weight", torch.randn(I, H)),
        ("model.layers.0.mlp.experts.3.down_proj.weight", torch.randn(H, I)),
        ("model.layers.0.mlp.shared_expert.gate_proj.weight", torch.randn(I, H)),
        ("model.layers.0.mlp.experts.gate_up_proj_bias", torch.randn(E, 2 * I)),
        ("model.layers.0.mlp.experts.gate_up_proj.lora_A.weight", torch.randn(2, H)),
        ("model.layers.0.mlp.gate_up_proj.weight", torch.randn(2 * I, H)),  # dense fused MLP
    ]
    out = list(expand_packed_experts(iter(pairs)))
    assert len(out) == len(pairs) and all(a is b for a, b in zip(out, pairs))
    for name, t in pairs:
        (pair,) = iter_vllm_compatible_moe_params(name, t)
        assert pair[0] is name and pair[1] is t


def test_gpt_oss_style_packed_experts_pass_through_with_model_type():
    assert "gpt_oss" in PACKED_NATIVE_MODEL_TYPES
    pairs = [("model.layers.0.mlp.experts.gate_up_proj", torch.randn(E, H, 2 * I)),
             ("model.layers.0.mlp.experts.down_proj", torch.randn(E, I, H))]
    out = list(expand_packed_experts(pairs, model_type="gpt_oss"))
    assert len(out) == 2 and all(a is b for a, b in zip(out, pairs))


def test_streaming_pulls_one_pair_at_a_time():
    pulled = []

    def source():
        for i in range(3):
            pulled.append(i)
            yield f"l.{i}.mlp.experts.down_proj", torch.zeros(2, H, I)

    gen = expand_packed_experts(source())
    next(gen)
    assert pulled == [0]
    assert len(list(gen)) == 5 and pulled == [0, 1, 2]


@pytest.mark.parametrize("name, shape, needle", [
    ("model.layers.7.mlp.experts.gate_up_proj", (2 * I, H), "rank 2"),
    ("model.layers.7.mlp.experts.gate_up_proj.weight", (E, 2 * I, H, 1), "rank 4"),
    ("model.layers.7.mlp.experts.down_proj", (H, I), "rank 2"),
    ("model.layers.7.mlp.experts.gate_up_proj", (E, 2 * I + 1, H), "odd"),
])
def test_malformed_packed_tensor_raises_naming_parameter_and_shape(name, shape, needle):
    with pytest.raises(ValueError) as info:
        iter_vllm_compatible_moe_params(name, torch.zeros(shape))  # eager: no next() needed
    msg = str(info.value)
    assert name in msg and str(tuple(shape)) in msg and needle in msg
    with pytest.raises(ValueError, match="model.layers.7"):
        list(expand_packed_experts([("ok.weight", torch.zeros(1)), (name, torch.zeros(shape))]))


def _numpy_zeros(shape):
    return pytest.importorskip("numpy").zeros(shape)


@pytest.mark.parametrize("make, given", [
    (lambda: None, "NoneType"),
    (lambda: _numpy_zeros((E, 2 * I, H)), "ndarray"),
    (lambda: torch.zeros(E, 2 * I, H).tolist(), "list"),
    (lambda: "w", "str"),
])
@pytest.mark.parametrize("name", ["model.layers.7.mlp.experts.gate_up_proj",
                                  "model.layers.7.mlp.experts.down_proj.weight"])
def test_packed_parameter_that_is_not_a_tensor_raises_naming_it(name, make, given):
    value = make()
    for call in (lambda: iter_vllm_compatible_moe_params(name, value),
                 lambda: list(expand_packed_experts([(name, value)]))):
        with pytest.raises(TypeError) as info:
            call()
        msg = str(info.value)
        assert name in msg and "tensor must be a torch.Tensor" in msg and given in msg


@pytest.mark.parametrize("name", [None, b"mlp.experts.down_proj", 3, ("mlp.experts.down_proj",)])
def test_parameter_name_that_is_not_a_str_raises_naming_it(name):
    for call in (lambda: packed_expert_kind(name),
                 lambda: iter_vllm_compatible_moe_params(name, torch.zeros(E, H, I)),
                 lambda: list(expand_packed_experts([(name, torch.zeros(E, H, I))]))):
        with pytest.raises(TypeError) as info:
            call()
        msg = str(info.value)
        assert "name must be a str" in msg and repr(name) in msg


@pytest.mark.parametrize("named_tensors, given, expected", [
    ({"m.mlp.experts.down_proj": torch.zeros(E, H, I)}, "dict", ".items()"),   # a state dict itself
    (None, "None", "iterable of (name, tensor) pairs"),
    (torch.zeros(E, H, I).numel(), repr(E * H * I), "iterable of (name, tensor) pairs"),
])
def test_expand_refuses_what_is_not_a_stream_of_pairs_eagerly(named_tensors, given, expected):
    with pytest.raises(TypeError) as info:
        expand_packed_experts(named_tensors)  # eager: no next() needed
    msg = str(info.value)
    assert "named_tensors" in msg and given in msg and expected in msg


@pytest.mark.parametrize("item", ["m.embed_tokens.weight", ("m.mlp.experts.down_proj",),
                                  ("m.mlp.experts.down_proj", torch.zeros(E, H, I), "extra")])
def test_expand_refuses_an_item_that_is_not_a_pair(item):
    with pytest.raises(TypeError) as info:
        list(expand_packed_experts([("ok.weight", torch.zeros(1)), item]))
    msg = str(info.value)
    assert "named_tensors" in msg and "(name, tensor) pairs" in msg and repr(item)[:20] in msg


@pytest.mark.parametrize("model_type", [["gpt_oss"], 1, object()])
def test_model_type_that_is_not_a_str_raises_eagerly(model_type):
    with pytest.raises(TypeError) as info:
        expand_packed_experts([], model_type=model_type)
    msg = str(info.value)
    assert "model_type must be a str" in msg and repr(model_type)[:20] in msg


def test_works_on_full_tensors_of_an_fsdp2_sharded_module_and_refuses_raw_dtensors(gloo_world_1):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.randn(E, 2 * I, H))
            self.down_proj = torch.nn.Parameter(torch.randn(E, H, I))

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Module()
            self.mlp.experts = Experts()

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Block(), Block()])
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fully_shard(model)
    sharded = model.state_dict()
    assert all(isinstance(v, DTensor) for v in sharded.values())

    with pytest.raises(TypeError, match="full_tensor"):
        iter_vllm_compatible_moe_params("layers.0.mlp.experts.gate_up_proj", sharded["layers.0.mlp.experts.gate_up_proj"])

    full = ((n, t.full_tensor()) for n, t in sharded.items())
    ours = dict(expand_packed_experts(full))
    expected = dict(expand_packed_experts(reference.items()))
    assert sorted(ours) == sorted(expected) and len(ours) == 2 * 3 * E
    assert all(type(v) is torch.Tensor and torch.equal(v, expected[k]) for k, v in ours.items())


@pytest.fixture(scope="module")
def gloo_world_1(tmp_path_factory):
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    store = dist.FileStore(str(tmp_path_factory.mktemp("gloo") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_importing_compat_patches_moe_imports_no_torch():
    code = "import sys, compat_patches, compat_patches.moe; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ property tests

_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int8]


@settings(max_examples=60, deadline=None)
@given(
    experts=st.integers(1, 9), inter=st.integers(1, 12), hidden=st.integers(1, 12),
    dtype=st.sampled_from(_DTYPES), prefix=st.sampled_from(["", "model.layers.3.", "a.b.language_model.layers.0."]),
    suffix=st.sampled_from(["", ".weight"]), seed=st.integers(0, 2**16),
)
def test_property_expand_then_reassemble_is_identity(experts, inter, hidden, dtype, prefix, suffix, seed):
    gen = torch.Generator().manual_seed(seed)
    gate_up = (torch.randn(experts, 2 * inter, hidden, generator=gen) * 50).to(dtype)
    down = (torch.randn(experts, hidden, inter, generator=gen) * 50).to(dtype)
    pairs = [(f"{prefix}mlp.experts.gate_up_proj{suffix}", gate_up),
             (f"{prefix}mlp.experts.down_proj{suffix}", down)]
    out = dict(expand_packed_experts(pairs))
    assert len(out) == 3 * experts
    base = f"{prefix}mlp.experts."
    for e in range(experts):
        g, u, d = (out[f"{base}{e}.{p}.weight"] for p in ("gate_proj", "up_proj", "down_proj"))
        assert g.shape == u.shape == (inter, hidden) and d.shape == (hidden, inter)
        assert g.dtype == u.dtype == d.dtype == dtype
        assert g.is_contiguous() and u.is_contiguous() and d.is_contiguous()
        assert _storage_ptr(g) == _storage_ptr(u) == _storage_ptr(gate_up)
        assert _storage_ptr(d) == _storage_ptr(down)
        assert torch.equal(g, gate_up[e, :inter]) and torch.equal(u, gate_up[e, inter:])
    assert torch.equal(torch.stack([torch.cat([out[f"{base}{e}.gate_proj.weight"],
                                               out[f"{base}{e}.up_proj.weight"]]) for e in range(experts)]),
                       gate_up)
    assert torch.equal(torch.stack([out[f"{base}{e}.down_proj.weight"] for e in range(experts)]), down)


@settings(max_examples=30, deadline=None)
@given(experts=st.integers(1, 5), odd=st.integers(0, 6).map(lambda k: 2 * k + 1), hidden=st.integers(1, 6))
def test_property_odd_gate_up_dimension_always_raises(experts, odd, hidden):
    with pytest.raises(ValueError, match=r"\(%d, %d, %d\)" % (experts, odd, hidden)):
        iter_vllm_compatible_moe_params("mlp.experts.gate_up_proj", torch.zeros(experts, odd, hidden))
