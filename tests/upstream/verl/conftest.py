"""The `converter` of the copied verl test: our helper, or verl's real FSDP engine (see tests/verl_engine.py)."""

import importlib.util

import pytest


@pytest.fixture(scope="module", autouse=True)
def verl_gloo_world():
    """Where verl and torch are installed: verl's CPU platform and a gloo world of one rank, set up
    before anything (the [patched] mode imports verl's engine module) reads verl's device name."""
    if importlib.util.find_spec("verl") is None or importlib.util.find_spec("torch") is None:
        yield False
        return
    from ...verl_engine import gloo_world_1

    with gloo_world_1():
        yield True


@pytest.fixture
def converter(request, verl_gloo_world):
    """'helper': compat_patches.moe.expand_packed_experts; 'engine': verl's FSDPEngine stream."""
    if request.param == "engine" and not verl_gloo_world:
        pytest.skip("the engine converter needs verl and torch")
    return request.param
