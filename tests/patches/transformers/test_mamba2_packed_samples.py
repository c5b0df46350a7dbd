"""transformers-mamba2-packed-samples on the real transformers releases.

A packed row (``position_ids`` restarting at 0 for each sample, no attention mask: the
padding-free layout of verl, TRL, ms-swift, LlamaFactory, axolotl) through a tiny NemotronH
(5.3+), Bamba, GraniteMoeHybrid and Falcon-H1 (one Mamba2 + one attention layer each; Falcon-H1
runs both in its one layer), built from configs with random weights (``initializer_range=0.1`` and
random ``A_log`` / ``dt_bias`` / ``D`` so a leak shows). Each sample is compared with the same
sample run alone. Without the patch every sample after the first differs (asserted: the bug is
there); with it the packed forward equals the separate runs, the gradient of every parameter from
a packed loss equals the sum over the separate runs (with and without gradient checkpointing),
an unpacked batch gives bitwise the unpatched logits, and generation is untouched.

``use_cache=False`` everywhere a packed row runs: transformers builds the block-diagonal attention
mask from ``position_ids`` only without a cache (all models), and training runs without one.
"""

import importlib

import pytest

import compat_patches
from compat_patches.core.versions import in_range, installed_version
from compat_patches.patches.transformers import mamba2_packed_samples as mod

torch = pytest.importorskip("torch")

from ._packed_models import FAMILIES as MODELS, build, present  # noqa: E402

NAME = "transformers-mamba2-packed-samples"
AFFECTED = ">=5.0.0rc0"
TOLERANCE = 1e-5   # float32, same math per sample: measured <= 5e-7 on every release
LEAK = 1e-3        # the unpatched leak: measured >= 2e-2 on every release (docs table)
ROWS = ((9, 7), (6, 1, 2, 7))  # batch of 2, different packings: 2 and 4 samples, lengths 1 and 2 < kernel
THREE = ((5, 6, 5), (5, 6, 5))  # three samples, twice: one row of position_ids for the batch


# ----- pure: the gate, the fingerprints, the padding split (no transformers needed) ------------

@pytest.mark.parametrize("version, expected", [
    ("4.57.6", False), ("5.0.0.dev0", False), ("5.0.0rc0", True), ("5.0.0", True),
    ("5.3.0+cu128", True), ("5.14.1", True), ("5.15.0.dev0", True), ("5.24.0", True),
    ("5.25.0.dev0", True), ("6.0.0", True),
])
def test_gate(version, expected):
    assert mod.PATCH.affected == {"transformers": AFFECTED, "torch": ">=2.0"}
    assert mod.PATCH.primary == "transformers"
    assert in_range(version, mod.PATCH.affected["transformers"]) is expected


def test_fix_signs():
    assert mod._fix_signs("seq_idx (`torch.IntTensor`):\n    seq_idx: torch.IntTensor\n") == []
    assert mod._fix_signs("if seq_idx == None: pass") == []
    assert mod._fix_signs("causal_conv1d_fn(x, w, seq_idx=seq_idx)") == ["seq_idx"]
    assert mod._fix_signs("kernel(x, cu_seqlens = cu)") == ["cu_seqlens"]


def test_split_at_padding():
    from compat_patches import packed_samples

    packing = packed_samples.Packing([[0, 3], [0]], 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    assert mod._split_at_padding(packing, mask) == packed_samples.Packing([[0, 3, 5], [0, 2]], 6)
    assert mod._split_at_padding(packing, None) is packing
    assert mod._split_at_padding(packing, torch.ones(2, 6)) is packing


# ----- tiny models ----------------------------------------------------------------------------

FAMILIES = [family for family, spec in MODELS.items() if spec[0] == NAME]


def _have(family):
    return family in present(NAME)


@pytest.fixture(scope="module")
def models():
    return {family: build(family) for family in present(NAME)}


@pytest.fixture(params=list(FAMILIES))
def model(request, models):
    if request.param not in models:
        pytest.skip(f"{request.param} arrived in transformers {MODELS[request.param][3]}")
    return models[request.param]


def _packed(rows, seed=1):
    """input_ids / position_ids of equal-length packed rows, and each sample's ids."""
    generator = torch.Generator().manual_seed(seed)
    samples = [[torch.randint(0, 64, (n,), generator=generator) for n in row] for row in rows]
    ids = torch.stack([torch.cat(row) for row in samples])
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in rows])
    return ids, positions, samples


def _packed_logits(model, rows):
    ids, positions, _ = _packed(rows)
    return model(input_ids=ids, position_ids=positions, use_cache=False).logits


_SEPARATE = {}


def _separate_logits(model, rows):
    if (id(model), rows) in _SEPARATE:
        return _SEPARATE[id(model), rows]
    _, _, samples = _packed(rows)
    _SEPARATE[id(model), rows] = torch.stack([
        torch.cat([model(input_ids=sample[None], use_cache=False).logits[0] for sample in row])
        for row in samples])
    return _SEPARATE[id(model), rows]


def _status():
    return next(entry for entry in compat_patches.report() if entry.name == NAME).status


# ----- forward --------------------------------------------------------------------------------

@pytest.mark.requires(transformers=AFFECTED)
def test_packed_forward_equals_samples_alone(model, rows=ROWS):
    with torch.no_grad():
        separate = _separate_logits(model, rows)
        leak = (_packed_logits(model, rows) - separate).abs()
        assert leak.max() > LEAK                      # the bug, without the patch
        with compat_patches.patched(NAME):
            assert _status() == "applied"
            fixed = (_packed_logits(model, rows) - separate).abs().max()
    assert fixed < TOLERANCE


@pytest.mark.requires(transformers=AFFECTED)
def test_three_samples_one_row_of_position_ids_for_a_batch(model, rows=THREE):
    """position_ids of shape (1, seq_len) for a batch of rows packed alike (broadcast, as the model's
    own default position_ids are)."""
    ids, positions, _ = _packed(rows)
    with torch.no_grad():
        separate = _separate_logits(model, rows)
        assert (model(input_ids=ids, position_ids=positions[:1], use_cache=False).logits
                - separate).abs().max() > LEAK
        with compat_patches.patched(NAME):
            logits = model(input_ids=ids, position_ids=positions[:1], use_cache=False).logits
    assert (logits - separate).abs().max() < TOLERANCE


# ----- backward -------------------------------------------------------------------------------

def _weights(rows):
    ids, _, _ = _packed(rows)
    return torch.randn(ids.shape + (64,), generator=torch.Generator().manual_seed(2))


_ALONE = {}  # id(model) -> gradients summed over the samples alone (no packing: the patch is idle)


def _alone_gradients(model, rows):
    if id(model) not in _ALONE:
        _, _, samples = _packed(rows)
        weights = _weights(rows)
        model.train()
        try:
            model.zero_grad()
            for row, row_samples in enumerate(samples):
                start = 0
                for sample in row_samples:
                    end = start + len(sample)
                    logits = model(input_ids=sample[None], use_cache=False).logits
                    (logits[0] * weights[row, start:end]).sum().backward()
                    start = end
            _ALONE[id(model)] = {name: p.grad.clone() for name, p in model.named_parameters()}
        finally:
            model.zero_grad()
            model.eval()
    return _ALONE[id(model)]


def _packed_gradients(model, rows, checkpointing, calls):
    """Gradients of every parameter from the packed rows; `calls` gets each layer whose
    checkpointing function runs."""
    ids, positions, _ = _packed(rows)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()  # the release's default (reentrant or not)
        for layer in model.modules():
            if callable(getattr(layer, "_gradient_checkpointing_func", None)):
                def spy(*args, _original=layer._gradient_checkpointing_func, _layer=layer, **kwargs):
                    calls.append(_layer)
                    return _original(*args, **kwargs)

                layer._gradient_checkpointing_func = spy
    try:
        model.zero_grad()
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        (logits * _weights(rows)).sum().backward()
        packed = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    finally:
        model.zero_grad()
        if checkpointing:
            model.gradient_checkpointing_disable()
        model.eval()
    assert packed.keys() == {name for name, _ in model.named_parameters()}
    return packed


def _max_difference(packed, alone):
    return max(((packed[name] - alone[name]).abs().max() / (alone[name].abs().max() + 1e-6)).item()
               for name in packed)


@pytest.mark.requires(transformers=AFFECTED)
@pytest.mark.filterwarnings("ignore::FutureWarning")  # 5.24 renames gradient_checkpointing_enable
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_packed_gradients_equal_sum_over_samples(model, checkpointing):
    if checkpointing and not model.supports_gradient_checkpointing:
        pytest.skip(f"{type(model).__name__} has no gradient checkpointing in this release")
    alone = _alone_gradients(model, ROWS)
    if not checkpointing:  # the bug, without the patch
        assert _max_difference(_packed_gradients(model, ROWS, False, []), alone) > LEAK
    calls = []
    with compat_patches.patched(NAME):
        packed = _packed_gradients(model, ROWS, checkpointing, calls)
    assert _max_difference(packed, alone) < 1e-4
    # every decoder layer is still checkpointed (5.23+: by packed_samples.call_layer, since the
    # record's wrappers sit on the layers' forward, which checkpoints only when nothing wraps it)
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [layer for layer in model.modules() if isinstance(layer, GradientCheckpointingLayer)]
    if checkpointing:
        assert layers and {id(layer) for layer in calls} == {id(layer) for layer in layers}
    else:
        assert calls == []


# ----- unpacked input and generation: the original path ------------------------------------------

@pytest.mark.requires(transformers=AFFECTED)
def test_unpacked_bitwise_unchanged(model):
    ids, _, _ = _packed(ROWS)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in the second row
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        before = [model(input_ids=ids).logits, model(input_ids=ids, attention_mask=mask,
                                                     position_ids=positions).logits]
        with compat_patches.patched(NAME):
            after = [model(input_ids=ids).logits, model(input_ids=ids, attention_mask=mask,
                                                        position_ids=positions).logits]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.requires(transformers=AFFECTED)
def test_generation_unchanged(model):
    ids, _, _ = _packed(((8,), (8,)))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: the prompt's positions restart after the padding, not a packing
    kwargs = dict(max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=0)
    if isinstance(model.config.use_cache, int) and not isinstance(model.config.use_cache, bool):
        # 5.4.0's FalconH1Config validates use_cache as `int | None`, so its default config (which
        # generate() builds) raises: generation is broken there with or without us. The cached
        # prefill it would run is compared instead.
        with torch.no_grad():
            before = model(input_ids=ids, attention_mask=mask, use_cache=1).logits
            with compat_patches.patched(NAME):
                after = model(input_ids=ids, attention_mask=mask, use_cache=1).logits
        assert torch.equal(before, after)
        return
    with torch.no_grad():
        before = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        with compat_patches.patched(NAME):
            after = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(before.sequences, after.sequences)
    assert all(torch.equal(a, b) for a, b in zip(before.scores, after.scores))


# ----- GPU kernels: seq_idx reaches them instead of splitting (plumbing, on CPU) ---------------

@pytest.mark.requires(transformers=">=5.15.0.dev0")
def test_seq_idx_reaches_the_kernels(model, monkeypatch):
    """From 5.15 the mixer hands its keyword arguments to module-level kernels: where the CUDA
    kernels run, the patch passes seq_idx instead of splitting. Forced here on CPU: a spy on the
    module's causal_conv1d_fn sees the packing's seq_idx (then drops it for the torch fallback)."""
    from compat_patches import packed_samples

    module = importlib.import_module(type(model).__module__)
    seen = {}
    for name in ("causal_conv1d_fn", "mamba2_chunk_scan"):
        def spy(*args, _original=getattr(module, name), _name=name, **kwargs):
            seen.setdefault(_name, []).append(kwargs.pop("seq_idx", None))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    monkeypatch.setattr(mod, "_kernels_take_seq_idx", lambda wrapped, instance, hidden_states: True)
    ids, positions, _ = _packed(ROWS)
    with torch.no_grad(), compat_patches.patched(NAME):
        model(input_ids=ids, position_ids=positions, use_cache=False)
    expected = packed_samples.from_position_ids(positions).seq_idx()
    assert set(seen) == {"causal_conv1d_fn", "mamba2_chunk_scan"}
    assert all(s is not None and torch.equal(s, expected) for calls in seen.values() for s in calls)


@pytest.mark.requires(transformers=AFFECTED)
def test_no_kernels_on_cpu(model):
    mixer = next(m for m in model.modules() if type(m).__name__.endswith(("Mixer", "MambaLayer")))
    forward = type(mixer).forward.__get__(mixer)
    assert mod._kernels_take_seq_idx(forward, mixer, torch.zeros(1, 2, 32)) is False


@pytest.mark.requires(transformers=AFFECTED)
def test_no_upstream_fix_sign_here():
    for family in FAMILIES:
        if _have(family) and in_range(installed_version("transformers"), ">=5.15.0.dev0"):
            assert mod._family_fixed(family) is False
