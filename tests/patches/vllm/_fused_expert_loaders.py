"""Test helpers of vllm-fused-expert-kwargs and vllm-hyv4-fused-expert-kwargs: parameter loaders of
the shapes that meet ``load_fused_expert_weights``, and calls of the real method.

The method uses nothing of ``self``, so the real function is called on an uninitialised instance of
the real class (building the model needs a GPU), with one Parameter whose ``weight_loader`` is:

* keyword-only (``*, shard_id, expert_id``): ``TypeError`` under the positional call;
* a TPU / runai style hook (``*args, **kwargs``, reads ``kwargs.get("expert_id")``): the ids are
  silently dropped (``None``) under the positional call;
* vLLM's own positional-or-keyword signature (``FusedMoE`` / ``RoutedExperts.weight_loader``).

Imports nothing heavy at module level (the fingerprint tests run where torch is absent).
"""

NUM_EXPERTS = 4
NAME = "layers.0.mlp.experts.w13_weight"


class Recorder:
    def __init__(self):
        self.calls = []

    def store(self, param, loaded_weight, weight_name, shard_id, expert_id, return_success):
        self.calls.append((weight_name, shard_id, expert_id, return_success))
        if expert_id is None:
            return False if return_success else None
        param.data[expert_id].copy_(loaded_weight)
        return True if return_success else None


def keyword_only_loader(rec):
    def weight_loader(param, loaded_weight, weight_name, *, shard_id, expert_id, return_success=False):
        return rec.store(param, loaded_weight, weight_name, shard_id, expert_id, return_success)
    return weight_loader


def kwargs_hook_loader(rec):
    """Shape of the TPU / runai hooks: ids taken from kwargs only."""
    def weight_loader(param, loaded_weight, weight_name, *args, **kwargs):
        return rec.store(param, loaded_weight, weight_name, kwargs.get("shard_id"),
                         kwargs.get("expert_id"), kwargs.get("return_success", False))
    return weight_loader


def vllm_style_loader(rec, local_experts):
    """FusedMoE.weight_loader's signature; experts outside `local_experts` are not on this rank."""
    def weight_loader(param, loaded_weight, weight_name, shard_id, expert_id, return_success=False):
        if expert_id not in local_experts:
            rec.calls.append((weight_name, shard_id, expert_id, return_success))
            return False if return_success else None
        return rec.store(param, loaded_weight, weight_name, shard_id, expert_id, return_success)
    return weight_loader


def setup(loader_factory, *extra):
    """(recorder, name, params_dict, param, fused [E, 3, 5] tensor) with `loader_factory`'s loader."""
    import torch

    rec = Recorder()
    param = torch.nn.Parameter(torch.zeros(NUM_EXPERTS, 3, 5), requires_grad=False)
    param.weight_loader = loader_factory(rec, *extra)
    loaded = torch.arange(NUM_EXPERTS * 3 * 5, dtype=torch.float32).reshape(NUM_EXPERTS, 3, 5)
    return rec, NAME, {NAME: param}, param, loaded


def call(cls, how, name, params_dict, loaded, method="load_fused_expert_weights", shard_id="w1"):
    """The real `cls.method` on an uninitialised instance: bound, unbound, or with keywords."""
    self = object.__new__(cls)  # the method reads nothing of self; building the model needs a GPU
    if how == "bound":
        return getattr(self, method)(name, params_dict, loaded, shard_id, NUM_EXPERTS)
    if how == "unbound":
        return getattr(cls, method)(self, name, params_dict, loaded, shard_id, NUM_EXPERTS)
    return getattr(self, method)(name=name, params_dict=params_dict, loaded_weight=loaded,
                                 shard_id=shard_id, num_experts=NUM_EXPERTS)


def expected_calls(name, shard_id="w1"):
    return [(name, shard_id, e, True) for e in range(NUM_EXPERTS)]


def defined(source, tag):
    """The function `source` defines, compiled under a file name linecache knows (so
    ``inspect.getsource`` reads it, as it reads the release's file)."""
    import linecache

    filename = f"<{tag}-{abs(hash(source))}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope = {}
    exec(compile(source, filename, "exec"), scope)
    (function,) = [v for k, v in scope.items() if not k.startswith("__")]
    return function
