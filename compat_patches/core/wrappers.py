"""Our wrapt wrappers, pickled and copied as the functions they wrap are: by reference.

wrapt's proxies refuse ``pickle`` / ``copy`` (``NotImplementedError: object proxy must define
__reduce__()``), so a patched method would break Ray, multiprocessing and ``copy.deepcopy`` of any
object holding a reference to it. A function pickles as its qualified name and a bound method as
``getattr(owner, name)``; so do these, resolving in the loading process to whatever is installed
there (patched or not), exactly as the original would.

Both also answer their own type as ``__class__`` (wrapt's proxies answer the wrapped function's):
``torch.compile`` takes anything whose ``__class__`` is a function for one, traces its code, the
original's, and so silently runs the unpatched code (or fails on its guards). Seen as a callable
object, a wrapper is called as it is: a graph break, and our code runs.
"""

import copy
import sys

import wrapt


def _holder(bound):
    """What a bound method is bound to (instance, or class for a classmethod), else None."""
    return getattr(bound.__wrapped__, "__self__", None)


class BoundPatchWrapper(wrapt.BoundFunctionWrapper):
    @property
    def __class__(self):
        return type(self)

    def _reference(self):
        holder = _holder(self)
        # a plain function reached through its class (or a staticmethod): the class holds it
        return (self._self_owner if holder is None else holder), self._self_parent._self_attribute

    def __reduce_ex__(self, protocol):
        qualname = getattr(self.__wrapped__, "__qualname__", "")
        if _holder(self) is None and "<locals>" in qualname:
            return qualname  # a local function reached through its class: unpicklable, as it is
        return getattr, self._reference()

    def __copy__(self):
        return self if _holder(self) is None else getattr(*self._reference())

    def __deepcopy__(self, memo):
        holder, name = self._reference()
        if _holder(self) is None:
            return self  # functions are atomic for copy
        return getattr(copy.deepcopy(holder, memo), name)


class PatchWrapper(wrapt.FunctionWrapper):
    """The wrapper installed on a target; `attribute` is the name it is installed under."""

    __bound_function_wrapper__ = BoundPatchWrapper

    @property
    def __class__(self):
        return type(self)

    def __init__(self, wrapped, wrapper, attribute):
        super().__init__(wrapped, wrapper)
        self._self_attribute = attribute

    def __reduce_ex__(self, protocol):
        # As pickle saves a function: by its module and qualified name. Where that name now holds
        # something else (the target re-binds a function defined in another module), reference
        # what holds it; copy.copy(x) is x for functions and for us.
        original = self.__wrapped__
        try:
            found = sys.modules[original.__module__]
            for part in original.__qualname__.split("."):
                found = getattr(found, part)
        except (AttributeError, KeyError, TypeError):
            return original.__qualname__  # pickle then fails as it would for the original
        return original.__qualname__ if found is self else (copy.copy, (found,))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self
