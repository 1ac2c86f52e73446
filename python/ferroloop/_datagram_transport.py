"""``DatagramTransport``: the ``asyncio.DatagramTransport`` of UDP and Unix datagram sockets.

The per-datagram work is in the Rust ``DatagramCore``; this class gives it the identity
libraries check and the extra info, and binds the core's methods as its own.
"""

from __future__ import annotations

import socket
import weakref
from asyncio import futures, transports, trsock
from typing import Any

from ._core_transport import CoreTransport
from ._ferroloop import DatagramCore

_CORE_METHODS = (
    "sendto",
    "close",
    "abort",
    "is_closing",
    "is_reading",
    "pause_reading",
    "resume_reading",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "set_write_buffer_limits",
    "get_protocol",
    "set_protocol",
    "_force_close",
)


class DatagramTransport(CoreTransport, transports.DatagramTransport, transports.Transport):
    """A datagram transport over a bound, non-blocking datagram socket.

    Also an ``asyncio.Transport``, as the stdlib's datagram transports are (libraries and
    CPython's tests check it).
    """

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: Any,
        address: Any = None,
        waiter: futures.Future | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._loop = loop
        self._sock = self._file = sock
        self._sock_fd = sock.fileno()
        self._address = address
        connected = bool(self._extra["peername"])
        core = DatagramCore(loop, sock, protocol, self, address, connected)
        self._core = core
        for name in _CORE_METHODS:
            setattr(self, name, getattr(core, name))
        core._register()
        loop._transports[self._sock_fd] = weakref.ref(self)
        loop.call_soon(protocol.connection_made, self)
        core._start_reading_soon()
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    # Class-level spellings of what __init__ binds per instance.

    def sendto(self, data: Any, addr: Any = None) -> None:
        self._core.sendto(data, addr)

    def close(self) -> None:
        self._core.close()

    def abort(self) -> None:
        self._core.abort()

    def is_closing(self) -> bool:
        return self._core.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._core.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._core.set_write_buffer_limits(high, low)

    def __repr__(self) -> str:
        fd, closed, closing, queued = self._core._describe()
        info = [type(self).__name__]
        if closed:
            info.append("closed")
        elif closing:
            info.append("closing")
        info.append(f"fd={fd}")
        if not closed:
            info.append("read=polling")
            info.append(f"write=<{'polling' if queued else 'idle'}, bufsize={queued}>")
        return "<{}>".format(" ".join(info))
