"""Patches of peft."""
