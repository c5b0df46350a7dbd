"""compat_patches.moe.flashinfer_layout and the shared processed-layout protocol (torch only)."""

import types

import pytest

torch = pytest.importorskip("torch")

from compat_patches.moe import flashinfer_layout as fl  # noqa: E402
from compat_patches.moe import processed_layout as pl  # noqa: E402


def _w13(experts=3, i_tp=4, hidden=5):
    return torch.arange(experts * 2 * i_tp * hidden, dtype=torch.float32).reshape(
        experts, 2 * i_tp, hidden)


def test_swap_is_its_own_inverse_and_moves_halves():
    w13 = _w13()
    w31 = fl.swap_w13_halves(w13)
    assert torch.equal(w31[:, :4], w13[:, 4:]) and torch.equal(w31[:, 4:], w13[:, :4])
    assert torch.equal(fl.swap_w13_halves(w31), w13)
    assert torch.equal(fl.swap_w13_halves(w13[0]), w31[0])      # one expert [2I, H]


def test_shard_view_is_where_the_kernel_layout_keeps_each_shard():
    w13 = _w13()
    w31 = fl.swap_w13_halves(w13)
    assert torch.equal(fl.w31_shard_view(w31, "w1"), w13[:, :4])
    assert torch.equal(fl.w31_shard_view(w31, "w3"), w13[:, 4:])
    view = fl.w31_shard_view(w31, "w1")
    assert view.data_ptr() == w31[:, 4:].data_ptr()             # zero copy
    view.fill_(-1)
    assert (w31[:, 4:] == -1).all() and (w31[:, :4] != -1).all()


def test_kernel_shard_id_maps_w1_w3_and_keeps_w2():
    assert [fl.kernel_shard_id(s) for s in ("w1", "w3", "w2")] == ["w3", "w1", "w2"]
    with pytest.raises(ValueError, match="shard_id"):
        fl.kernel_shard_id("gate")


@pytest.mark.parametrize("bad", [torch.zeros(3, 5, 2), torch.zeros(4), "w13"])
def test_bad_inputs_raise(bad):
    with pytest.raises((TypeError, ValueError)):
        fl.swap_w13_halves(bad)
    with pytest.raises(ValueError, match="w2 is not reordered"):
        fl.w31_shard_view(_w13(), "w2")


def test_layer_state_protocol():
    layer = types.SimpleNamespace(w13_weight=torch.nn.Parameter(torch.zeros(1)),
                                  w2_weight=torch.nn.Parameter(torch.zeros(1)))
    names, attr = ("w13_weight", "w2_weight"), "_test_layout"
    assert pl.layer_state(layer, names, attr) is None
    pl.mark(layer.w13_weight, attr, "processed")
    assert pl.layer_state(layer, names, attr) == pl.MIXED
    pl.mark(layer.w2_weight, attr, "processed")
    assert pl.layer_state(layer, names, attr) == pl.PROCESSED
    pl.mark(layer.w2_weight, attr, "preprocessed")
    assert pl.layer_state(layer, names, attr) == pl.MIXED
    pl.mark(layer.w13_weight, attr, "preprocessed")
    assert pl.layer_state(layer, names, attr) == pl.PREPROCESSED
    # backend layouts count as processed when named so
    pl.mark(layer.w13_weight, attr, fl.W31)
    assert pl.layer_state(layer, ("w13_weight",), attr, (fl.W31,)) == pl.PROCESSED
    pl.mark(layer.w13_weight, attr, None)
    assert pl.layout_of(layer.w13_weight, attr) is None


def test_original_loader_unwraps_flagged_wrappers():
    import functools

    def loader(param, weight):
        return "original"

    @functools.wraps(loader)
    def wrapper(*args, **kwargs):
        return loader(*args, **kwargs)

    wrapper._flag = True
    assert pl.original_loader(wrapper, "_flag") is loader
    assert pl.original_loader(loader, "_flag") is loader
