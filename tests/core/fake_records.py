"""A manager over a fake record, importable by the contract child (module `fake_contract_target`)."""

from compat_patches.core import Patch, PatchManager, Target


def _wrapper(wrapped, instance, args, kwargs):
    return ("patched", wrapped(*args, **kwargs))


PATCH = Patch(name="fake-contract", summary="s", upstream="u", affected={"fakelib": "<2"},
              targets=(Target("fake_contract_target:Base.method", _wrapper, params=("self", "x")),
                       Target("fake_contract_target:function", _wrapper)))


def make_manager():
    return PatchManager([PATCH], version_of={"fakelib": "1.0rc1"}.get)
