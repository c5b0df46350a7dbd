"""Placeholder: pytest plugin (issue 9). Inert until implemented."""
