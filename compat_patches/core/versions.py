"""Installed-distribution versions and PEP 440 range checks, pre-releases included.

Versions are read from the ``<name>-<version>.dist-info`` directory names on ``sys.path``, as
``importlib.metadata`` would find them first, without importing it: its ``email`` parser, zipfile
and pathlib would cost every patched process tens of milliseconds. Anything this cannot read
exactly (egg-info, a zip on the path, two versions in one directory) falls back to
``importlib.metadata``. ``packaging`` is imported only to compare versions, i.e. only where a
patched library is installed.
"""

import os
import sys

_listings = {}  # path entry -> (mtime_ns, {normalized name: [versions]}, names only METADATA can tell)


def _normalize(name):
    out, last_sep = [], False
    for char in name.lower():
        if char in "-_.":
            if not last_sep:
                out.append("_")
            last_sep = True
        else:
            out.append(char)
            last_sep = False
    return "".join(out)


def _listing(entry):
    """(dist-info versions by normalized name, names whose version needs their metadata) of one
    path entry; cached until the directory changes."""
    try:
        mtime = os.stat(entry).st_mtime_ns
    except (OSError, ValueError):
        return {}, frozenset()
    cached = _listings.get(entry)
    if cached is not None and cached[0] == mtime:
        return cached[1], cached[2]
    versions, eggs = {}, set()
    try:
        names = os.listdir(entry)
    except (OSError, ValueError):
        names = ()
    for name in names:
        if name.endswith(".dist-info"):
            dist, sep, version = name[: -len(".dist-info")].rpartition("-")
            if sep:
                versions.setdefault(_normalize(dist), []).append(version)
            else:  # no version in the name: only the METADATA file tells
                eggs.add(_normalize(version))
        elif name.endswith((".egg-info", ".egg-link", ".egg")):
            eggs.add(_normalize(name.split("-", 1)[0].rsplit(".", 1)[0]))
    _listings[entry] = (mtime, versions, frozenset(eggs))
    return versions, frozenset(eggs)


def _from_metadata(distribution):
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def installed_version(distribution):
    """The installed version string of `distribution`, or None when it is not installed.

    Same answer as ``importlib.metadata.version`` (the first distribution on ``sys.path``).
    """
    wanted = _normalize(distribution)
    for entry in sys.path:
        if not isinstance(entry, str):
            continue
        entry = entry or os.curdir
        if not os.path.isdir(entry):
            if os.path.exists(entry):  # a zip or egg file may hold metadata
                return _from_metadata(distribution)
            continue
        versions, eggs = _listing(entry)
        found = versions.get(wanted)
        if wanted in eggs or (found is not None and len(found) != 1):
            return _from_metadata(distribution)
        if found:
            return found[0]
    if any(not isinstance(entry, str) for entry in sys.path):
        return _from_metadata(distribution)
    return None


def parse_specifier(spec, *, owner):
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return SpecifierSet(spec)
    except InvalidSpecifier as exc:
        raise ValueError(f"{owner}: invalid version range {spec!r}: {exc}") from None


def parse_version(text):
    """Version(text), or None when `text` is not PEP 440."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def in_range(version, spec):
    """Whether `version` lies in `spec`, counting rc/dev releases as members.

    packaging's default for pre-releases changed across its releases, so it is always explicit.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    if isinstance(spec, str):
        spec = SpecifierSet(spec)
    if isinstance(version, str):
        version = Version(version)
    return spec.contains(version, prereleases=True)
