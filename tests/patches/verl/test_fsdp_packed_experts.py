"""fsdp-packed-experts: verl's REAL FSDPEngine.get_per_tensor_param on a tiny Qwen3-MoE, CPU/gloo.

The engine is built with verl's own ``FSDPEngine.__init__`` and ``FSDPEngineConfig(strategy="fsdp2")``
on a world of one gloo rank; only ``model_config`` is a stand-in (HFModelConfig wants a model
directory and a tokenizer; get_per_tensor_param reads ``lora`` and ``hf_config`` from it) and the
module is a transformers-5 ``Qwen3MoeForCausalLM`` built from a config and sharded with FSDP2
``fully_shard``, exactly what ``_build_fsdp_module`` hands the engine.

* verl 0.6.0 - 0.8.x (bug): unpatched, the stream carries packed ``mlp.experts.gate_up_proj`` keys;
  patched, it carries exactly the keys and (bitwise) the tensors that transformers' own reverse
  conversion writes to a v4 checkpoint, i.e. what vLLM's Qwen3-MoE ``load_weights`` expects; the
  expert tensors of one parameter are views of one gathered tensor.
* verl >= 0.9.0 (fixed upstream): the patch reports not-needed, and the upstream ``unfuse_moe_params``
  output equals our helper's, name for name and bit for bit.

verl installs here without its heavy extras: ``pip install --no-deps verl==X`` plus the pure-Python
packages its import asks for (ray, tensordict, omegaconf, hydra-core, peft, accelerate, datasets,
pandas, pyarrow, ...), see the report of issue 5.
"""

import inspect
import types

import pytest

torch = pytest.importorskip("torch")

import compat_patches  # noqa: E402
from compat_patches.core.versions import in_range  # noqa: E402
from compat_patches.moe import expand_packed_experts, packed_expert_kind  # noqa: E402
from compat_patches.patches.verl import fsdp_packed_experts as mod  # noqa: E402

from ... import verl_engine  # noqa: E402

NAME = "fsdp-packed-experts"
E, I, H = 4, 6, 20


# ------------------------------------------------------------------ the record (no verl needed)

@pytest.mark.parametrize("version, inside", [
    ("0.5.0", False),        # no FSDP engine yet
    ("0.6.0", True), ("0.6.1", True), ("0.7.0", True), ("0.7.1", True), ("0.8.0", True),
    ("0.8.0+cu128", True), ("0.8.1.dev0", True),
    # PEP 440: "<0.9.0" excludes 0.9.0's own pre-releases (main after 0.8.0 carries the fix)
    ("0.9.0rc1", False), ("0.9.0.dev0", False),
    ("0.9.0", False), ("0.9.1", False), ("0.9.1+cu128", False), ("0.10.0.dev0", False),
])
def test_verl_gate_measured_from_the_wheels(version, inside):
    assert in_range(version, mod.PATCH.affected["verl"]) is inside


@pytest.mark.parametrize("version, inside", [
    ("4.57.6", False), ("5.0.0rc0", True), ("5.0.0rc3", True), ("5.0.0", True), ("5.9.0", True),
    ("5.24.0", True), ("5.25.0.dev0", True), ("5.9.0+local", True),
])
def test_transformers_gate_only_where_experts_are_packed(version, inside):
    assert in_range(version, mod.PATCH.affected["transformers"]) is inside


def test_record_target_shapes_per_verl_release():
    assert mod.PATCH.name == NAME and mod.PATCH.primary == "verl" and mod.PATCH.fixed_in == "verl 0.9.0"
    old, new = mod.PATCH.targets
    assert old.path == new.path == "verl.workers.engine.fsdp.transformer_impl:FSDPEngine.get_per_tensor_param"
    for version, target in [("0.6.0", old), ("0.7.0", old), ("0.7.1", new), ("0.8.0", new)]:
        chosen = [t for t in mod.PATCH.targets if in_range(version, t.versions)]
        assert chosen == [target], version
    assert old.params == ("self", "layered_summon", "base_sync_done")
    assert new.params == ("self", "layered_summon", "base_sync_done", "kwargs")


def test_importing_the_patch_module_imports_no_torch_or_verl():
    import subprocess
    import sys

    code = ("import sys, compat_patches.patches.verl.fsdp_packed_experts; "
            "print(sorted(m for m in ('torch', 'verl', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ the wrapper on each return shape

def _packed_stream():
    return iter([
        ("model.embed_tokens.weight", torch.randn(8, H)),
        ("model.layers.0.mlp.experts.gate_up_proj", torch.randn(E, 2 * I, H)),
        ("model.layers.0.mlp.experts.down_proj", torch.randn(E, H, I)),
    ])


def _fake_engine(model_type="qwen3_moe"):
    return types.SimpleNamespace(model_config=types.SimpleNamespace(
        hf_config=types.SimpleNamespace(model_type=model_type)))


def test_wrapper_expands_the_stream_of_each_release_shape():
    engine = _fake_engine()
    # 0.7.0+: (stream, peft_config)
    stream, peft = mod._get_per_tensor_param_wrapper(lambda: (_packed_stream(), "cfg"), engine, (), {})
    names = [n for n, _ in stream]
    assert peft == "cfg" and len(names) == 1 + 3 * E and not any(packed_expert_kind(n) for n in names)
    # 0.6.x: the stream alone
    stream = mod._get_per_tensor_param_wrapper(lambda: _packed_stream(), engine, (), {})
    assert len(list(stream)) == 1 + 3 * E
    # 0.6.x LoRA adapter-only sync returns a dict: left as it is
    adapters = {"a.lora_A.weight": torch.zeros(1)}
    assert mod._get_per_tensor_param_wrapper(lambda: adapters, engine, (), {}) is adapters


def test_wrapper_leaves_gpt_oss_packed_experts_alone():
    stream, _ = mod._get_per_tensor_param_wrapper(lambda: (_packed_stream(), None), _fake_engine("gpt_oss"), (), {})
    assert [n for n, _ in stream] == [n for n, _ in _packed_stream()]


def test_source_check_reports_a_backported_fix_as_drift():
    def fixed(self, layered_summon=False, base_sync_done=False, **kwargs):
        return unfuse_moe_params(None)  # noqa: F821

    def unfixed(self, layered_summon=False, base_sync_done=False, **kwargs):
        return None

    assert "unfuse_moe_params" in mod._already_unfuses(fixed)
    assert mod._already_unfuses(unfixed) is None


# ------------------------------------------------------------------ the real verl engine

@pytest.fixture(scope="module")
def gloo_world_1():
    pytest.importorskip("verl")
    with verl_engine.gloo_world_1():
        yield


def _tiny_qwen3_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        vocab_size=64, hidden_size=H, intermediate_size=32, moe_intermediate_size=I,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        num_experts=E, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
    )
    model = Qwen3MoeForCausalLM(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return model


def _real_engine():
    """verl's own FSDPEngine.__init__ + FSDPEngineConfig; the module sharded with FSDP2."""
    model = _tiny_qwen3_moe()
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return verl_engine.fsdp_engine(model), model, reference


_stream = verl_engine.stream


def _v4_checkpoint(model, reference):
    """What transformers 5 writes for save_pretrained(save_original_format=True)."""
    from transformers.core_model_loading import revert_weight_conversion

    return revert_weight_conversion(model, dict(reference))


@pytest.mark.requires(verl=">=0.6.0,<0.9.0", transformers=">=5.0.0rc0")
def test_real_verl_streams_packed_keys_without_patch_and_v4_checkpoint_keys_with_it(gloo_world_1):
    from verl.workers.engine.fsdp import transformer_impl

    original = transformer_impl.FSDPEngine.get_per_tensor_param
    engine, model, reference = _real_engine()
    oracle = _v4_checkpoint(model, reference)
    assert any(".mlp.experts.0.gate_proj.weight" in k for k in oracle)

    # the bug: packed names go to vLLM, names its Qwen3-MoE checkpoint loader has never seen
    unpatched = _stream(engine)
    packed = [n for n, _ in unpatched if packed_expert_kind(n)]
    assert packed and sorted(n for n, _ in unpatched) != sorted(oracle)

    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        assert transformer_impl.FSDPEngine.get_per_tensor_param is not original
        patched = _stream(engine)
    assert transformer_impl.FSDPEngine.get_per_tensor_param is original  # reverted exactly

    got = dict(patched)
    assert len(got) == len(patched)  # no duplicate names
    assert sorted(got) == sorted(oracle)
    for name, tensor in oracle.items():
        sent = got[name]
        # verl 0.7.1/0.8.0 cast gathered DTensors to bf16 for the sync; compare in that dtype
        assert sent.shape == tensor.shape, name
        assert torch.equal(sent, tensor.to(sent.dtype)), name
    # zero-copy: the 2E gate/up tensors of one layer are views of ONE gathered tensor
    for layer in range(2):
        base = f"model.layers.{layer}.mlp.experts."
        ptrs = {got[f"{base}{e}.{p}.weight"].untyped_storage().data_ptr()
                for e in range(E) for p in ("gate_proj", "up_proj")}
        assert len(ptrs) == 1
        downs = {got[f"{base}{e}.down_proj.weight"].untyped_storage().data_ptr() for e in range(E)}
        assert len(downs) == 1 and downs != ptrs
        assert all(got[f"{base}{e}.gate_proj.weight"].is_contiguous() for e in range(E))


@pytest.mark.requires(verl=">=0.9.0", transformers=">=5.0.0rc0")
def test_real_verl_with_the_upstream_fix_is_not_patched_and_matches_our_helper(gloo_world_1):
    from verl.workers.engine.fsdp import transformer_impl

    original = transformer_impl.FSDPEngine.get_per_tensor_param
    assert mod._already_unfuses(original) is not None  # 0.9.x calls unfuse_moe_params itself
    engine, model, reference = _real_engine()

    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed", report[NAME]
        assert transformer_impl.FSDPEngine.get_per_tensor_param is original
        upstream = _stream(engine)

    ours = list(expand_packed_experts(reference.items()))
    assert [n for n, _ in upstream] == [n for n, _ in ours]  # same names, same order
    for (name, theirs), (_, mine) in zip(upstream, ours):
        assert theirs.shape == mine.shape and torch.equal(theirs, mine.to(theirs.dtype)), name
    oracle = _v4_checkpoint(model, reference)
    assert sorted(n for n, _ in upstream) == sorted(oracle)


def test_wrapper_signature_is_kept_when_applied_to_a_stand_in(monkeypatch):
    """wrapt keeps the wrapped signature (drift checks and verl's own introspection rely on it)."""
    import sys

    import wrapt

    fake = types.ModuleType("fake_fsdp_engine_mod")

    class FSDPEngine:
        def get_per_tensor_param(self, layered_summon=False, base_sync_done=False, **kwargs):
            return iter([("x.mlp.experts.down_proj", torch.zeros(2, H, I))]), None

    fake.FSDPEngine = FSDPEngine
    monkeypatch.setitem(sys.modules, "fake_fsdp_engine_mod", fake)
    wrapt.wrap_function_wrapper("fake_fsdp_engine_mod", "FSDPEngine.get_per_tensor_param",
                                mod._get_per_tensor_param_wrapper)
    assert list(inspect.signature(FSDPEngine.get_per_tensor_param).parameters) == [
        "self", "layered_summon", "base_sync_done", "kwargs"]
    stream, _ = FSDPEngine().get_per_tensor_param()
    assert [n for n, _ in stream] == ["x.mlp.experts.0.down_proj.weight", "x.mlp.experts.1.down_proj.weight"]
