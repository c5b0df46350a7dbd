"""A manager over a fake record, importable by the contract child (module `fake_contract_target`)."""

from compat_patches.core import Patch, PatchManager, Target


def _wrapper(wrapped, instance, args, kwargs):
    return ("patched", wrapped(*args, **kwargs))


PATCH = Patch(name="fake-contract", summary="s", upstream="u", affected={"fakelib": "<2"},
              targets=(Target("fake_contract_target:Base.method", _wrapper, params=("self", "x")),
                       Target("fake_contract_target:function", _wrapper)))


def make_manager():
    return PatchManager([PATCH], version_of={"fakelib": "1.0rc1"}.get)


# A record whose target the fork server has already imported (contract_child imports traceback).
PRELOADED = Patch(name="fake-preloaded", summary="s", upstream="u", affected={"fakelib": "<2"},
                  targets=(Target("traceback:format_exc", _wrapper),))


def make_preloaded_manager():
    return PatchManager([PRELOADED], version_of={"fakelib": "1.0"}.get)
