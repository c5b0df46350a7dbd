"""Published release artifacts (wheels, sdists) read by tests without installing them.

Each is downloaded once from PyPI, checked against the index's sha256, reduced to the few files a
test reads, and cached in $COMPAT_PATCHES_ARTIFACT_CACHE (default ~/.cache/compat_patches). Offline,
the tests that need one skip with the reason after a single failed attempt.
"""

import hashlib
import json
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("COMPAT_PATCHES_ARTIFACT_CACHE", "~/.cache/compat_patches")).expanduser()
_INDEX = {}
_OFFLINE = []


def _index(project):
    if project not in _INDEX:
        request = urllib.request.Request(f"https://pypi.org/simple/{project}/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            _INDEX[project] = json.load(response)
    return _INDEX[project]


def artifact_dir(project, version, kind, members, wheel_tag="cp311-cp311-manylinux"):
    """Download one wheel/sdist (sha256-checked), keep only `members` (None: a whole wheel, e.g. a
    pure-Python release to put on a child's PYTHONPATH), cache them; skip if offline."""
    dest = CACHE / project / version
    done = dest / ".members.json"  # the members asked for so far (some may not exist in a release)
    asked = set(json.loads(done.read_text())) if done.exists() else set()
    if "*" in asked or (members is not None and asked >= set(members)):
        return dest
    members = ("*",) if members is None else tuple(asked | set(members))
    if _OFFLINE:   # one failed attempt is enough: do not wait on the network for every test
        pytest.skip(_OFFLINE[0])
    norm = project.replace("-", "_")
    try:
        files = _index(project)["files"]
        if kind == "wheel":
            wanted = [f for f in files if f["filename"].startswith(f"{norm}-{version}-{wheel_tag}")
                      and f["filename"].endswith(("x86_64.whl", "-any.whl"))]
        else:
            wanted = [f for f in files if f["filename"] == f"{norm}-{version}.tar.gz"]
        if not wanted:
            pytest.fail(f"{project} {version}: no {kind} on the index (was it removed?)")
        info = wanted[0]
        dest.mkdir(parents=True, exist_ok=True)
        archive = dest / info["filename"]
        with urllib.request.urlopen(info["url"], timeout=120) as response, open(archive, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        _OFFLINE.append(f"offline or index unreachable: cannot download {project} {version} ({exc}); "
                        f"set COMPAT_PATCHES_ARTIFACT_CACHE to a filled cache to run these tests")
        pytest.skip(_OFFLINE[0])
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != info["hashes"]["sha256"]:
        archive.unlink()
        pytest.fail(f"{archive.name}: sha256 mismatch")
    if kind == "wheel":
        with zipfile.ZipFile(archive) as zf:
            if members == ("*",):
                zf.extractall(dest)
            for member in members:
                if member in zf.namelist():
                    (dest / member).parent.mkdir(parents=True, exist_ok=True)
                    (dest / member).write_bytes(zf.read(member))
    else:
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                inner = m.name.split("/", 1)[-1]
                if inner in members and m.isfile():
                    (dest / inner).parent.mkdir(parents=True, exist_ok=True)
                    (dest / inner).write_bytes(tf.extractfile(m).read())
    archive.unlink()
    done.write_text(json.dumps(sorted(members)))
    return dest
