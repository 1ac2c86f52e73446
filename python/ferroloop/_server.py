"""``Server``: what ``create_server`` / ``create_unix_server`` return.

Behaves as ``asyncio.Server`` of the running Python version. The loop runs the accept
loop (``ConnectionsMixin._start_serving``); each accepted connection's transport reports
itself here with ``_attach(transport)`` when created and ``_detach(transport)`` after its
``connection_lost``, which is what ``wait_closed`` and ``close_clients`` work from.
"""

from __future__ import annotations

import os
import socket
import sys
import weakref
from asyncio import events, exceptions, futures, tasks, trsock
from asyncio.log import logger
from collections.abc import Callable
from typing import Any

# 3.12.1 fixed wait_closed: it waits for the connections even when the server is closed.
_WAIT_CLOSED_WAITS_FOR_CONNECTIONS = sys.version_info >= (3, 12)
_HAS_CLOSE_CLIENTS = sys.version_info >= (3, 13)


class Server(events.AbstractServer):
    """A listening server: its sockets, its accept loops and its live connections."""

    def __init__(
        self,
        loop: Any,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], Any],
        ssl_context: Any,
        backlog: int,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None = None,
        *,
        socket_files: dict[socket.socket, tuple[Any, int]] | None = None,
    ) -> None:
        self._loop = loop
        self._sockets: list[socket.socket] | None = sockets
        # Weak references, as in the stdlib: an abandoned transport must still be
        # collectable (and warn about being unclosed) even though the server knows it. A set
        # of references rather than a WeakSet: the transport keeps the reference _attach
        # returns as its entry in loop._transports, so a connection costs one weak
        # reference and no Python frames; a collected transport's reference removes itself.
        self._clients: set[weakref.ref[Any]] = set()
        self._forget_client = self._clients.discard
        self._anonymous = 0
        # Futures of wait_closed() callers; None once closed with no connection left.
        self._waiters: list[futures.Future] | None = []
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._ssl_context = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._serving_forever_fut: futures.Future | None = None
        # Unix socket files to unlink on close: socket → (path, inode when bound).
        self._socket_files = socket_files or {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sockets={self.sockets!r}>"

    # ---- the transport's side -------------------------------------------------------

    # Our transports pass themselves; code written for the 3.11/3.12 stdlib Server calls
    # these without an argument, and such attachments are counted in ``_anonymous``.

    def _attach(self, transport: Any = None) -> weakref.ref[Any] | None:
        """Count a connection; for a transport, return the weak reference kept for it."""
        if transport is None:
            self._anonymous += 1
            return None
        client = weakref.ref(transport, self._forget_client)
        self._clients.add(client)
        return client

    def _detach(self, transport: Any = None) -> None:
        if transport is None:
            self._anonymous -= 1
        else:
            # Weak references to a live object compare and hash as the object does.
            self._clients.discard(weakref.ref(transport))
        # Sockets first: while the server listens (the common case) that settles it.
        if self._sockets is None and not self._has_clients():
            self._wakeup()

    def _has_clients(self) -> bool:
        return bool(self._clients) or self._anonymous > 0

    def _wakeup(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    # ---- serving --------------------------------------------------------------------

    def _start_serving(self) -> None:
        if self._serving:
            return
        self._serving = True
        for sock in self._sockets or ():
            sock.listen(self._backlog)
            self._loop._start_serving(
                self._protocol_factory,
                sock,
                self._ssl_context,
                self,
                self._backlog,
                self._ssl_handshake_timeout,
                self._ssl_shutdown_timeout,
            )

    def get_loop(self) -> Any:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    @property
    def sockets(self) -> tuple[trsock.TransportSocket, ...]:
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(sock) for sock in self._sockets)

    def close(self) -> None:
        """Stop listening and close the listening sockets; live connections stay open."""
        sockets, self._sockets = self._sockets, None
        if sockets is None:
            return
        for sock in sockets:
            self._loop._stop_serving(sock)
            self._remove_socket_file(sock)
        self._serving = False
        serving_forever = self._serving_forever_fut
        if serving_forever is not None and not serving_forever.done():
            serving_forever.cancel()
            self._serving_forever_fut = None
        if not self._has_clients():
            self._wakeup()

    def _remove_socket_file(self, sock: socket.socket) -> None:
        entry = self._socket_files.pop(sock, None)
        if entry is None:
            return
        path, inode = entry
        try:
            # Another server may have bound the path since: leave its file alone.
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    if _HAS_CLOSE_CLIENTS:

        def close_clients(self) -> None:
            """Close every connection accepted by this server (flushing their buffers)."""
            for client in list(self._clients):
                transport = client()
                if transport is not None:
                    transport.close()

        def abort_clients(self) -> None:
            """Abort every connection accepted by this server (dropping their buffers)."""
            for client in list(self._clients):
                transport = client()
                if transport is not None:
                    transport.abort()

    async def start_serving(self) -> None:
        """Start accepting connections (a no-op when already serving)."""
        self._start_serving()
        # One iteration, so the listening sockets are watched before this returns.
        await tasks.sleep(0)

    async def serve_forever(self) -> None:
        """Accept connections until cancelled; cancelling closes the server and waits."""
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except exceptions.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self) -> None:
        """Wait until the server is closed and all its connections are gone.

        On 3.11 (as its stdlib does) this returns at once when the server is already
        closed, whatever connections remain.
        """
        if self._waiters is None:
            return
        if not _WAIT_CLOSED_WAITS_FOR_CONNECTIONS and self._sockets is None:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter
