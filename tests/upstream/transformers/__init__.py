"""Tests copied from huggingface/transformers (see each file's header)."""
