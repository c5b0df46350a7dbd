"""Small fake target modules and records for testing the core without any real library."""

import importlib
import sys
import textwrap
import uuid

from compat_patches.core import Patch, PatchManager, Target

FAKE_SOURCE = '''
class Base:
    def method(self, x, scale=1):
        return ("original", x * scale)


class Sub(Base):
    pass


def function(a, b):
    return a + b
'''


def unique_name(prefix="fake_target"):
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def write_module(tmp_path, monkeypatch, source=FAKE_SOURCE, name=None):
    """A module on sys.path, not imported yet. Returns its name."""
    name = name or unique_name()
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return name


def import_module(tmp_path, monkeypatch, source=FAKE_SOURCE):
    name = write_module(tmp_path, monkeypatch, source)
    return importlib.import_module(name)


def tagging_wrapper(tag):
    def wrapper(wrapped, instance, args, kwargs):
        return (tag, wrapped(*args, **kwargs))
    return wrapper


def make_patch(module, name="fake-fix", attribute="Base.method", params=None, check=None,
               affected=None, versions=None, wrapper=None, dist="fakelib", fixed=None):
    return Patch(
        name=name,
        summary=f"fake fix of {attribute}",
        upstream="https://example.invalid/fix",
        affected=affected or {dist: ">=1.0rc0,<2"},
        fixed_in=f"{dist} 2.0",
        targets=(Target(f"{module}:{attribute}", wrapper or tagging_wrapper(name),
                        params=params, check=check, versions=versions, fixed=fixed),),
    )


def manager(*patches, versions=None):
    versions = {"fakelib": "1.5.0"} if versions is None else versions
    return PatchManager(patches, version_of=versions.get)


def our_wrappers(obj, wrapper_fn):
    """How many of the wrappers in obj's wrapt chain call `wrapper_fn`."""
    import wrapt

    return sum(1 for entry in wrapt.wrapper_chain(obj)
               if getattr(entry, "_self_wrapper", None) is wrapper_fn)


def drop_module(name):
    sys.modules.pop(name, None)
