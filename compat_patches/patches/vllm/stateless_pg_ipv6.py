"""vllm-stateless-pg-ipv6: ``StatelessProcessGroup.create`` listens on an IPv6 (or IPv6-only) host.

The bug (read with ``ast`` in every vLLM wheel 0.6.4 - 0.34.0, run on CPU on 0.18.0 and 0.34.0;
table on the docs page): since 0.8.5 rank 0 of ``vllm.distributed.utils:StatelessProcessGroup.create``
(the weight-sync group trl's ``vllm_client`` and ms-swift build with ``host=master_addr``) binds its
TCPStore listen socket itself, "on the specified interface (instead of 0.0.0.0)", and builds it as
``socket.socket(socket.AF_INET, socket.SOCK_STREAM)``. ``bind((host, port))`` then raises
``socket.gaierror: [Errno -9] Address family for hostname not supported`` for ``::1``, any IPv6
literal and any host name with only AAAA records; ``127.0.0.1`` works. Unfixed through 0.34.0 (vllm
PR 39619 open), so the range is open (``verified_through``). Before 0.8.5 ``create`` let torch's
TCPStore open the socket (no ``AF_INET``): not affected.

Three buggy bodies (the ``check`` fingerprint accepts exactly these; any other body is ``drifted``):

* 0.8.5 - 0.9.0.1: ``listen_fd = listen_socket.fileno()`` passed as ``TCPStore(master_listen_fd=...)``,
  the socket kept in ``StatelessProcessGroup(socket=...)``, ``datetime.timedelta``;
* 0.9.1 - 0.18.1: the same statements with ``timedelta`` imported by name;
* 0.19.0 - 0.34.0: ``create(..., listen_socket=None)`` takes a caller's socket, and only
  ``if launch_server and listen_socket is None`` builds the ``AF_INET`` one, handed to
  ``create_tcp_store``.

The fix, as PR 39619 and ms-swift's hand patch do it: take the family from ``getaddrinfo``. Where the
host resolves as IPv4 (``getaddrinfo(host, port, AF_INET, SOCK_STREAM)`` succeeds: exactly the hosts
the unpatched ``AF_INET`` bind accepts), on ranks other than 0, and where the caller passed
``listen_socket``, the original runs untouched, so IPv4 behaviour is the unpatched behaviour. Else the
family and address come from ``getaddrinfo(host, port, type=SOCK_STREAM)`` (first entry) and rank 0's
socket is built with them (``SO_REUSEADDR``, ``bind``, ``listen``, as upstream). From 0.19.0 that socket
is passed to the original as ``listen_socket=`` (vLLM's own path from there on); before 0.19.0 the
wrapper runs the fingerprinted body with that one socket changed (``TCPStore(master_listen_fd=...)``,
``StatelessProcessGroup(socket=...)``). A host that resolves to nothing goes to the original, which
raises its own error. A body that already takes the family from ``getaddrinfo`` (a source build after
PR 39619, a backport) is reported ``not-needed`` (``fixed=``).
"""

from compat_patches.core import Patch, Target
from compat_patches.core.record import Copy, Replaces
from compat_patches.core.source import fingerprint

NAME = "vllm-stateless-pg-ipv6"
TARGET = "vllm.distributed.utils:StatelessProcessGroup.create"

_LISTEN = """\
launch_server = rank == 0
if launch_server:
    listen_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listen_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen_socket.bind((host, port))
    listen_socket.listen()
    listen_fd = listen_socket.fileno()
else:
    listen_socket = None
    listen_fd = None
"""
_STORE = ("store = TCPStore(host_name=host, port=port, world_size=world_size, is_master=launch_server, "
          "timeout={}(seconds=store_timeout), use_libuv=False, master_listen_fd=listen_fd)\n")
_GROUP = ("return StatelessProcessGroup(rank=rank, world_size=world_size, store=store, "
          "socket=listen_socket, data_expiration_seconds=data_expiration_seconds)")

#: ``ast.unparse`` of ``create``'s body (docstring dropped) in the affected releases.
BUGGY_BODIES = {
    "0.8.5 - 0.9.0.1": _LISTEN + _STORE.format("datetime.timedelta") + _GROUP,
    "0.9.1 - 0.18.1": _LISTEN + _STORE.format("timedelta") + _GROUP,
    "0.19.0 - 0.34.0": """\
launch_server = rank == 0
if launch_server and listen_socket is None:
    listen_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listen_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen_socket.bind((host, port))
    listen_socket.listen()
store = create_tcp_store(host, port, listen_socket=listen_socket, world_size=world_size, \
is_master=launch_server, timeout=timedelta(seconds=store_timeout), use_libuv=False)
return StatelessProcessGroup(rank=rank, world_size=world_size, store=store, \
data_expiration_seconds=data_expiration_seconds)""",
}

PARAMS_OWN_SOCKET = ("host", "port", "rank", "world_size", "data_expiration_seconds", "store_timeout")
PARAMS = PARAMS_OWN_SOCKET + ("listen_socket",)

_ON_TOP = "our socket family choice would sit on top of unknown code"
_FIXED_NAMES = ("getaddrinfo", "AF_INET6", "AF_UNSPEC", "try_bind_socket")


def _function(original):
    """The function under a ``staticmethod`` (the class attribute the target resolves to)."""
    return original.__func__ if isinstance(original, staticmethod) else original


def _names(body):
    import ast

    found = set()
    for node in ast.walk(ast.parse(body)):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.Name):
            found.add(node.id)
    return found


def fixed_body(original):
    """Why `original` already picks the address family itself (PR 39619, a backport), or None."""
    source, _ = fingerprint(_function(original), _ON_TOP)
    if source is None or source[1] in BUGGY_BODIES.values():
        return None
    names = _names(source[1])
    if "AF_INET" not in names and names.intersection(_FIXED_NAMES):
        return "no longer hard-codes socket.AF_INET; the family comes from getaddrinfo (vllm PR 39619)"
    return None


def check_body(original):
    """Drift reason, or None when `original` is one of the three buggy bodies exactly."""
    source, reason = fingerprint(_function(original), _ON_TOP)
    if reason is not None or source[1] in BUGGY_BODIES.values():
        return reason
    return "body differs from the vLLM 0.8.5 - 0.34.0 StatelessProcessGroup.create it was written for"


def listen_address(host, port):
    """``(family, sockaddr)`` for rank 0's listen socket where the unpatched ``AF_INET`` bind would
    fail, or None where it would not (an IPv4 host: the original is left to run) or ``host`` does
    not resolve at all (the original raises its own error)."""
    import socket

    try:
        socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
        return None  # the unpatched AF_INET bind accepts this host
    except (socket.gaierror, UnicodeError):
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return None
    return (infos[0][0], infos[0][4]) if infos else None


def _listen(family, sockaddr):
    """Rank 0's socket as upstream builds it, in `family`."""
    import socket

    listen_socket = socket.socket(family, socket.SOCK_STREAM)
    try:
        listen_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listen_socket.bind(sockaddr)
        listen_socket.listen()
    except BaseException:
        listen_socket.close()
        raise
    return listen_socket


def _bound(wrapped, args, kwargs):
    import inspect

    bound = inspect.signature(wrapped).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _create_passing_socket(wrapped, instance, args, kwargs):
    """0.19.0 on: rank 0 on a non-IPv4 host passes a socket of the resolved family as listen_socket."""
    arguments = _bound(wrapped, args, kwargs)
    if arguments["rank"] != 0 or arguments["listen_socket"] is not None:
        return wrapped(*args, **kwargs)
    address = listen_address(arguments["host"], arguments["port"])
    if address is None:
        return wrapped(*args, **kwargs)
    arguments["listen_socket"] = listen_socket = _listen(*address)
    try:
        return wrapped(**arguments)
    except BaseException:
        listen_socket.close()  # a no-op once create_tcp_store has detached (and closed) it
        raise


def _create_own_socket(wrapped, instance, args, kwargs):
    """0.8.5 - 0.18.1: the fingerprinted body, rank 0's socket built in the resolved family."""
    import datetime

    arguments = _bound(wrapped, args, kwargs)
    address = None if arguments["rank"] != 0 else listen_address(arguments["host"], arguments["port"])
    if address is None:
        return wrapped(*args, **kwargs)
    scope = wrapped.__globals__
    listen_socket = _listen(*address)
    try:
        store = scope["TCPStore"](
            host_name=arguments["host"], port=arguments["port"], world_size=arguments["world_size"],
            is_master=True, timeout=datetime.timedelta(seconds=arguments["store_timeout"]),
            use_libuv=False, master_listen_fd=listen_socket.fileno())
    except BaseException:
        listen_socket.close()
        raise
    return scope["StatelessProcessGroup"](
        rank=arguments["rank"], world_size=arguments["world_size"], store=store, socket=listen_socket,
        data_expiration_seconds=arguments["data_expiration_seconds"])


_REPLACES = Replaces(
    symbols=(TARGET,),
    copies=(
        Copy("modelscope/ms-swift", "swift/rlhf_trainers/utils.py",
             "patch_stateless_process_group_for_ipv6", commit="3602360a5623", inventory=17,
             what="replaces `StatelessProcessGroup.create` at import (never reverted, no version gate) "
                  "with a function that, for an IPv6 literal only (`ipaddress.IPv6Address`), binds an "
                  "`AF_INET6` socket and passes it as `listen_socket` (>= 0.19) or rebuilds the TCPStore "
                  "itself (< 0.19); host names with only IPv6 addresses still fail there."),
    ),
    note="Adopting this record: delete ms-swift's `patch_stateless_process_group_for_ipv6` and its "
         "module-level call (if both are applied, whichever is outermost runs; ms-swift's function "
         "replaces the attribute outright, so this record then reports `drifted`). Keep stripping the "
         "URL brackets from `[addr]` before calling `create` (trl issue 3164): `create` wants the bare "
         "address.",
)

PATCH = Patch(
    name=NAME,
    summary="StatelessProcessGroup.create (trainer weight-sync groups) takes rank 0's listen-socket "
            "family from getaddrinfo, so an IPv6 host such as ::1 works; IPv4 hosts are untouched",
    upstream="https://github.com/vllm-project/vllm/pull/39619",
    affected={"vllm": ">=0.8.5.dev0"},
    verified_through={"vllm": "0.34.0"},
    fixed_in=None,
    targets=(
        Target(TARGET, wrapper=_create_own_socket, params=PARAMS_OWN_SOCKET, check=check_body,
               fixed=fixed_body, versions="<0.19.0.dev0"),
        Target(TARGET, wrapper=_create_passing_socket, params=PARAMS, check=check_body,
               fixed=fixed_body, versions=">=0.19.0.dev0"),
    ),
    notes="Since 0.8.5 rank 0 binds its TCPStore socket as AF_INET on the given host; unfixed through "
          "0.34.0 (vllm PR 39619 open). Non-IPv4 hosts get a socket of the getaddrinfo family (handed "
          "over as listen_socket from 0.19.0, the fingerprinted body re-run with it before); IPv4 "
          "hosts, other ranks and a caller's listen_socket reach the original unchanged.",
    replaces=_REPLACES,
)
