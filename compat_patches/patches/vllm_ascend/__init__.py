"""Patches of vLLM-Ascend (read from source: it needs torch_npu to import)."""
