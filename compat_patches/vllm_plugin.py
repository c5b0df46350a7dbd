"""Entry point of group ``vllm.general_plugins``: vLLM calls it in every process it starts.

A patch problem in a worker is logged and reported, never fatal, unless COMPAT_PATCHES_STRICT=1.
A misspelt name in COMPAT_PATCHES_ONLY / COMPAT_PATCHES_DISABLE is a configuration error and raises
(vLLM loads its plugins in the engine's own process first, so the error comes before any worker).
"""


def register():
    from compat_patches.activation import activate, validate_environment

    validate_environment()
    return activate("vllm").report
