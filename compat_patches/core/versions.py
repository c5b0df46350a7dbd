"""Installed-distribution versions and PEP 440 range checks, pre-releases included."""

from importlib import metadata

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version


def installed_version(distribution):
    """The installed version string of `distribution`, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def parse_specifier(spec, *, owner):
    try:
        return SpecifierSet(spec)
    except InvalidSpecifier as exc:
        raise ValueError(f"{owner}: invalid version range {spec!r}: {exc}") from None


def parse_version(text):
    """Version(text), or None when `text` is not PEP 440."""
    try:
        return Version(text)
    except InvalidVersion:
        return None


def in_range(version, spec):
    """Whether `version` lies in `spec`, counting rc/dev releases as members.

    packaging's default for pre-releases changed across its releases, so it is always explicit.
    """
    if isinstance(spec, str):
        spec = SpecifierSet(spec)
    if isinstance(version, str):
        version = Version(version)
    return spec.contains(version, prereleases=True)
