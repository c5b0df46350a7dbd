"""Tests copied from verl-project/verl (see each file's header)."""
