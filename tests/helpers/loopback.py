"""Suite-wide guard: tests, demos and benchmarks connect only to loopback (127.0.0.0/8, ::1) or Unix sockets.

`install()` wraps `socket.socket.connect`, `connect_ex` and `sendto` and `socket.getaddrinfo` for the whole test
process. A connection (or a name lookup, which would ask a DNS server) aimed elsewhere raises
`NonLoopbackConnection` at once and is recorded, so the test fails even when the attempt happened on a background
thread that swallowed the exception. Subprocesses are not covered: they must be given loopback addresses.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NonLoopbackConnection(OSError):
    """A test tried to reach a host outside this machine."""


_lock = threading.Lock()
_violations: list[str] = []
_originals: dict[str, Any] = {}


def is_loopback_host(host: object) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard / loopback address
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    name = str(host).split("%", 1)[0].strip("[]")
    if name.lower() in _LOCAL_NAMES or name in ("", socket.gethostname()):
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False  # any other name would need a DNS lookup
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback or addr.is_unspecified


def _check(family: int, address: object, what: str) -> None:
    if family == getattr(socket, "AF_UNIX", None) or not isinstance(address, tuple) or not address:
        return
    if not is_loopback_host(address[0]):
        message = f"{what} to {address[0]!r} is outside loopback: tests connect only to 127.0.0.1 / ::1"
        with _lock:
            _violations.append(message)
        raise NonLoopbackConnection(message)


def _connect(self: socket.socket, address: Any) -> None:
    _check(self.family, address, "connect")
    return _originals["connect"](self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _check(self.family, address, "connect")
    return int(_originals["connect_ex"](self, address))


def _sendto(self: socket.socket, data: Any, *args: Any) -> int:
    _check(self.family, args[-1], "sendto")
    return int(_originals["sendto"](self, data, *args))


def _getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    _check(socket.AF_INET, (host, port), "name lookup")
    return _originals["getaddrinfo"](host, port, *args, **kwargs)


def install() -> None:
    """Wrap the socket entry points (idempotent)."""
    if _originals:
        return
    _originals.update(
        connect=socket.socket.connect,
        connect_ex=socket.socket.connect_ex,
        sendto=socket.socket.sendto,
        getaddrinfo=socket.getaddrinfo,
    )
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = _sendto  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = _getaddrinfo


def installed() -> bool:
    """Whether the socket entry points are wrapped (so a non-loopback attempt is refused before any packet)."""
    return bool(_originals) and socket.socket.connect is _connect


def take_violations() -> list[str]:
    """The attempts recorded since the last call, cleared."""
    with _lock:
        found = list(_violations)
        _violations.clear()
    return found
