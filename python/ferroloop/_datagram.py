"""Datagram endpoints: create_datagram_endpoint for UDP (IPv4/IPv6) and Unix datagram sockets.

It runs once per endpoint, so it is Python: it resolves the addresses, makes and binds (or
connects) the socket and hands it to ``_make_datagram_transport``, whose Rust core does the
per-datagram work. Parameters, checks and messages are those of the running Python version's
stdlib loop (``reuse_address`` is gone since 3.11: passing it is a TypeError, as there).
"""

from __future__ import annotations

import socket
import sys
from asyncio.log import logger
from collections.abc import Callable
from typing import Any

from ._connections import _remove_stale_socket_file, _set_reuse_port

# sock= may be any socket but a stream one (the message says "datagram socket") since
# gh-114887, released in 3.11.8 and 3.12.2; before, exactly SOCK_DGRAM ("UDP Socket").
_ANY_DATAGRAM_SOCK = sys.version_info >= (3, 12, 2) or (3, 11, 8) <= sys.version_info < (3, 12)

_HAS_AF_UNIX = hasattr(socket, "AF_UNIX")

ProtocolFactory = Callable[[], Any]
# ((family, proto), (local address, remote address)): one socket to try.
AddrPair = tuple[tuple[int, int], tuple[Any, Any]]


def _check_datagram_sock(sock: socket.socket) -> None:
    if _ANY_DATAGRAM_SOCK:
        if sock.type == socket.SOCK_STREAM:
            raise ValueError(f"A datagram socket was expected, got {sock!r}")
    elif sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"A UDP Socket was expected, got {sock!r}")


def _unix_addr_pairs(family: int, proto: int, local_addr: Any, remote_addr: Any) -> list[AddrPair]:
    for addr in (local_addr, remote_addr):
        if addr is not None and not isinstance(addr, str):
            raise TypeError("string is expected")
    if local_addr and local_addr[0] != "\x00":
        # A socket file left behind by an earlier endpoint would make bind() fail.
        _remove_stale_socket_file(local_addr)
    return [((family, proto), (local_addr, remote_addr))]


class DatagramMixin:
    """``create_datagram_endpoint``, as a method of ``ferroloop.Loop``."""

    async def create_datagram_endpoint(
        self,
        protocol_factory: ProtocolFactory,
        local_addr: Any = None,
        remote_addr: Any = None,
        *,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        reuse_port: bool | None = None,
        allow_broadcast: bool | None = None,
        sock: socket.socket | None = None,
    ) -> tuple[Any, Any]:
        """Create a datagram endpoint: a socket bound to ``local_addr`` and/or connected to
        ``remote_addr`` (or the given ``sock``); return ``(transport, protocol)``.

        With ``allow_broadcast`` the socket is not connected: ``remote_addr`` only becomes
        the transport's default destination.
        """
        if sock is not None:
            _check_datagram_sock(sock)
            modifiers = {
                "local_addr": local_addr,
                "remote_addr": remote_addr,
                "family": family,
                "proto": proto,
                "flags": flags,
                "reuse_port": reuse_port,
                "allow_broadcast": allow_broadcast,
            }
            if any(modifiers.values()):
                problems = ", ".join(f"{k}={v}" for k, v in modifiers.items() if v)
                raise ValueError(
                    "socket modifier keyword arguments can not be used "
                    f"when sock is specified. ({problems})"
                )
            sock.setblocking(False)
            remote_address = None
        else:
            if not (local_addr or remote_addr):
                if family == 0:
                    raise ValueError("unexpected address family")
                pairs: list[AddrPair] = [((family, proto), (None, None))]
            elif _HAS_AF_UNIX and family == socket.AF_UNIX:
                pairs = _unix_addr_pairs(family, proto, local_addr, remote_addr)
            else:
                pairs = await self._resolve_addr_pairs(
                    local_addr, remote_addr, family, proto, flags
                )
            sock, remote_address = await self._open_first(
                pairs, bool(local_addr), bool(remote_addr), reuse_port, allow_broadcast
            )

        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_datagram_transport(sock, protocol, remote_address, waiter)
        if self.get_debug():
            if local_addr:
                logger.info(
                    "Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                    local_addr,
                    remote_addr,
                    transport,
                    protocol,
                )
            else:
                logger.debug(
                    "Datagram endpoint remote_addr=%r created: (%r, %r)",
                    remote_addr,
                    transport,
                    protocol,
                )
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    async def _resolve_addr_pairs(
        self, local_addr: Any, remote_addr: Any, family: int, proto: int, flags: int
    ) -> list[AddrPair]:
        """Resolve both addresses and pair them by (family, proto), in the resolver's
        order; a pair is kept only if every given address has an entry in it."""
        by_key: dict[tuple[int, int], list[Any]] = {}
        for index, addr in ((0, local_addr), (1, remote_addr)):
            if addr is None:
                continue
            if not (isinstance(addr, tuple) and len(addr) == 2):
                raise TypeError("2-tuple is expected")
            infos = await self._ensure_resolved(
                addr, family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags, loop=self
            )
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            for info_family, _, info_proto, _, address in infos:
                by_key.setdefault((info_family, info_proto), [None, None])[index] = address
        pairs = [
            (key, (local, remote))
            for key, (local, remote) in by_key.items()
            if not ((local_addr and local is None) or (remote_addr and remote is None))
        ]
        if not pairs:
            raise ValueError("can not get address information")
        return pairs

    async def _open_first(
        self,
        pairs: list[AddrPair],
        bind: bool,
        connect: bool,
        reuse_port: bool | None,
        allow_broadcast: bool | None,
    ) -> tuple[socket.socket, Any]:
        """A socket for the first address pair that works; if none does, the first
        pair's error. Returns the socket and the transport's default destination."""
        errors: list[OSError] = []
        for (family, proto), (local_address, remote_address) in pairs:
            sock = None
            try:
                sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
                if reuse_port:
                    _set_reuse_port(sock)
                if allow_broadcast:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.setblocking(False)
                if bind:
                    sock.bind(local_address)
                if connect and not allow_broadcast:
                    await self.sock_connect(sock, remote_address)
            except OSError as exc:
                if sock is not None:
                    sock.close()
                errors.append(exc)
                continue
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
            return sock, remote_address if connect else None
        raise errors[0]
