"""verl's REAL FSDP engine on CPU, for tests/patches/verl and the copied upstream test (ours).

``stream_through_fsdp_engine(weights, model_type)`` builds a tiny transformers-5 Qwen3-MoE whose
packed expert parameters ARE the given tensors (same names, same values), wraps it in verl's own
``FSDPEngine`` (``FSDPEngine.__init__`` + ``FSDPEngineConfig(strategy="fsdp2")``, the module sharded
with FSDP2 ``fully_shard`` on a world of one gloo rank, as tests/patches/verl does), and returns what
``FSDPEngine.get_per_tensor_param`` streams to vLLM for those parameters: on verl 0.6.0 - 0.8.x the
packed names (the bug) unless fsdp-packed-experts is applied, on verl >= 0.9.0 what verl's own
``unfuse_moe_params`` yields.
"""

import contextlib
import re
import tempfile
import types

_PACKED = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def _cpu_platform_for_verl(torch):
    """verl >= 0.9 picks its device through a platform plugin and has no CPU one; install a CPU
    platform through verl's own ``set_platform`` hook (verl < 0.9 falls back to CPU by itself).
    Returns an undo callable."""
    try:
        from verl.plugin.platform import platform_manager
        from verl.plugin.platform.platform_base import PlatformBase
    except ImportError:
        return lambda: None
    if torch.cuda.is_available():
        return lambda: None
    methods = {name: (lambda self, *a, **k: None) for name in PlatformBase.__abstractmethods__}
    methods.update(
        device_name=property(lambda self: "cpu"), vendor_name=property(lambda self: "cpu"),
        device_module=property(lambda self: torch.cpu), is_available=lambda self: True,
        current_device=lambda self: "cpu", device_count=lambda self: 1,
        communication_backend_name=lambda self: "gloo",
    )
    previous = platform_manager._current_platform
    platform_manager.set_platform(type("CPUPlatformForTests", (PlatformBase,), methods)())

    def undo():
        platform_manager._current_platform = previous

    return undo


@contextlib.contextmanager
def gloo_world_1():
    """A CPU platform for verl and a gloo process group of one rank (unless one exists)."""
    import torch
    import torch.distributed as dist

    undo = _cpu_platform_for_verl(torch)  # before verl's engine modules read the device name
    try:
        if dist.is_initialized():
            yield
            return
        with tempfile.TemporaryDirectory() as tmp:
            dist.init_process_group("gloo", store=dist.FileStore(f"{tmp}/store", 1), rank=0, world_size=1)
            try:
                yield
            finally:
                dist.destroy_process_group()
    finally:
        undo()


def _tiny_qwen3_moe(weights):
    """A Qwen3-MoE (transformers 5, packed experts) whose packed parameters are `weights`."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    layers = {}
    for name, tensor in weights:
        match = _PACKED.match(name)
        if match is None:
            raise ValueError(f"{name!r}: only packed Qwen-MoE expert tensors go through the engine here")
        layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    gate_up = next(t for per_layer in layers.values() for k, t in per_layer.items() if k == "gate_up_proj")
    experts, two_inter, hidden = gate_up.shape
    cfg = Qwen3MoeConfig(
        vocab_size=16, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=two_inter // 2,
        num_hidden_layers=max(layers) + 1, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
        num_experts=experts, num_experts_per_tok=1, decoder_sparse_step=1, mlp_only_layers=[],
    )
    model = Qwen3MoeForCausalLM(cfg)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights:
            assert params[name].shape == tensor.shape, (name, params[name].shape, tensor.shape)
            params[name].copy_(tensor)
    return model


def fsdp_engine(model):
    """verl's own FSDPEngine.__init__ + FSDPEngineConfig around `model`, sharded with FSDP2."""
    from torch.distributed.fsdp import fully_shard
    from verl.workers.config import FSDPEngineConfig
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    model_config = types.SimpleNamespace(
        lora_rank=0, use_remove_padding=False, lora={}, hf_config=model.config,
        trust_remote_code=False, get=lambda key, default=None: default,
    )
    engine = FSDPEngine(model_config, FSDPEngineConfig(strategy="fsdp2"), None, None)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    engine.module = model
    return engine


def stream(engine):
    """What get_per_tensor_param streams (verl >= 0.7 returns it with the peft config)."""
    result = engine.get_per_tensor_param()
    return list(result[0] if isinstance(result, tuple) else result)


def stream_through_fsdp_engine(weights, model_type):
    """The (name, tensor) pairs verl's FSDPEngine.get_per_tensor_param streams for `weights`."""
    weights = list(weights)
    model = _tiny_qwen3_moe(weights)
    assert model.config.model_type == model_type, (model.config.model_type, model_type)
    # what the engine streams for the given parameters: their names, packed or expanded
    prefixes = tuple(name.rsplit(".", 1)[0] + "." for name, _ in weights)
    return [(name, tensor) for name, tensor in stream(fsdp_engine(model)) if name.startswith(prefixes)]
