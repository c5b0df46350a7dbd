"""Copies of upstream fixes' own tests, run with and without the patch that backports the fix."""
