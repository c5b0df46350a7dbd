"""The directory `compat-patches-run` puts first on PYTHONPATH (it holds `sitecustomize.py`).

A package only so that it ships in the wheel; nothing imports it as ``compat_patches._bootstrap``.
"""
