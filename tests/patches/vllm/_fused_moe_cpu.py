"""A REAL vLLM unquantized FusedMoE layer on CPU, minimally initialised (test helper).

vLLM's ``FusedMoE.__init__`` needs a VllmConfig, distributed groups and a GPU platform, none of which
exist here. The layer is therefore an uninitialised instance of the release's real class
(``FusedMoE`` up to 0.23, ``RoutedExperts`` from 0.24) with the attributes its weight loader reads,
and its quant method an uninitialised real ``UnquantizedFusedMoEMethod``. Everything that runs is
vLLM's own code: ``create_weights``, ``FusedMoE.weight_loader`` (``_load_w13``/``_load_w2``, TP
sharding by ``tp_rank``/``tp_size``), ``process_weights_after_loading``, ``_setup_kernel``,
``convert_to_unquantized_kernel_format`` (the FlashInfer CUTLASS ``[w3; w1]`` swap is plain torch).
Two things are stood in for: the platform seen by the method module (a CUDA-like platform, so the
GPU branch of ``process_weights_after_loading`` is taken) and ``make_unquantized_moe_kernel`` (builds
FlashInfer / Triton kernels: replaced by a counter returning a sentinel), both with pytest's
``monkeypatch`` (undone after the test).
"""

import importlib
import types

import torch

METHOD_MODULE = "vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method"
ORACLE_MODULE = "vllm.model_executor.layers.fused_moe.oracle.unquantized"

E, H, I_FULL = 4, 8, 12   # experts, hidden size, full intermediate size (I_tp = I_FULL // tp)


def method_module():
    return importlib.import_module(METHOD_MODULE)


def layer_class():
    """The layer class that owns ``weight_loader`` in this release."""
    for module_name, class_name in (
        ("vllm.model_executor.layers.fused_moe.routed_experts", "RoutedExperts"),
        ("vllm.model_executor.layers.fused_moe.layer", "FusedMoE"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        if cls is not None and "weight_loader" in vars(cls):
            return cls
    raise LookupError("no FusedMoE / RoutedExperts class with a weight_loader in this vLLM")


def backend(name):
    oracle = importlib.import_module(ORACLE_MODULE)
    return getattr(oracle.UnquantizedMoeBackend, name)


class CudaLikePlatform:
    """The method module's platform, seen as CUDA (no ROCm padding, GPU branch of PWAL)."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def is_cuda_alike(self):
        return True

    def is_cuda(self):
        return True

    def is_rocm(self):
        return False

    def is_cpu(self):
        return False

    def is_xpu(self):
        return False

    def is_tpu(self):
        return False


class KernelCounter:
    """Stands in for ``make_unquantized_moe_kernel``; counts builds."""

    def __init__(self, returns_pair):
        self.calls = 0
        self.returns_pair = returns_pair

    def __call__(self, *args, **kwargs):
        self.calls += 1
        experts = types.SimpleNamespace(process_weights_after_loading=lambda layer: None)
        kernel = types.SimpleNamespace(build=self.calls, fused_experts=experts)
        return (kernel, True) if self.returns_pair else kernel


def install_gpu_stand_ins(monkeypatch):
    """CUDA-like platform + counting kernel factory in the method module; returns the counter."""
    import ast
    import inspect

    module = method_module()
    monkeypatch.setattr(module, "current_platform", CudaLikePlatform(module.current_platform))
    source = inspect.getsource(module.UnquantizedFusedMoEMethod._setup_kernel)
    pair = any(isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)
               and getattr(getattr(node.value, "func", None), "id", "") ==
               "make_unquantized_moe_kernel" for node in ast.walk(ast.parse(
                   __import__("textwrap").dedent(source))))
    counter = KernelCounter(pair)
    monkeypatch.setattr(module, "make_unquantized_moe_kernel", counter)
    return counter


def _moe_config(is_act_and_mul, tp_rank=0, tp_size=1):
    parallel = types.SimpleNamespace(tp_rank=tp_rank, tp_size=tp_size, ep_rank=0, ep_size=1,
                                     dp_size=1, use_ep=False,
                                     needs_round_robin_routing_tables=False)
    return types.SimpleNamespace(
        is_act_and_mul=is_act_and_mul, has_bias=False, ep_rank=0, num_local_experts=E,
        num_experts=E, num_logical_experts=E, max_num_tokens=8, hidden_dim=H,
        hidden_dim_unpadded=H, intermediate_size_per_partition=I_FULL // tp_size,
        intermediate_size_per_partition_unpadded=I_FULL // tp_size, device=torch.device("cpu"),
        moe_parallel_config=parallel, tp_rank=tp_rank, tp_size=tp_size, intermediate_size=I_FULL,
        tp_shard_with_padding=False, rocm_aiter_fmoe_enabled=False, num_fused_shared_experts=0)


def make_method(backend_name, is_act_and_mul=True, tp_rank=0, tp_size=1):
    cls = method_module().UnquantizedFusedMoEMethod
    method = cls.__new__(cls)
    moe = _moe_config(is_act_and_mul, tp_rank, tp_size)
    values = dict(moe=moe, moe_config=moe, unquantized_backend=backend(backend_name), kernel=None,
                  moe_kernel=None, moe_quant_config=None, experts_cls=object,
                  rocm_aiter_moe_enabled=False, use_inplace=True, topk_indices_dtype=None,
                  moe_mk=None, _is_monolithic=False)
    for key, value in values.items():
        try:
            object.__setattr__(method, key, value)
        except AttributeError:   # a read-only property in this release
            pass
    return method


def make_layer(method, tp_rank=0, tp_size=1, dtype=torch.float32):
    """A minimally initialised real FusedMoE / RoutedExperts with weights made by the real
    ``create_weights`` (loader: the layer's real ``weight_loader``)."""
    cls = layer_class()
    layer = cls.__new__(cls)
    torch.nn.Module.__init__(layer)
    moe_config = _moe_config(method.moe.is_act_and_mul, tp_rank, tp_size)
    parallel = moe_config.moe_parallel_config
    experts = types.SimpleNamespace(map_global_to_local=lambda expert_id: expert_id,
                                    num_fused_shared_experts=0, expert_map=None)
    # _fused_shared_expert_quantizer (0.32 - 0.33), shared_expert_online_loader (0.34 on): None
    # without online-quantized fused shared experts; _loaded_expert_biases (0.27 on): set(), as built
    values = dict(expert_map_manager=experts, _fused_shared_expert_quantizer=None,
                  shared_expert_online_loader=None, _loaded_expert_biases=set(),
                  runner=types.SimpleNamespace(shared_experts=None),
                  quant_method=method, quant_config=None, _expert_map=None, moe_config=moe_config,
                  moe_parallel_config=parallel, shared_experts=None, global_num_experts=E,
                  local_num_experts=E, expert_placement_strategy="linear", tp_rank=tp_rank,
                  tp_size=tp_size, ep_size=1, ep_rank=0, params_dtype=dtype, hidden_size=H,
                  intermediate_size_per_partition=I_FULL // tp_size, layer_name="model.experts",
                  num_fused_shared_experts=0, is_act_and_mul=method.moe.is_act_and_mul)
    for key, value in values.items():
        try:
            setattr(layer, key, value)
        except AttributeError:   # a property in this release, computed from the values above
            pass
    method.create_weights(layer, num_experts=E, hidden_size=H,
                          intermediate_size_per_partition=I_FULL // tp_size, params_dtype=dtype,
                          weight_loader=layer.weight_loader)
    return layer


def checkpoint(seed, dtype=torch.float32):
    """Per-expert checkpoint tensors: {expert: {"w1": [I, H], "w3": [I, H], "w2": [H, I]}}."""
    generator = torch.Generator().manual_seed(seed)
    return {e: {"w1": torch.randn(I_FULL, H, generator=generator, dtype=dtype),
                "w3": torch.randn(I_FULL, H, generator=generator, dtype=dtype),
                "w2": torch.randn(H, I_FULL, generator=generator, dtype=dtype)}
            for e in range(E)}


def load(layer, weights, fused=False):
    """Load every shard through each Parameter's ``weight_loader`` as a model's load_weights does:
    per expert (2-D), or one fused 3-D tensor per shard (``[E, I, H]`` / ``[E, H, I]``)."""
    for shard in ("w1", "w3", "w2"):
        param = layer.w2_weight if shard == "w2" else layer.w13_weight
        name = "experts.w2_weight" if shard == "w2" else "experts.w13_weight"
        if fused:
            stacked = torch.stack([weights[e][shard] for e in range(E)])
            param.weight_loader(param, stacked, name, shard_id=shard, expert_id=0)
        else:
            for e in range(E):
                param.weight_loader(param, weights[e][shard], name, shard_id=shard, expert_id=e)


def _vllm_classes(cls):
    """(class, its ast.ClassDef) for every vLLM class in ``cls``'s MRO, most derived first."""
    import ast
    import inspect
    import textwrap

    return [(klass, ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0])
            for klass in cls.__mro__ if klass.__module__.split(".")[0] == "vllm"]


def _functions(cls):
    """name -> ast node of every method / property of ``cls`` (the MRO's first definer wins; in a
    class the last definition, i.e. the implementation after its ``@overload`` stubs)."""
    import ast

    found = {}
    for _, node in _vllm_classes(cls):
        own = {item.name: item for item in node.body if isinstance(item, ast.FunctionDef)}
        for name, item in own.items():
            found.setdefault(name, item)
    return found


def _self_attributes(function, store):
    """``X`` of every ``self.X`` stored (``store``) or loaded in ``function``; with loads, the
    ``Y`` of every ``self.X.Y`` too, as (X, Y)."""
    import ast

    context = ast.Store if store else ast.Load
    names, chained = set(), set()
    for node in ast.walk(function):
        if not isinstance(node, ast.Attribute):
            continue
        if isinstance(node.value, ast.Name) and node.value.id == "self" and isinstance(node.ctx, context):
            names.add(node.attr)
        elif (not store and isinstance(node.value, ast.Attribute)
              and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            chained.add((node.value.attr, node.attr))
    return names, chained


def unset_attributes(real_cls, entries, stand_in):
    """What the stand-in for ``real_cls`` lacks of what the real code reads, by name.

    The stand-ins are uninitialised instances (``__new__``) given by hand the attributes the
    release's ``__init__`` would set. Read from the release's source: every attribute some
    ``__init__`` of the MRO assigns on ``self`` that the methods run from ``entries`` (followed
    through ``self.<method>(...)`` and properties) read, must be set on ``stand_in``; where its
    value is a stand-in namespace (``SimpleNamespace``), every ``self.<attr>.<name>`` read there
    must be on it too. Returns ``["Class.attr", "attr.name", ...]`` (empty: faithful)."""
    functions = _functions(real_cls)
    assigned = set()
    for _, node in _vllm_classes(real_cls):
        for item in node.body:
            if getattr(item, "name", None) == "__init__":
                assigned |= _self_attributes(item, store=True)[0]
    reached, todo, read, chained = set(), list(entries), set(), set()
    while todo:
        name = todo.pop()
        if name in reached or name not in functions:
            continue
        reached.add(name)
        names, pairs = _self_attributes(functions[name], store=False)
        todo.extend(n for n in names if n in functions)
        read |= {n for n in names if n not in functions}
        chained |= pairs
    missing = [f"{real_cls.__name__}.{name}" for name in sorted(assigned & read)
               if not hasattr(stand_in, name)]
    for attr, name in sorted(chained):
        value = getattr(stand_in, attr, None)
        if isinstance(value, types.SimpleNamespace) and not hasattr(value, name):
            missing.append(f"{attr}.{name}")
    return missing


def fresh(backend_name, weights, tp_rank=0, tp_size=1):
    """A layer loaded with `weights` and processed once: the oracle of a weight sync."""
    method = make_method(backend_name, tp_rank=tp_rank, tp_size=tp_size)
    layer = make_layer(method, tp_rank, tp_size)
    load(layer, weights)
    method.process_weights_after_loading(layer)
    return layer
