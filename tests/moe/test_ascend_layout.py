"""compat_patches.moe.ascend_layout: layout conversions and the per-expert processed-layout writer.

The reference for where a shard goes is vLLM's FusedMoE weight loader
(vllm/model_executor/layers/fused_moe/layer.py ``FusedMoE._load_w13`` / ``_load_w2`` in vLLM 0.18-0.25,
routed_experts.py ``RoutedExperts._load_w13`` / ``_load_w2`` from 0.26): the checkpoint tensor is
narrowed on its intermediate dim to ``[r*I/tp, (r+1)*I/tp)``; gate goes to w13 rows ``[0, I_tp)``,
up to rows ``[I_tp, 2*I_tp)``, down to the whole w2 expert. ``reference_load`` below reproduces that
(and tests/patches/vllm_ascend/test_moe_layout.py checks it against vLLM's own functions).
"""

import pytest

torch = pytest.importorskip("torch")

from compat_patches.moe import ascend_layout as al  # noqa: E402


def reference_load(w13, w2, expert_id, gate, up, down, tp_rank, tp_size):
    """vLLM's sharding, on PREPROCESSED tensors w13 [E, 2I_tp, H], w2 [E, H, I_tp]."""
    i_tp = w2.shape[2]
    per_rank = gate.shape[0] // tp_size
    w13[expert_id].narrow(0, 0, i_tp).copy_(gate.narrow(0, per_rank * tp_rank, per_rank))
    w13[expert_id].narrow(0, i_tp, i_tp).copy_(up.narrow(0, per_rank * tp_rank, per_rank))
    w2[expert_id].copy_(down.narrow(1, per_rank * tp_rank, per_rank))


def random_experts(E, H, I, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)
    return [(r(I, H), r(I, H), r(H, I)) for _ in range(E)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tp_size", [1, 2, 4])
def test_writer_matches_vllm_sharding_then_processing(tp_size, dtype):
    E, H, I = 3, 12, 8
    experts = random_experts(E, H, I, seed=tp_size, dtype=dtype)
    for rank in range(tp_size):
        i_tp = I // tp_size
        w13 = torch.zeros(E, 2 * i_tp, H, dtype=dtype)
        w2 = torch.zeros(E, H, i_tp, dtype=dtype)
        for e, (gate, up, down) in enumerate(experts):
            reference_load(w13, w2, e, gate, up, down, rank, tp_size)
        expected13, expected2 = al.w13_to_processed(w13), al.w2_to_processed(w2)

        p13 = torch.full((E, H, 2 * i_tp), float("nan"), dtype=dtype)
        p2 = torch.full((E, i_tp, H), float("nan"), dtype=dtype)
        for e, (gate, up, down) in enumerate(experts):
            al.write_expert_shard(p13, gate, "gate", e, tp_rank=rank, tp_size=tp_size)
            al.write_expert_shard(p13, up, "w3", e, tp_rank=rank, tp_size=tp_size)
            al.write_expert_shard(p2, down, "down_proj", e, tp_rank=rank, tp_size=tp_size)
        assert torch.equal(p13, expected13)
        assert torch.equal(p2, expected2)


def test_writer_all_experts_and_pre_sharded():
    E, H, I, tp = 4, 6, 8, 2
    experts = random_experts(E, H, I, seed=7)
    gates = torch.stack([x[0] for x in experts])
    ups = torch.stack([x[1] for x in experts])
    downs = torch.stack([x[2] for x in experts])
    for rank in range(tp):
        per = I // tp
        w13 = torch.zeros(E, 2 * per, H)
        w2 = torch.zeros(E, H, per)
        for e, (g, u, d) in enumerate(experts):
            reference_load(w13, w2, e, g, u, d, rank, tp)
        p13, p2 = torch.zeros(E, H, 2 * per), torch.zeros(E, per, H)
        al.write_expert_shard(p13, gates, "w1", tp_rank=rank, tp_size=tp)          # 3-D: all experts
        al.write_expert_shard(p13, ups, "w3", tp_rank=rank, tp_size=tp)
        al.write_expert_shard(p2, downs, "w2", tp_rank=rank, tp_size=tp)
        assert torch.equal(p13, al.w13_to_processed(w13)) and torch.equal(p2, al.w2_to_processed(w2))
        q13, q2 = torch.zeros_like(p13), torch.zeros_like(p2)
        for e in range(E):                                                       # already sliced
            al.write_expert_shard(q13, gates[e, rank * per:(rank + 1) * per], "w1", e, pre_sharded=True)
            al.write_expert_shard(q13, ups[e, rank * per:(rank + 1) * per], "w3", e, pre_sharded=True)
            al.write_expert_shard(q2, downs[e, :, rank * per:(rank + 1) * per], "w2", e, pre_sharded=True)
        assert torch.equal(q13, p13) and torch.equal(q2, p2)


def test_writer_is_in_place_and_allocates_nothing_of_the_parameter_size():
    E, H, I = 8, 64, 32
    p13 = torch.zeros(E, H, 2 * I)
    ptr = p13.data_ptr()
    gate = torch.randn(I, H)
    out = al.write_expert_shard(p13, gate, "w1", 5)
    assert p13.data_ptr() == ptr
    assert out.data_ptr() == p13[5].data_ptr()           # the returned view aliases the storage
    assert out.shape == (I, H) and not out.is_contiguous()
    assert torch.equal(p13[5, :, :I], gate.t()) and p13[5, :, I:].abs().sum() == 0
    assert p13[:5].abs().sum() == 0 and p13[6:].abs().sum() == 0


def test_roundtrips_are_exact_and_shapes_are_checked():
    w13 = torch.randn(2, 6, 5)  # [E, 2I, H], I=3, H=5
    w2 = torch.randn(2, 5, 3)   # [E, H, I]
    p13 = al.w13_to_processed(w13, hidden_size=5, intermediate_size=3)
    p2 = al.w2_to_processed(w2, hidden_size=5, intermediate_size=3)
    assert p13.shape == (2, 5, 6) and p13.is_contiguous() and p2.shape == (2, 3, 5)
    assert torch.equal(al.w13_to_preprocessed(p13, hidden_size=5, intermediate_size=3), w13)
    assert torch.equal(al.w2_to_preprocessed(p2, hidden_size=5, intermediate_size=3), w2)
    view = al.preprocessed_view(p13)
    assert view.data_ptr() == p13.data_ptr() and torch.equal(view, w13)
    with pytest.raises(ValueError, match=r"\[E, 2\*I_tp, H\]"):
        al.w13_to_processed(p13, hidden_size=5, intermediate_size=3)     # already processed
    with pytest.raises(ValueError, match=r"\[E, I_tp, H\]"):
        al.w2_to_preprocessed(w2, hidden_size=5, intermediate_size=3)
    with pytest.raises(ValueError, match="3-D"):
        al.w13_to_processed(torch.zeros(4, 4))


@pytest.mark.parametrize("kwargs, message", [
    (dict(shard_id="w4"), "shard_id must be one of"),
    (dict(shard_id="gate", expert_id=9), "expert_id 9 out of range"),
    (dict(shard_id="gate", tp_rank=2, tp_size=2), "tp_rank"),
    (dict(shard_id="gate", tp_size=0), "tp_size"),
    (dict(shard_id="gate", loaded=torch.zeros(8, 7)), "hidden size"),
    (dict(shard_id="gate", loaded=torch.zeros(6, 5), tp_size=4), "does not give"),
    (dict(shard_id="gate", loaded=torch.zeros(1, 8, 5)), "must be 2-D"),
    (dict(shard_id="gate", loaded=torch.zeros(2, 5), pre_sharded=True), "pre-sharded"),
])
def test_writer_errors(kwargs, message):
    p13 = torch.zeros(2, 5, 8)   # E=2, H=5, I_tp=4
    loaded = kwargs.pop("loaded", torch.zeros(4, 5))
    shard_id = kwargs.pop("shard_id")
    expert_id = kwargs.pop("expert_id", 0)
    with pytest.raises(ValueError, match=message):
        al.write_expert_shard(p13, loaded, shard_id, expert_id, **kwargs)


def test_not_act_and_mul_holds_only_gate():
    p13 = torch.zeros(1, 5, 4)
    gate = torch.randn(4, 5)
    al.write_expert_shard(p13, gate, "w1", 0, is_act_and_mul=False)
    assert torch.equal(p13[0], gate.t())
    with pytest.raises(ValueError, match="only w1"):
        al.write_expert_shard(p13, gate, "w3", 0, is_act_and_mul=False)


# ------------------------------------------------------------------ hostile input: clear errors
# E=2, H=5, I_tp=4; each function gets a tensor in the layout it expects, so only the argument fails.
_CONVERTERS = {
    "w13_to_processed": (al.w13_to_processed, "w13", (2, 8, 5)),
    "w13_to_preprocessed": (al.w13_to_preprocessed, "w13", (2, 5, 8)),
    "w2_to_processed": (al.w2_to_processed, "w2", (2, 5, 4)),
    "w2_to_preprocessed": (al.w2_to_preprocessed, "w2", (2, 4, 5)),
    "expert_shard_view": (lambda t, **kw: al.expert_shard_view(t, "w1", 0, **kw), "processed",
                          (2, 5, 8)),
}
_SIZES = dict(hidden_size=5, intermediate_size=4)


@pytest.mark.parametrize("bad, error", [
    (str, TypeError),            # "4": 2 * "4" == "44"
    (float, TypeError),
    (lambda v: True, TypeError),
    (lambda v: -v, ValueError),
    (lambda v: 0, ValueError),
])
@pytest.mark.parametrize("size", list(_SIZES))
@pytest.mark.parametrize("function", list(_CONVERTERS))
def test_sizes_must_be_positive_ints(function, size, bad, error):
    fn, _, shape = _CONVERTERS[function]
    value = bad(_SIZES[size])
    with pytest.raises(error) as info:
        fn(torch.zeros(shape), **{size: value})
    msg = str(info.value)
    assert f"{size} must be a positive int" in msg and f"got {value!r}" in msg


def _numpy_zeros(shape):
    return pytest.importorskip("numpy").zeros(shape)


_NOT_TENSORS = [
    (lambda shape: None, "NoneType"),
    (_numpy_zeros, "ndarray"),
    (lambda shape: torch.zeros(shape).tolist(), "list"),
]


@pytest.mark.parametrize("make, given", _NOT_TENSORS)
@pytest.mark.parametrize("function", list(_CONVERTERS) + ["preprocessed_view"])
def test_not_a_tensor_raises_naming_the_argument(function, make, given):
    fn, arg, shape = _CONVERTERS.get(function, (al.preprocessed_view, "processed", (2, 5, 8)))
    with pytest.raises(TypeError) as info:
        fn(make(shape))
    msg = str(info.value)
    assert f"{arg} must be a torch.Tensor" in msg and given in msg


@pytest.mark.parametrize("make, given", _NOT_TENSORS)
@pytest.mark.parametrize("pre_sharded", [False, True])
def test_writer_not_a_tensor_raises_naming_the_argument(make, given, pre_sharded):
    p13 = torch.zeros(2, 5, 8)
    for args, arg in (((make((2, 5, 8)), torch.zeros(4, 5)), "processed"),
                      ((p13, make((4, 5))), "loaded_weight")):
        with pytest.raises(TypeError) as info:
            al.write_expert_shard(*args, "w1", 0, pre_sharded=pre_sharded)
        msg = str(info.value)
        assert msg.startswith(arg) and "must be a torch.Tensor" in msg and given in msg


@pytest.mark.parametrize("fn, shape", [(al.w13_to_processed, (2, 7, 5)),
                                       (al.w13_to_preprocessed, (2, 5, 7))])
def test_odd_gate_up_dimension_raises_without_sizes(fn, shape):
    with pytest.raises(ValueError) as info:
        fn(torch.zeros(shape))
    msg = str(info.value)
    assert "w13" in msg and str(list(shape)) in msg and "2*I_tp" in msg and "even" in msg


@pytest.mark.parametrize("shard_id, shape, sizes, layout", [
    ("w2", (2, 5, 8), _SIZES, "[E, I_tp, H]"),                      # the processed w13 as w2
    ("w2", (2, 5, 8), dict(intermediate_size=4), "[E, I_tp, H]"),
    ("w1", (2, 4, 5), dict(hidden_size=5), "[E, H, 2*I_tp]"),       # the processed w2 as w1
    ("up", (2, 4, 5), dict(intermediate_size=4), "[E, H, 2*I_tp]"),
])
def test_shard_view_of_the_other_projection_raises_when_sizes_are_given(shard_id, shape, sizes, layout):
    with pytest.raises(ValueError) as info:
        al.expert_shard_view(torch.zeros(shape), shard_id, 0, **sizes)
    msg = str(info.value)
    assert "processed" in msg and str(list(shape)) in msg and layout in msg
    p13, p2 = torch.randn(2, 5, 8), torch.randn(2, 4, 5)  # the right tensors: the very same views
    for tensor, shard in ((p13, "w1"), (p13, "w3"), (p2, "w2")):
        for expert_id in (None, 1):
            a = al.expert_shard_view(tensor, shard, expert_id)
            b = al.expert_shard_view(tensor, shard, expert_id, **_SIZES)
            assert a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and torch.equal(a, b)


@pytest.mark.parametrize("kwargs, error, needles", [
    (dict(expert_id=True), TypeError, ["expert_id must be an int or None", "got True"]),
    (dict(expert_id=1.0), TypeError, ["expert_id must be an int or None", "got 1.0"]),
    (dict(expert_id="0"), TypeError, ["expert_id must be an int or None", "got '0'"]),
    (dict(expert_id=-1), ValueError, ["expert_id -1 out of range", "0 <= expert_id < 2"]),
    (dict(is_act_and_mul="False"), TypeError, ["is_act_and_mul must be a bool", "got 'False'"]),
    (dict(tp_size=True), TypeError, ["tp_size must be a positive int", "got True"]),
    (dict(tp_size=2.0), TypeError, ["tp_size must be a positive int", "got 2.0"]),
    (dict(tp_rank=False), TypeError, ["tp_rank must be an int in [0, 1)", "got False"]),
    (dict(pre_sharded="no"), TypeError, ["pre_sharded must be a bool", "got 'no'"]),
])
def test_writer_ids_and_flags_of_the_wrong_type_or_range_raise(kwargs, error, needles):
    p13 = torch.zeros(2, 5, 8)   # E=2, H=5, I_tp=4
    expert_id = kwargs.pop("expert_id", 0)
    with pytest.raises(error) as info:
        al.write_expert_shard(p13, torch.zeros(4, 5), "w1", expert_id, **kwargs)
    assert all(n in str(info.value) for n in needles), str(info.value)
    assert p13.abs().sum() == 0   # nothing written


def test_reexported_from_package():
    import compat_patches.moe as moe
    for name in ("write_expert_shard", "w13_to_processed", "w13_to_preprocessed",
                 "w2_to_processed", "w2_to_preprocessed", "expert_shard_view"):
        assert getattr(moe, name) is getattr(al, name)
