"""Placeholder: ``compat-patches-run`` (issue 9)."""


def main(argv=None):
    raise SystemExit("compat-patches-run is not implemented yet")
