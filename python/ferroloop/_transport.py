"""``SocketTransport``: the ``asyncio.Transport`` of TCP and Unix stream connections.

The work per packet is in the Rust ``StreamCore``; this class gives it the identity
libraries check (``isinstance(t, asyncio.Transport)``), the extra info and the reports.
The core's methods are built-in methods of this class (``src/transport/methods.rs``), so
``transport.write(data)`` goes straight to Rust with no Python frame in between, and a
transport stores nothing per method it uses.
"""

from __future__ import annotations

import _socket
import socket
from asyncio import constants, futures, transports, trsock
from typing import Any

from ._core_transport import CoreTransport
from ._ferroloop import Acceptor, _init_socket_transport, _install_stream_transport_methods

# The C-level attributes: ``socket.socket.family`` and ``.type`` are properties that build
# an enum member on every read.
_raw_family = _socket.socket.family.__get__
_raw_type = _socket.socket.type.__get__
_ACCEPTOR_FAMILIES = frozenset((socket.AF_INET, socket.AF_INET6, socket.AF_UNIX))
_SOCK_STREAM = socket.SOCK_STREAM


def fast_accept(sock: socket.socket) -> tuple[Any, bool]:
    """``sock.accept`` without its Python frames, and whether the sockets it hands out are
    already non-blocking. An AF_INET, AF_INET6 or AF_UNIX stream listener gets the Rust
    ``Acceptor`` (accept4 with SOCK_NONBLOCK, the peer's address converted there); other
    plain sockets skip
    ``socket.accept``'s two enum look-ups per connection. Either way the accepted socket
    gets the listener's family, type and protocol, as ``socket.accept`` gives it. The
    ``Acceptor`` returns None where ``socket.accept`` raises ``BlockingIOError``."""
    if type(sock) is not socket.socket:
        return sock.accept, False  # a subclass or a stand-in may define its own
    family, kind, proto = _raw_family(sock), _raw_type(sock), sock.proto
    if family in _ACCEPTOR_FAMILIES and kind == _SOCK_STREAM:
        return Acceptor(sock, family, kind, proto).accept, True
    accept_fd = sock._accept
    make = socket.socket

    # socket.accept would also make the socket blocking under a listener with a timeout;
    # the accept loop makes every accepted socket non-blocking right after, so not here.
    def accept() -> tuple[socket.socket, Any]:
        fd, address = accept_fd()
        return make(family, kind, proto, fd), address

    return accept, False


class SocketTransport(CoreTransport, transports.Transport):
    """A stream transport over a connected, non-blocking TCP or Unix socket."""

    # A slot: every method the core serves reads it (instances keep their __dict__ too).
    __slots__ = ("_core",)

    # loop.sendfile may use os.sendfile on the socket; loop.start_tls may wrap it in TLS.
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _start_tls_compatible = True

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: Any,
        waiter: futures.Future | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        # BaseTransport.__init__, inline. "socket" and "sockname" are made when first
        # asked for (see get_extra_info).
        if extra is None:
            extra = {}
        self._extra = extra
        self._loop = loop
        self._sock = self._file = sock
        self._empty_waiter: futures.Future | None = None
        # The rest (the peer's address, TCP_NODELAY, the core, the server's and the loop's
        # records, connection_made, reading, the waiter): src/transport/setup.rs.
        self._sock_fd = _init_socket_transport(self, loop, sock, protocol, waiter, extra, server)

    # write, close, is_closing, the buffer limits and the reading and protocol switches are
    # served by the Rust core: installed below, as built-in methods of this class.

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """As on the stdlib loop; "socket" and "sockname" are built on first request (most
        connections never ask, and a server may hold many), the same object after that.
        The address is taken before the socket closes, so it stays known, as there."""
        extra = self._extra
        if name in extra:
            return extra[name]
        if name == "socket":
            extra["socket"] = transport_socket = trsock.TransportSocket(self._sock)
            return transport_socket
        if name == "sockname":
            extra["sockname"] = sockname = self._core._sockname()
            return sockname
        return default

    @property
    def _protocol_paused(self) -> bool:
        return self._core._protocol_paused

    def __repr__(self) -> str:
        fd, closed, closing, reading, queued = self._core._describe()
        info = [type(self).__name__]
        if closed:
            info.append("closed")
        elif closing:
            info.append("closing")
        info.append(f"fd={fd}")
        if not closed:
            info.append(f"read={'polling' if reading else 'idle'}")
            info.append(f"write=<{'polling' if queued else 'idle'}, bufsize={queued}>")
        return "<{}>".format(" ".join(info))

    # loop.sendfile: wait for the queue to empty, then no writes until it is done.

    def _make_empty_waiter(self) -> futures.Future:
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = waiter = self._loop.create_future()
        self.write = self.writelines = self._refuse_write_during_sendfile
        if self.get_write_buffer_size():
            self._core._notify_when_drained()
        else:
            waiter.set_result(None)
        return waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None
        del self.write, self.writelines  # the class's methods again

    def _refuse_write_during_sendfile(self, data: Any) -> None:
        raise RuntimeError("unable to write; sendfile is in progress")

    # Called by the core.

    def _write_drained(self, exc: BaseException | None) -> None:
        waiter = self._empty_waiter
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)


_install_stream_transport_methods(SocketTransport)
