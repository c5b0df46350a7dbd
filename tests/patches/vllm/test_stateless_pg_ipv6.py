"""vllm-stateless-pg-ipv6 against vLLM's REAL ``StatelessProcessGroup.create`` (CPU, real TCPStores).

* affected releases (0.8.5 on): unpatched, rank 0 on ``::1`` raises ``socket.gaierror`` (the bug);
  patched, it forms the group, in world size 1 and with a second real process (world size 2), and
  objects (a tensor among them) go through the group's ``broadcast_obj`` / ``send_obj`` / ``recv_obj``;
* ``127.0.0.1`` works with and without the patch and gives the same result; the original runs for
  it (and for other ranks, and for a caller's ``listen_socket`` from 0.19.0);
* before 0.8.5 (no ``AF_INET`` socket in ``create``): not-needed, nothing touched.

A PyNcclCommunicator over the group (what trainers build next) needs a GPU: not run here.
"""

import gc
import socket
import subprocess
import sys
import textwrap

import pytest

import compat_patches

pytest.importorskip("torch")

NAME = "vllm-stateless-pg-ipv6"
AFFECTED = ">=0.8.5.dev0"
affected = pytest.mark.requires(vllm=AFFECTED)
pytestmark = pytest.mark.requires(vllm=">=0.6.4")  # StatelessProcessGroup exists


def _ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")


def free_port(host):
    """A port nobody listens on at `host` (bind port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _group():
    from vllm.distributed.utils import StatelessProcessGroup

    return StatelessProcessGroup


def _close(group):
    """Drop a group deterministically (0.8.5 - 0.18.1 keep the listen socket on the group; torch's
    store daemon aborts the interpreter at exit if that socket is closed under it, patched or not)."""
    del group
    gc.collect()


def _round_trip(group):
    """What a world-size-1 group gives back through its own store."""
    import torch

    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    echoed = group.broadcast_obj({"tensor": tensor, "step": 7}, src=0)
    return group.rank, group.world_size, echoed["step"], echoed["tensor"].tolist()


@affected
@needs_ipv6
def test_unpatched_ipv6_host_raises():
    with pytest.raises(socket.gaierror, match="Address family"):
        _group().create("::1", free_port("::1"), 0, 1, store_timeout=10)


@affected
@needs_ipv6
def test_patched_ipv6_host_forms_the_group():
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "applied", report[NAME]
        group = _group().create("::1", free_port("::1"), 0, 1, store_timeout=10)
    assert _round_trip(group) == (0, 1, 7, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    held = getattr(group, "socket", None)  # 0.8.5 - 0.18.1 keep it; 0.19.0 on hand it to the store
    if held is not None:
        assert held.family == socket.AF_INET6
    _close(group)


@affected
def test_ipv4_host_is_unchanged_by_the_patch():
    results = []
    for patch in (False, True):
        if patch:
            with compat_patches.patched(NAME) as report:
                assert report[NAME].status == "applied", report[NAME]
                group = _group().create("127.0.0.1", free_port("127.0.0.1"), 0, 1, store_timeout=10)
        else:
            group = _group().create("127.0.0.1", free_port("127.0.0.1"), 0, 1, store_timeout=10)
        held = getattr(group, "socket", None)
        results.append((_round_trip(group), None if held is None else (held.family, held.getsockname()[0])))
        _close(group)
    assert results[0] == results[1]
    assert results[0][0] == (0, 1, 7, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])


@affected
def test_ipv4_hosts_other_ranks_and_unresolvable_hosts_reach_the_original():
    from compat_patches.patches.vllm import stateless_pg_ipv6 as record

    assert record.listen_address("127.0.0.1", 1234) is None
    assert record.listen_address("no-such-host.invalid", 1234) is None
    if _ipv6_loopback():
        family, sockaddr = record.listen_address("::1", 1234)
        assert family == socket.AF_INET6 and sockaddr[:2] == ("::1", 1234)


@pytest.mark.requires(vllm=">=0.19.0.dev0")
@needs_ipv6
def test_a_callers_listen_socket_is_passed_through():
    """0.19.0 on: a caller that binds its own socket already works unpatched; the patch leaves it."""
    for patch in (False, True):
        listen = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        listen.bind(("::1", 0))
        listen.listen()
        port = listen.getsockname()[1]
        if patch:
            with compat_patches.patched(NAME):
                group = _group().create("::1", port, 0, 1, store_timeout=10, listen_socket=listen)
        else:
            group = _group().create("::1", port, 0, 1, store_timeout=10, listen_socket=listen)
        assert listen.fileno() == -1  # the store took ownership of this very socket
        assert _round_trip(group)[2] == 7
        _close(group)


_PEER = textwrap.dedent("""
    import gc, sys, torch
    from vllm.distributed.utils import StatelessProcessGroup
    for spec in sys.argv[1:]:
        host, port = spec.rsplit("@", 1)
        group = StatelessProcessGroup.create(host, int(port), 1, 2, store_timeout=30)
        got = group.broadcast_obj(None, src=0)
        group.send_obj({"host": host, "doubled": got["tensor"] * 2}, dst=0)
        del group
        gc.collect()
    print("peer done", flush=True)
""")


@affected
@needs_ipv6
def test_world_size_two_across_real_processes(tmp_path):
    """Rank 0 here (patched for ::1, both ways for 127.0.0.1), rank 1 in a second real process."""
    import torch

    cases = [("::1", True), ("127.0.0.1", False), ("127.0.0.1", True)]
    ports = [free_port(host) for host, _ in cases]
    script = tmp_path / "peer.py"
    script.write_text(_PEER)
    peer = subprocess.Popen([sys.executable, str(script)] + [f"{h}@{p}" for (h, _), p in zip(cases, ports)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        results = []
        for (host, patch), port in zip(cases, ports):
            if patch:
                with compat_patches.patched(NAME) as report:
                    assert report[NAME].status == "applied", report[NAME]
                    group = _group().create(host, port, 0, 2, store_timeout=30)
            else:
                group = _group().create(host, port, 0, 2, store_timeout=30)
            tensor = torch.arange(4, dtype=torch.float32)
            assert group.broadcast_obj({"tensor": tensor}, src=0)["tensor"].equal(tensor)
            reply = group.recv_obj(src=1)
            results.append((reply["host"], reply["doubled"].tolist()))
            _close(group)
        output, _ = peer.communicate(timeout=60)
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.communicate()
    assert peer.returncode == 0, output
    assert results == [(host, [0.0, 2.0, 4.0, 6.0]) for host, _ in cases]


@affected
def test_installed_body_matches_the_fingerprint_and_reverts_exactly():
    from compat_patches.patches.vllm import stateless_pg_ipv6 as record

    cls = _group()
    original = cls.__dict__["create"]
    assert record.check_body(original) is None
    assert record.fixed_body(original) is None
    with compat_patches.patched(NAME):
        assert cls.__dict__["create"] is not original
    assert cls.__dict__["create"] is original


def test_fingerprints_refuse_other_bodies_and_recognise_a_fix():
    from compat_patches.patches.vllm import stateless_pg_ipv6 as record

    def fixed(host, port, rank, world_size, data_expiration_seconds=3600, store_timeout=300,
              listen_socket=None):
        launch_server = rank == 0
        if launch_server and listen_socket is None:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            listen_socket = socket.socket(family, socket.SOCK_STREAM)
            listen_socket.bind(address)
        return launch_server, listen_socket

    def other(host, port, rank, world_size, data_expiration_seconds=3600, store_timeout=300):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    assert "getaddrinfo" in record.fixed_body(staticmethod(fixed))
    assert record.check_body(fixed) is not None
    assert record.fixed_body(other) is None
    assert "differs" in record.check_body(staticmethod(other))


@pytest.mark.requires(vllm="<0.8.5")
def test_older_releases_are_not_needed_and_create_still_works():
    cls = _group()
    original = cls.__dict__["create"]
    with compat_patches.patched(NAME) as report:
        assert report[NAME].status == "not-needed", report[NAME]
        assert cls.__dict__["create"] is original
        group = cls.create("127.0.0.1", free_port("127.0.0.1"), 0, 1)
    assert _round_trip(group)[2] == 7
    _close(group)
