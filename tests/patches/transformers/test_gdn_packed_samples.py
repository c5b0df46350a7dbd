"""transformers-gdn-packed-samples on the real transformers releases (tiny models built from configs).

A packed row (position_ids restarting at 0 per sample) must give what the samples give run one by
one: logits to float32 round-off, gradients of every parameter too. Measured without the patch on
every release with the models (docs/patches/transformers-gdn-packed-samples.md): always wrong, by
1e-2 - 4e-2 on these tiny models; with cu_seq_lens_q too, still wrong on 5.0 - 5.19 and a ValueError
from 5.20 (the torch fallback refuses cu_seqlens). Each test asserts the bug first where it is
measured, then the patched result; unpacked input must stay bitwise the unpatched path.

The varlen (flash-linear-attention) path runs on CUDA only; here it is checked on CPU with torch
reference kernels injected in place of fla's (per-sample conv, the release's own chunked delta rule
per sample), so its projections, gates, norm and reshapes are checked against every release.
"""

import contextlib
import importlib
import warnings

import pytest

torch = pytest.importorskip("torch")

import compat_patches  # noqa: E402
from compat_patches.core.versions import in_range, installed_version  # noqa: E402
from compat_patches.patches.transformers import gdn_packed_samples as mod  # noqa: E402

from ._packed_models import COMMON, present, build  # noqa: E402

pytestmark = pytest.mark.requires(transformers=">=5.0.0rc0", torch=">=2.0")

NAME = "transformers-gdn-packed-samples"
VERSION = installed_version("transformers")
TOL = 2e-6  # float32 round-off on these sizes (measured <= 3e-7)
LEAK = 1e-3  # the unpatched leak on these models is 1e-2 and more

FAMILIES = present(NAME)
# Qwen3.5-MoE's GatedDeltaNet is Qwen3.5's code under another name (same source in every release):
# only the packed-vs-separate test runs all of them; the others run on Qwen3-Next and Qwen3.5, the
# cu_seq_lens / cache ones on the newest model the release has
VARLEN_FAMILIES = [f for f in FAMILIES if f in ("qwen3_next", "qwen3_5")]


@pytest.fixture(scope="module")
def models():
    return {family: build(family) for family in FAMILIES}


def _logits(model, ids, position_ids, **kwargs):
    return model(input_ids=ids, position_ids=position_ids, use_cache=False, **kwargs).logits


def _positions(lengths):
    return torch.cat([torch.arange(n) for n in lengths])


def _row(lengths, seed):
    torch.manual_seed(seed)
    return torch.randint(0, 64, (sum(lengths),))


def _mrope(family, position_ids):
    """3-D mRoPE ids of a text-only batch as the model takes them: 3 rows on 5.2, text + 3 rows from
    5.3 (5.3+ read text positions only from a 4th row; with 3 rows their attention crosses the
    samples, patch or not). Below 5.4 the layers get 3-D ids and take [0]; from 5.4 the text row."""
    if family not in ("qwen3_5", "qwen3_5_moe"):
        return position_ids
    rows = 3 if in_range(VERSION, "<5.3.0.dev0") else 4
    return position_ids[None].expand(rows, *position_ids.shape).clone()


def packed_batch(rows, family=None, mrope=False, pad_to=None):
    """(input_ids, position_ids, real-token mask) of a packed batch. rows: per row, the sample lengths;
    pad_to: a padded tail (position_ids counting on from 0, no mask: what padding-free trainers append
    to reach a multiple)."""
    width = pad_to or max(sum(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros(len(rows), width, dtype=torch.long)
    real = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, lengths in enumerate(rows):
        n = sum(lengths)
        ids[r, :n], pos[r, :n], real[r, :n] = _row(lengths, r), _positions(lengths), True
        pos[r, n:] = torch.arange(width - n)
    return ids, (_mrope(family, pos) if mrope else pos), real


_SEPARATE = {}


def separate_logits(model, rows, ids):
    """Each sample of the batch alone, laid out like the batch (computed once per model and batch)."""
    key = (id(model), tuple(map(tuple, rows)), tuple(ids.shape))
    if key in _SEPARATE:
        return _SEPARATE[key]
    out = _SEPARATE[key] = torch.zeros(*ids.shape, COMMON["vocab_size"])
    with torch.no_grad():
        for r, lengths in enumerate(rows):
            start = 0
            for n in lengths:
                out[r, start:start + n] = _logits(model, ids[r:r + 1, start:start + n], torch.arange(n)[None])[0]
                start += n
    return out


def packed_and_separate(model, rows, family=None, mrope=False, pad_to=None):
    ids, pos, real = packed_batch(rows, family, mrope, pad_to)
    return _logits(model, ids, pos), separate_logits(model, rows, ids), real


def layer_output(model, hidden, **kwargs):
    """The first decoder layer (a GatedDeltaNet one) alone; its MLP is per token."""
    out = model.model.layers[0](hidden, None, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _diff(packed, separate, real):
    return (packed - separate)[real].abs().max().item()


SCENARIOS = {
    # many samples, length-1 samples, samples shorter than the conv kernel (4)
    "many": [[3, 1, 4, 1, 6, 2]],
    # batch > 1, a different packing in each row: three samples, two samples
    "batch": [[6, 1, 9], [9, 7]],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_equals_separate(models, family):
    model = models[family]
    for label, rows in SCENARIOS.items():
        ids, pos, real = packed_batch(rows)
        separate = separate_logits(model, rows, ids)
        assert _diff(_logits(model, ids, pos), separate, real) > LEAK, f"{label}: measured on every release"
        with compat_patches.patched(NAME):
            assert _diff(_logits(model, ids, pos), separate, real) < TOL, label
    # a padded tail; 3-D mRoPE position_ids
    for label, kwargs in (("padded tail", dict(pad_to=16)), ("mRoPE", dict(family=family, mrope=True))):
        rows = [[5, 2, 7]]
        ids, pos, real = packed_batch(rows, **kwargs)
        separate = separate_logits(model, rows, ids)
        with compat_patches.patched(NAME):
            assert _diff(_logits(model, ids, pos), separate, real) < TOL, label


@pytest.mark.parametrize("family", VARLEN_FAMILIES)
def test_gradients_equal_sum_over_samples(models, family):
    model = models[family]
    lengths = [6, 1, 3, 8]
    ids, pos = _row(lengths, 3)[None], _positions(lengths)[None]
    weights = torch.randn(1, sum(lengths), COMMON["vocab_size"], generator=torch.Generator().manual_seed(5))

    def grads(fn):
        model.zero_grad(set_to_none=True)
        fn().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def separate_loss():
        total, start = 0, 0
        for n in lengths:
            sl = slice(start, start + n)
            total = total + (_logits(model, ids[:, sl], torch.arange(n)[None]) * weights[:, sl]).sum()
            start += n
        return total

    def packed_loss():
        return (_logits(model, ids, pos) * weights).sum()

    reference = grads(separate_loss)
    leaked = grads(packed_loss)
    assert max((leaked[n] - g).abs().max().item() for n, g in reference.items()) > LEAK
    with compat_patches.patched(NAME):
        patched = grads(packed_loss)
        if family != VARLEN_FAMILIES[-1]:
            checkpointed = patched
            return _compare(reference, patched, checkpointed)
        model.train()
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        enable()
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        calls = []
        for layer in layers:  # count what is really checkpointed
            def spy(*a, _original=layer._gradient_checkpointing_func, _layer=layer, **k):
                calls.append(_layer)
                return _original(*a, **k)

            layer._gradient_checkpointing_func = spy
        try:
            checkpointed = grads(packed_loss)
        finally:
            disable()
            model.eval()
    _compare(reference, patched, checkpointed)
    # every decoder layer still checkpoints with the patch's wrapper on its forward (5.23+ checkpoints
    # only an unwrapped forward: packed_samples.call_layer does it for a packed batch)
    assert layers and {id(layer) for layer in calls} == {id(layer) for layer in layers}


def _compare(reference, patched, checkpointed):
    assert set(patched) == set(reference)
    for name, grad in reference.items():
        scale = max(1.0, grad.abs().max().item())
        assert (patched[name] - grad).abs().max().item() < 1e-5 * scale, name
        assert (checkpointed[name] - grad).abs().max().item() < 1e-5 * scale, f"{name} (checkpointing)"


@pytest.mark.parametrize("family", VARLEN_FAMILIES)
def test_unpacked_is_the_unpatched_path_bitwise(models, family):
    model = models[family]
    ids = _row([6, 6], 7).reshape(2, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    left_pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cases = [
        dict(input_ids=ids[:1]),  # no position_ids
        dict(input_ids=ids[:1], position_ids=torch.arange(6)[None]),  # one sample
        dict(input_ids=ids, attention_mask=mask, position_ids=left_pos),  # left padding, a batch
        dict(input_ids=ids, attention_mask=mask),
    ]
    for case in cases:
        plain = model(**case, use_cache=False).logits
        with compat_patches.patched(NAME):
            patched = model(**case, use_cache=False).logits
        assert torch.equal(plain, patched), sorted(case)


@pytest.mark.parametrize("family", VARLEN_FAMILIES)
def test_attention_mask_left_padding_and_padded_tail(models, family):
    """A 2-D attention_mask (what the GatedDeltaNet layers get): row 0 two samples then a masked
    tail, row 1 left padding then two samples. Checked at the layer, the attention layers of this
    batch being outside the patch (a mask turns off transformers' packed-sequence attention)."""
    model = models[family]
    torch.manual_seed(4)
    hidden = torch.randn(2, 12, COMMON["hidden_size"])
    mask = torch.tensor([[1] * 9 + [0] * 3, [0, 0] + [1] * 10])
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2], [1, 1, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3]])
    samples = [(0, 0, 4), (0, 4, 9), (1, 2, 8), (1, 8, 12)]
    separate = {(r, s): layer_output(model, hidden[r:r + 1, s:e], position_ids=torch.arange(e - s)[None])
                for r, s, e in samples}

    def worst(out):
        return max((out[r:r + 1, s:e] - separate[(r, s)]).abs().max().item() for r, s, e in samples)

    with torch.no_grad():
        assert worst(layer_output(model, hidden, attention_mask=mask, position_ids=pos)) > LEAK
        with compat_patches.patched(NAME):
            assert worst(layer_output(model, hidden, attention_mask=mask, position_ids=pos)) < TOL


@pytest.mark.parametrize("family", FAMILIES[-1:])
def test_cu_seq_lens(models, family):
    model = models[family]
    lengths = [5, 1, 2, 8]
    ids, pos = _row(lengths, 11)[None], _positions(lengths)[None]
    bounds = torch.tensor([0, 5, 6, 8, 16], dtype=torch.int32)
    kwargs = dict(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=8, max_length_k=8)
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    separate = torch.cat([_logits(model, ids[:, s:e], torch.arange(e - s)[None]) for s, e in spans], dim=1)
    if in_range(VERSION, ">=5.20.0.dev0"):
        with pytest.raises(ValueError, match="can't keep packed sequences apart"):
            _logits(model, ids, pos, **kwargs)
    else:
        assert (_logits(model, ids, pos, **kwargs) - separate).abs().max().item() > LEAK
    with compat_patches.patched(NAME):
        assert (_logits(model, ids, pos, **kwargs) - separate).abs().max().item() < TOL
    # the boundaries in cu_seq_lens_q alone, position_ids one running count (checked at the layer:
    # eager attention ignores cu_seq_lens); one sample's cu_seq_lens_q is the unpatched path
    torch.manual_seed(6)
    hidden = torch.randn(1, 16, COMMON["hidden_size"])
    running = torch.arange(16)[None]
    with torch.no_grad():
        alone = [layer_output(model, hidden[:, s:e], position_ids=torch.arange(e - s)[None]) for s, e in spans]
        plain = layer_output(model, hidden, position_ids=running)
        with compat_patches.patched(NAME):
            out = layer_output(model, hidden, position_ids=running, **kwargs)
            single = layer_output(model, hidden, position_ids=running,
                                  cu_seq_lens_q=torch.tensor([0, 16], dtype=torch.int32))
    assert (out - torch.cat(alone, dim=1)).abs().max().item() < TOL
    assert torch.equal(single, plain)


def _reference_kernels(family):
    """torch stand-ins with fla's signatures: each sample of cu_seqlens on its own."""
    import torch.nn.functional as F

    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    rule = module.torch_chunk_gated_delta_rule

    def conv(x, weight, bias=None, activation=None, cu_seqlens=None, **_):
        pieces = []
        bounds = cu_seqlens.tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            seg = x[:, start:end].transpose(1, 2)
            out = F.conv1d(seg, weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1,
                           groups=seg.shape[1])[..., :end - start]
            pieces.append(F.silu(out).transpose(1, 2))
        return torch.cat(pieces, dim=1), None

    def chunk(q, k, v, g, beta, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False,
              cu_seqlens=None, **_):
        pieces = []
        bounds = cu_seqlens.tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            sl = slice(start, end)
            out, _ = rule(q[:, sl], k[:, sl], v[:, sl], g=g[:, sl], beta=beta[:, sl], initial_state=None,
                          output_final_state=False, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
            pieces.append(out)
        return torch.cat(pieces, dim=1), None

    return mod.make_kernels(chunk, conv)


@contextlib.contextmanager
def _varlen_on_cpu(family):
    saved = dict(mod._state)
    mod._state.update(kernels=_reference_kernels(family), any_device=True)
    try:
        yield
    finally:
        mod._state.clear()
        mod._state.update(saved)


@pytest.mark.parametrize("family", VARLEN_FAMILIES)
def test_varlen_path_with_reference_kernels(models, family):
    model = models[family]
    calls = []
    real_forward = mod.varlen_forward

    def spy(*args, **kwargs):
        calls.append(args[2])
        return real_forward(*args, **kwargs)

    mod.varlen_forward = spy
    try:
        with _varlen_on_cpu(family), compat_patches.patched(NAME):
            for label, rows in SCENARIOS.items():
                packed, separate, real = packed_and_separate(model, rows)
                assert _diff(packed, separate, real) < TOL, label
            packed, separate, real = packed_and_separate(model, [[5, 2, 7]], family=family, mrope=True)
            assert _diff(packed, separate, real) < TOL, "mRoPE position_ids"
    finally:
        mod.varlen_forward = real_forward
    assert len(calls) == len(SCENARIOS) + 1  # one GatedDeltaNet layer, one packed forward each
    assert calls[1].starts == ((0, 6, 7), (0, 9))


@pytest.mark.parametrize("family", FAMILIES[-1:])
def test_generation_with_cache_untouched(models, family):
    model = models[family]
    ids = _row([8], 2)[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = model.generate(ids, max_new_tokens=3, do_sample=False)
        with compat_patches.patched(NAME):
            patched = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(plain, patched)
    # a packed row with a cache: left alone, and said so once
    pos = _positions([4, 4])[None]
    plain = model(input_ids=ids, position_ids=pos, use_cache=True).logits
    from compat_patches import packed_samples

    packed_samples._warned.clear()
    with compat_patches.patched(NAME), pytest.warns(RuntimeWarning, match="use_cache=False"):
        patched = model(input_ids=ids, position_ids=pos, use_cache=True).logits
    assert torch.equal(plain, patched)


def test_status_and_fingerprints():
    module = importlib.import_module("transformers.models.qwen3_next.modeling_qwen3_next")
    forward = module.Qwen3NextGatedDeltaNet.forward
    assert mod.carries_boundaries(mod._source(forward)) is None, "no release keeps samples apart yet"
    assert mod._mixer_check("fused")(forward) is None
    assert "no longer contains" in mod._mixer_check("split")(forward)
    assert mod.carries_boundaries("def forward(self, x, position_ids=None):\n    pass") is not None
    assert mod.carries_boundaries("y = causal_conv1d_fn(x, w, seq_idx=seq_idx)") is not None
    assert mod.carries_boundaries("y = self.causal_conv1d_fn(\n x=x,\n cu_seqlens=cu,\n)") is not None
    assert mod.carries_boundaries("y = causal_conv1d_fn(x, seq_idx=None)  # position_ids") is None
    assert mod.carries_boundaries("y = causal_conv1d_fn(x)\nz = rule(q, cu_seqlens=cu)") is None
    # 5.9 - 5.19 pass a caller's seq_idx / cu_seq_lens_q on: not a fix (nobody sets them)
    assert mod.carries_boundaries('y = self.causal_conv1d_fn(x=x, seq_idx=kwargs.get("seq_idx"),\n)') is None
    with compat_patches.patched(NAME):
        entry = [line for line in str(compat_patches.report()).splitlines() if NAME in line][0]
        assert " applied " in entry, entry
