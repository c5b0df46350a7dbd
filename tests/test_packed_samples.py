"""compat_patches.packed_samples: sample boundaries of padding-free rows, carried to the mixers.

Pure torch, no model library: what from_position_ids / from_cu_seqlens derive, how split_run cuts,
runs and reassembles (gradients included), and that carrying() / current() stay per thread and
per asyncio task (a context variable) and survive nesting.
"""

import asyncio
import contextvars
import threading

import pytest

torch = pytest.importorskip("torch")

from compat_patches import packed_samples as ps  # noqa: E402


def ids(*rows):
    return torch.tensor(rows)


# --- from_position_ids ----------------------------------------------------------------------------

def test_from_position_ids_rows_and_starts():
    packing = ps.from_position_ids(ids([0, 1, 2, 0, 1, 0, 0], [0, 1, 2, 3, 4, 5, 6]))
    assert packing == ps.Packing([[0, 3, 5, 6], [0]], 7)
    assert packing.spans(0) == ((0, 3), (3, 5), (5, 6), (6, 7))  # length-1 samples
    assert packing.spans(1) == ((0, 7),)
    assert packing.batch_size == 2 and packing.seq_len == 7


def test_from_position_ids_unpacked_is_none():
    assert ps.from_position_ids(ids([0, 1, 2, 3])) is None
    assert ps.from_position_ids(ids([5, 6, 7])) is None  # a continuation, no restart
    assert ps.from_position_ids(ids([0], [0])) is None  # one token per row


def test_from_position_ids_mrope_uses_the_first_row():
    text = ids([0, 1, 0, 1, 2])
    mrope = torch.stack([text, text * 0 + 7, text * 0 + 9])  # (3, batch, seq): other rows never restart
    assert ps.from_position_ids(mrope) == ps.from_position_ids(text) == ps.Packing([[0, 2]], 5)
    four = torch.cat([text[None], mrope])  # text + 3 mRoPE rows
    assert ps.from_position_ids(four) == ps.Packing([[0, 2]], 5)
    with pytest.raises(ValueError, match="position_ids must be"):
        ps.from_position_ids(torch.zeros(2, 2, 2, 2, dtype=torch.long))


def test_from_position_ids_masks():
    # left padding (positions 1, 1 under the mask, then 0): not a second sample
    left = ids([1, 1, 0, 1, 2])
    assert ps.from_position_ids(left, ids([0, 0, 1, 1, 1])) is None
    # a padded tail whose positions restart: not a sample start either
    tail = ids([0, 1, 2, 0, 1, 0, 0])
    assert ps.from_position_ids(tail, ids([1, 1, 1, 1, 1, 0, 0])) == ps.Packing([[0, 3]], 7)
    # a batch: left padding in one row, packing in the other
    both = ps.from_position_ids(ids([1, 1, 0, 1], [0, 1, 0, 1]), ids([0, 0, 1, 1], [1, 1, 1, 1]))
    assert both == ps.Packing([[0], [0, 2]], 4)
    # a 4-D (attention) mask is not a padding mask: ignored
    assert ps.from_position_ids(tail, torch.ones(1, 1, 7, 7)) == ps.Packing([[0, 3, 5, 6]], 7)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        ps.from_position_ids(tail, ids([1, 1, 1]))


# --- from_cu_seqlens --------------------------------------------------------------------------------

def test_from_cu_seqlens():
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    assert ps.from_cu_seqlens(cu, 9) == ps.Packing([[0, 3, 4]], 9)
    assert ps.from_cu_seqlens(cu, 12) == ps.Packing([[0, 3, 4, 9]], 12)  # the padded tail: a span
    assert ps.from_cu_seqlens(torch.tensor([0, 9]), 9) is None
    for bad in ([1, 9], [0, 4, 4, 9], [0, 10]):
        with pytest.raises(ValueError, match="rise strictly"):
            ps.from_cu_seqlens(torch.tensor(bad), 9)


def test_cu_seqlens_and_seq_idx_layouts():
    packing = ps.Packing([[0, 2], [0, 1, 3]], 4)
    assert packing.cu_seqlens().tolist() == [0, 2, 4, 5, 7, 8]
    assert packing.cu_seqlens().dtype == torch.int32
    assert packing.seq_idx().tolist() == [[0, 0, 1, 1], [0, 1, 1, 2]]


# --- split_run --------------------------------------------------------------------------------------

def _causal_mixer(weight):
    """A toy recurrent mixer: cumulative sum over the sequence (leaks across samples if run packed)."""
    def run(hidden, scale=None):
        out = torch.cumsum(hidden * weight, dim=1)
        return out if scale is None else out * scale
    return run


def test_split_run_values_and_per_token_slices():
    torch.manual_seed(0)
    packing = ps.Packing([[0, 2, 3], [0, 4]], 5)
    hidden = torch.randn(2, 5, 3)
    scale = torch.rand(2, 5, 1)
    weight = torch.randn(3)
    run = _causal_mixer(weight)
    out = packing.split_run(run, hidden, {"scale": scale})
    for row in range(2):
        for start, end in packing.spans(row):
            expect = run(hidden[row:row + 1, start:end], scale=scale[row:row + 1, start:end])
            assert torch.equal(out[row:row + 1, start:end], expect)
    seen = []
    packing.split_run(lambda h, mask=None: seen.append(mask) or h, hidden, {"mask": None})
    assert seen == [None] * 5  # None values pass through to every sample


def test_split_run_gradients_are_the_sum_over_samples():
    torch.manual_seed(1)
    packing = ps.Packing([[0, 1, 4]], 6)
    hidden = torch.randn(1, 6, 3, requires_grad=True)
    weight = torch.randn(3, requires_grad=True)
    grad_out = torch.randn(1, 6, 3)
    (packing.split_run(_causal_mixer(weight), hidden) * grad_out).sum().backward()
    packed_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    total = 0
    for start, end in packing.spans(0):
        total = total + (_causal_mixer(weight)(hidden[:, start:end]) * grad_out[:, start:end]).sum()
    total.backward()
    assert torch.allclose(packed_grads[0], hidden.grad, atol=1e-6)
    assert torch.allclose(packed_grads[1], weight.grad, atol=1e-6)


def test_single_row_single_piece_returns_the_run_output():
    hidden = torch.randn(1, 4, 2)
    out = ps.Packing([[0]], 4).split_run(lambda h: h, hidden)
    assert torch.equal(out, hidden)


# --- carrying / current -----------------------------------------------------------------------------

def test_current_outside_and_inside_carrying():
    hidden = torch.zeros(1, 5, 2)
    assert ps.current(hidden) is None
    with ps.carrying(position_ids=ids([0, 1, 0, 1, 2])):
        assert ps.current(hidden) == ps.Packing([[0, 2]], 5)
        with ps.carrying():  # a nested layer with nothing to carry hides the outer boundaries
            assert ps.current(hidden) is None
        assert ps.current(hidden) == ps.Packing([[0, 2]], 5)
        with pytest.raises(ValueError, match="describe"):
            ps.current(torch.zeros(2, 5, 2))
    assert ps.current(hidden) is None
    with ps.carrying(position_ids=ids([0, 1, 2, 3, 4])):
        assert ps.current(hidden) is None  # unpacked
    with ps.carrying(position_ids=ids([0, 1, 2, 3, 4]), cu_seq_lens=torch.tensor([0, 2, 5])):
        assert ps.current(hidden) == ps.Packing([[0, 2]], 5)  # cu_seq_lens win


def test_carrying_resets_on_exception():
    with pytest.raises(RuntimeError):
        with ps.carrying(position_ids=ids([0, 0])):
            raise RuntimeError("boom")
    assert ps.current(torch.zeros(1, 2, 1)) is None


def _forward(attention_mask=None, position_ids=None, use_cache=False, layers=2):
    """A model forward as the records wrap it: each of its layers carries what it got."""
    seen = []
    for _ in range(layers):
        with ps.carrying(position_ids=position_ids, attention_mask=attention_mask):
            seen.append((ps._carried.get(), ps.current(torch.zeros(*position_ids.shape, 1))))
    return attention_mask, seen


def call(function, **kwargs):
    return ps.call_model("test-record", function, None, (), kwargs)


def test_the_layers_of_one_forward_resolve_once():
    pos = ids([0, 1, 0, 1])
    _, seen = call(_forward, position_ids=pos)
    assert seen[0][0] is seen[1][0] and seen[0][1] == ps.Packing([[0, 2]], 4)
    # a view of the same ids (what Qwen3.5 hands its layers) is the same source
    def views(position_ids):
        with ps.carrying(position_ids=position_ids):
            first = ps._carried.get()
        with ps.carrying(position_ids=position_ids[None].expand(4, 1, 4)[0]):
            return first, ps._carried.get()

    first, second = call(views, position_ids=pos)
    assert first is second
    # outside a forward, or in the next one, nothing is shared
    with ps.carrying(position_ids=pos):
        outside = ps._carried.get()
    with ps.carrying(position_ids=pos):
        assert ps._carried.get() is not outside
    _, again = call(_forward, position_ids=pos)
    assert again[0][0] is not seen[0][0]


def test_a_buffer_refilled_in_place_is_resolved_again():
    buffer = ids([0, 1, 0, 1, 2, 3])
    _, first = call(_forward, position_ids=buffer)
    buffer.copy_(ids([0, 1, 2, 3, 0, 1]))  # the collator's next batch, same tensor
    _, second = call(_forward, position_ids=buffer)
    assert first[0][1] == ps.Packing([[0, 2]], 6) and second[0][1] == ps.Packing([[0, 4]], 6)
    # also the numpy-style write that bumps no version counter
    buffer.numpy()[:] = [0, 0, 1, 2, 3, 4]
    _, third = call(_forward, position_ids=buffer)
    assert third[0][1] == ps.Packing([[0, 1]], 6)


def test_call_model_drops_a_mask_that_only_pads_at_the_end():
    pos = ids([0, 1, 2, 0, 1, 0, 1])
    for mask in (ids([1] * 7), ids([1, 1, 1, 1, 1, 0, 0])):
        got, seen = call(_forward, attention_mask=mask, position_ids=pos)
        assert got is None  # transformers then builds the block-diagonal mask from position_ids
        expect = ps.Packing([[0, 3]], 7) if not bool(mask.all()) else ps.Packing([[0, 3, 5]], 7)
        assert seen[0][1] == expect  # the padded tail is no sample (resolved with the mask)
    # not packed, or a cache: the mask stays
    assert call(_forward, attention_mask=ids([1] * 4), position_ids=ids([0, 1, 2, 3]))[0] is not None
    with pytest.warns(RuntimeWarning, match="use_cache=False"):
        assert call(_forward, attention_mask=ids([1] * 7), position_ids=pos, use_cache=True)[0] is not None
    # padding before real tokens: kept, said once
    left = ids([0, 1, 1, 1, 1, 1, 1])
    with pytest.warns(RuntimeWarning, match="attention_mask=None"):
        assert call(_forward, attention_mask=left, position_ids=ids([0, 0, 1, 0, 1, 2, 3]))[0] is left


def test_threads_see_only_their_own_boundaries():
    barrier = threading.Barrier(2)
    seen = {}

    def worker(name, position_ids):
        with ps.carrying(position_ids=position_ids):
            barrier.wait()  # both inside carrying at once
            seen[name] = ps.current(torch.zeros(1, 4, 1))
            barrier.wait()

    threads = [threading.Thread(target=worker, args=("a", ids([0, 1, 0, 1]))),
               threading.Thread(target=worker, args=("b", ids([0, 1, 2, 0])))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"a": ps.Packing([[0, 2]], 4), "b": ps.Packing([[0, 3]], 4)}
    assert ps.current(torch.zeros(1, 4, 1)) is None


def test_asyncio_tasks_and_copied_contexts():
    async def task(position_ids, expect):
        with ps.carrying(position_ids=position_ids):
            await asyncio.sleep(0)
            assert ps.current(torch.zeros(1, 4, 1)) == expect
            await asyncio.sleep(0)
            assert ps.current(torch.zeros(1, 4, 1)) == expect

    async def main():
        await asyncio.gather(task(ids([0, 0, 1, 2]), ps.Packing([[0, 1]], 4)),
                             task(ids([0, 1, 2, 0]), ps.Packing([[0, 3]], 4)))

    asyncio.run(main())
    with ps.carrying(position_ids=ids([0, 1, 0, 1])):
        context = contextvars.copy_context()
    assert context.run(ps.current, torch.zeros(1, 4, 1)) == ps.Packing([[0, 2]], 4)
    assert ps.current(torch.zeros(1, 4, 1)) is None
