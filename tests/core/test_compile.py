"""torch.compile meets our wrappers as callables and runs them (never the original's code alone)."""

import types

import pytest

from .fakes import drop_module, make_patch, manager, write_module

torch = pytest.importorskip("torch")

SOURCE = '''
import torch

class Layer(torch.nn.Module):
    def forward(self, x):
        return x + 1
'''


def _plus_ten(wrapped, instance, args, kwargs):
    return wrapped(*args, **kwargs) + 10


@pytest.fixture
def layer_module(tmp_path, monkeypatch):
    import importlib

    name = write_module(tmp_path, monkeypatch, source=SOURCE)
    yield importlib.import_module(name)
    drop_module(name)


@pytest.mark.parametrize("holder", ["class", "instance"])
def test_a_compiled_module_runs_the_wrapper(layer_module, holder):
    m = manager(make_patch(layer_module.__name__, attribute="Layer.forward", wrapper=_plus_ten))
    layer = layer_module.Layer()
    x = torch.zeros(2)
    m.apply_all()
    try:
        forward = vars(layer_module.Layer)["forward"]
        assert not isinstance(forward, types.FunctionType)  # wrapt's proxy would pass for one
        assert not isinstance(layer.forward, types.MethodType)
        torch._dynamo.reset()
        if holder == "class":
            compiled = torch.compile(layer, backend="eager")
            assert torch.equal(compiled(x), x + 11)
        else:  # a bound wrapper held by someone else (accelerate's _old_forward) and called there
            holder_module = torch.nn.Module()
            holder_module.inner = layer.forward
            compiled = torch.compile(lambda t: holder_module.inner(t), backend="eager")
            assert torch.equal(compiled(x), x + 11)
    finally:
        m.revert_all()
    torch._dynamo.reset()
    assert torch.equal(torch.compile(layer, backend="eager")(x), x + 1)
