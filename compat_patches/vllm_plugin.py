"""Entry point of group ``vllm.general_plugins``: vLLM calls it in every process it starts.

A patch problem in a worker is logged and reported, never fatal, unless COMPAT_PATCHES_STRICT=1.
A misspelt name in COMPAT_PATCHES_ONLY / COMPAT_PATCHES_DISABLE is a configuration error and raises.
"""

import logging

logger = logging.getLogger("compat_patches")


def register():
    import compat_patches

    report = compat_patches.apply_all()
    logger.info("compat_patches vLLM plugin: %s",
                ", ".join(f"{entry.name}={entry.status}" for entry in report))
    return report
