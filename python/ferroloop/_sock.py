"""The low-level socket API: ``loop.sock_*`` operations on non-blocking sockets.

Every operation first tries its syscall at once and returns if the socket was ready. Only
otherwise does it wait, and what it waits for is *readiness*, not the result: a one-shot
reader (or writer) resolves a future and removes itself, and the coroutine then makes the
syscall itself. So the syscall runs only in a coroutine that is still wanted:

- a cancelled ``sock_recv``/``sock_recvfrom``/``sock_accept`` has taken nothing: the data,
  the datagram, the connection stay in the socket for the next call;
- a cancelled ``sock_sendall``/``sock_sendfile`` has sent exactly what it had sent when it
  was cancelled, and sends nothing afterwards;
- no watcher outlives the call: the watcher removes itself when it fires, and a cancelled
  call removes it if it is still the fd's watcher.

As with the stdlib loop, one fd has one reader and one writer: a second call waiting on the
same side of the same socket takes the watcher over, and the first waits until cancelled.
``_OneShotWaits`` remembers which call owns the watcher of each fd, so a cancelled call
never removes a watcher it no longer owns.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import socket
import sys
import weakref
from asyncio import constants, exceptions
from collections.abc import Callable
from typing import Any

from ._ferroloop import (
    _sock_connect_now,
    _sock_recv_into_now,
    _sock_recv_now,
    _sock_recvfrom_into_now,
    _sock_recvfrom_now,
    _sock_send_now,
    _sock_sendto_now,
)
from ._transport import fast_accept

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without ssl
    ssl = None  # type: ignore[assignment]

_SSLSocket: type = ssl.SSLSocket if ssl is not None else type("_NoSSLSocket", (), {})
_SSL_REJECTED = "Socket cannot be of type SSLSocket"
_MUST_BE_NONBLOCKING = "the socket must be non-blocking"
_NOT_READY = (BlockingIOError, InterruptedError)

_HAS_IPV6 = hasattr(socket, "AF_INET6")
_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6) if _HAS_IPV6 else (socket.AF_INET,)
# os.sendfile's count is a ssize_t: the stdlib caps one call at 1 GiB on 32-bit builds.
_SENDFILE_MAX_BLOCK = sys.maxsize // 2 + 1


def _ip_literal_addrinfo(
    host: Any,
    port: Any,
    family: int,
    type: int,
    proto: int,
    flowinfo: Any = 0,
    scope_id: Any = 0,
) -> tuple[Any, ...] | None:
    """The getaddrinfo() entry for an address that needs no lookup (an IP literal and a
    numeric port), or None if it must be resolved. An address of more than four items (a
    str such as "127.0.0.1" unpacked) is a TypeError here, as in the stdlib's twin."""
    if host is None or proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    if type == socket.SOCK_STREAM:
        proto = socket.IPPROTO_TCP
    elif type == socket.SOCK_DGRAM:
        proto = socket.IPPROTO_UDP
    else:
        return None
    if port is None or port == "" or port == b"":
        port = 0
    else:
        try:
            port = int(port)
        except (TypeError, ValueError):
            return None  # a service name such as "http"
    if isinstance(host, bytes):
        host = host.decode("idna")
    if "%" in host:
        return None  # inet_pton rejects an IPv6 zone index ("::1%lo")
    if family == socket.AF_UNSPEC:
        families: tuple[int, ...] = _INET_FAMILIES
    else:
        families = (family,)
    for af in families:
        try:
            socket.inet_pton(af, host)
        except OSError:
            continue
        if _HAS_IPV6 and af == socket.AF_INET6:
            return af, type, proto, "", (host, port, flowinfo, scope_id)
        return af, type, proto, "", (host, port)
    return None


class _OneShotWaits:
    """The sock_* readiness waits on one side (read or write) of a loop's fds.

    A wait on a socket that a call just found not ready leaves, when it fires, the fd
    registered (*parked*, see ``src/poller.rs``), so the next such wait on the same
    socket costs no syscall: a request/response exchange otherwise adds and removes its
    fd's registration on every round trip.
    """

    __slots__ = ("_create_future", "_add", "_unpark", "_park", "_remove", "_owners", "_parked")

    def __init__(self, create_future: Any, add: Any, unpark: Any, park: Any, remove: Any) -> None:
        self._create_future = create_future
        # The loop's _add_reader/_unpark_watcher/_park_watcher/_remove_reader (side bound)
        # or their writer counterparts.
        self._add, self._unpark, self._park, self._remove = add, unpark, park, remove
        self._owners: dict[int, Any] = {}  # fd -> the future its watcher resolves
        # fd -> a weak reference to the socket whose wait parked it: only that socket,
        # still open on that fd, may reuse the registration (a closed fd's number may have
        # been reused by another socket, which epoll does not know).
        self._parked: dict[int, weakref.ref[Any]] = {}

    async def ready(self, fd: int, sock: Any) -> None:
        """Return once ``fd`` is ready, through a watcher that removes itself; a wait that
        ends otherwise (cancelled, or the coroutine closed) removes it if it still owns it.

        ``sock`` is the socket on ``fd`` that a call just found not ready; None if the
        wait follows anything else (it then re-arms the fd, which reports it if ready).
        """
        fut = self._create_future()
        parked = self._parked.pop(fd, None)
        if sock is None:
            self._add(fd, self._fire, fd, fut, None)
        else:
            if parked is not None and (parked() is not sock or sock.fileno() != fd):
                self._remove(fd)  # another socket's parked registration: forget it
            self._unpark(fd, self._fire, fd, fut, sock)
        self._owners[fd] = fut
        try:
            await fut
        except BaseException:
            if self._owners.get(fd) is fut:
                del self._owners[fd]
                self._remove(fd)
            raise

    def _fire(self, fd: int, fut: Any, sock: Any) -> None:
        # Runs only while it is fd's watcher (adding or removing a watcher cancels the one
        # it replaces), so parking or removing fd's watcher removes this one.
        if sock is None:
            self._remove(fd)
        elif self._park(fd):
            try:
                self._parked[fd] = weakref.ref(sock)
            except TypeError:  # a socket-like object without weak references
                self._remove(fd)
        if self._owners.get(fd) is fut:
            del self._owners[fd]
        if not fut.done():
            fut.set_result(None)


class SockMixin:
    # The one-shot readiness waits of each side, made on first use.

    @functools.cached_property
    def _sock_readable(self) -> _OneShotWaits:
        return _OneShotWaits(
            self.create_future,
            self._add_reader,
            functools.partial(self._unpark_watcher, False),
            functools.partial(self._park_watcher, False),
            self._remove_reader,
        )

    @functools.cached_property
    def _sock_writable(self) -> _OneShotWaits:
        return _OneShotWaits(
            self.create_future,
            self._add_writer,
            functools.partial(self._unpark_watcher, True),
            functools.partial(self._park_watcher, True),
            self._remove_writer,
        )

    async def _sock_retry(self, waits: _OneShotWaits, sock: Any, method: str, *args: Any) -> Any:
        """``sock.<method>(*args)`` each time ``sock`` turns ready, until it does not
        would-block (the first attempt, before any wait, stays in the caller). The method
        is looked up at each attempt, as a direct call would."""
        fd = self._sock_fd(sock)
        while True:
            await waits.ready(fd, sock)
            try:
                return getattr(sock, method)(*args)
            except _NOT_READY:
                pass

    async def _sock_when_ready(
        self, waits: _OneShotWaits, sock: Any, call: Callable[..., Any], *args: Any
    ) -> Any:
        """``call(*args)`` each time ``sock`` turns ready, until it gives something other
        than None, its "not ready" (the first attempt, before any wait, stays in the
        caller). ``sock_recv``, the hottest, keeps this loop inline instead."""
        fd = self._sock_fd(sock)
        while True:
            await waits.ready(fd, sock)
            result = call(*args)
            if result is not None:
                return result

    def _sock_fd(self, sock: Any) -> int:
        """``sock``'s fd, refused if a live transport owns it (checked before waiting)."""
        fd = sock.fileno()
        # The common cases cost no Python-level call: no transport ever had this fd, or the
        # one that had it is gone (fds are reused: an accepted socket often finds one).
        owner = self._transports.get(fd)
        if owner is not None and owner() is not None:
            self._ensure_fd_no_transport(fd)
        return fd

    # ---- receiving ------------------------------------------------------------------

    async def sock_recv(self, sock: Any, n: int) -> bytes:
        """Receive up to ``n`` bytes from ``sock`` (b'' at end of stream)."""
        if isinstance(sock, _SSLSocket):
            raise TypeError(_SSL_REJECTED)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_MUST_BE_NONBLOCKING)
        # sock.recv(n), None when not ready: see src/sock.rs.
        data = _sock_recv_now(sock, n)
        if data is None:
            fd = self._sock_fd(sock)
            while data is None:
                await self._sock_readable.ready(fd, sock)
                data = _sock_recv_now(sock, n)
        return data

    async def sock_recv_into(self, sock: Any, buf: Any) -> int:
        """Receive into the writable buffer ``buf``; return the number of bytes written."""
        if isinstance(sock, _SSLSocket):
            raise TypeError(_SSL_REJECTED)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_MUST_BE_NONBLOCKING)
        # sock.recv_into(buf), None when not ready: see src/sock.rs.
        received = _sock_recv_into_now(sock, buf)
        if received is None:
            received = await self._sock_when_ready(
                self._sock_readable, sock, _sock_recv_into_now, sock, buf
            )
        return received

    async def sock_recvfrom(self, sock: Any, bufsize: int) -> tuple[bytes, Any]:
        """Receive a datagram of up to ``bufsize`` bytes; return ``(data, address)``."""
        if isinstance(sock, _SSLSocket):
            raise TypeError(_SSL_REJECTED)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_MUST_BE_NONBLOCKING)
        # sock.recvfrom(bufsize), None when not ready: see src/sock.rs.
        received = _sock_recvfrom_now(sock, bufsize)
        if received is None:
            received = await self._sock_when_ready(
                self._sock_readable, sock, _sock_recvfrom_now, sock, bufsize
            )
        return received

    async def sock_recvfrom_into(self, sock: Any, buf: Any, nbytes: int = 0) -> tuple[int, Any]:
        """Receive a datagram into ``buf`` (at most ``nbytes``, default ``len(buf)``);
        return ``(number of bytes written, address)``."""
        if isinstance(sock, _SSLSocket):
            raise TypeError(_SSL_REJECTED)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_MUST_BE_NONBLOCKING)
        if not nbytes:
            nbytes = len(buf)
        # sock.recvfrom_into(buf, nbytes), None when not ready: see src/sock.rs.
        received = _sock_recvfrom_into_now(sock, buf, nbytes)
        if received is None:
            received = await self._sock_when_ready(
                self._sock_readable, sock, _sock_recvfrom_into_now, sock, buf, nbytes
            )
        return received

    # ---- sending --------------------------------------------------------------------

    async def sock_sendall(self, sock: Any, data: Any) -> None:
        """Send all of ``data`` to the connected ``sock``.

        On an error, or if cancelled, what was sent stays sent and nothing more is: there
        is no telling how much of it the peer has received.
        """
        if isinstance(sock, _SSLSocket):
            raise TypeError(_SSL_REJECTED)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_MUST_BE_NONBLOCKING)
        # sock.send(data), None when not ready: see src/sock.rs.
        sent = _sock_send_now(sock, data) or 0
        if sent == len(data):
            return
        fd = self._sock_fd(sock)
        # Count in bytes whatever the buffer's item size; release the views when done so
        # a bytearray can be resized again even while an exception keeps this frame alive.
        with memoryview(data) as whole, whole.cast("B") as view:
            size = len(view)
            while sent < size:
                await self._sock_writable.ready(fd, sock)
                sent += _sock_send_now(sock, view[sent:]) or 0

    async def sock_sendto(self, sock: Any, data: Any, address: Any) -> int:
        """Send the datagram ``data`` to ``address``; return the number of bytes sent."""
        if isinstance(sock, _SSLSocket):
            raise TypeError(_SSL_REJECTED)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_MUST_BE_NONBLOCKING)
        # sock.sendto(data, address), None when not ready: see src/sock.rs.
        sent = _sock_sendto_now(sock, data, address)
        if sent is None:
            sent = await self._sock_when_ready(
                self._sock_writable, sock, _sock_sendto_now, sock, data, address
            )
        return sent

    # ---- connecting and accepting ---------------------------------------------------

    async def _ensure_resolved(
        self,
        address: Any,
        *,
        family: int = 0,
        type: int = socket.SOCK_STREAM,
        proto: int = 0,
        flags: int = 0,
        loop: Any = None,
    ) -> list[Any]:
        """getaddrinfo() entries for ``address``; an IP literal is not looked up."""
        host, port = address[:2]
        info = _ip_literal_addrinfo(host, port, family, type, proto, *address[2:])
        if info is not None:
            return [info]
        resolver = self if loop is None else loop
        return await resolver.getaddrinfo(
            host, port, family=family, type=type, proto=proto, flags=flags
        )

    async def sock_connect(self, sock: Any, address: Any) -> None:
        """Connect ``sock`` to ``address`` (a host name is resolved for IPv4/IPv6 sockets)."""
        if isinstance(sock, _SSLSocket):
            raise TypeError(_SSL_REJECTED)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_MUST_BE_NONBLOCKING)
        if sock.family in _INET_FAMILIES:
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto
            )
            address = resolved[0][4]
        # sock.connect(address), False where that raises BlockingIOError (EINPROGRESS) or
        # InterruptedError: the connection goes on in the background, and the socket turns
        # writable when it has succeeded or failed. See src/sock.rs.
        if _sock_connect_now(sock, address):
            return
        err = await self._sock_retry(
            self._sock_writable, sock, "getsockopt", socket.SOL_SOCKET, socket.SO_ERROR
        )
        if err:
            raise OSError(err, f"Connect call failed {address}")

    async def sock_accept(self, sock: Any) -> tuple[Any, Any]:
        """Accept a connection on the listening ``sock``; return ``(conn, address)`` with
        ``conn`` non-blocking."""
        if isinstance(sock, _SSLSocket):
            raise TypeError(_SSL_REJECTED)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_MUST_BE_NONBLOCKING)
        if type(sock) is socket.socket and sock.gettimeout() == 0:
            accept, nonblocking = fast_accept(sock)
            if nonblocking:
                # The Rust acceptor: None when no connection is waiting (no BlockingIOError
                # to catch), and sockets that are non-blocking already (no ioctl).
                accepted = accept()
                if accepted is None:
                    accepted = await self._sock_when_ready(self._sock_readable, sock, accept)
                return accepted
        try:
            conn, address = sock.accept()
        except _NOT_READY:
            pass
        else:
            conn.setblocking(False)
            return conn, address
        conn, address = await self._sock_retry(self._sock_readable, sock, "accept")
        conn.setblocking(False)
        return conn, address

    # ---- sendfile -------------------------------------------------------------------

    async def sock_sendfile(
        self,
        sock: Any,
        file: Any,
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        """Send ``count`` bytes (default: to EOF) of ``file`` from ``offset`` over the
        stream ``sock`` with ``os.sendfile``, or, if that is not possible and ``fallback``
        is true, by reading the file and sending what was read. Return the bytes sent; the
        file position is left after the last byte sent."""
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_MUST_BE_NONBLOCKING)
        if isinstance(sock, _SSLSocket):
            raise TypeError(_SSL_REJECTED)
        self._check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except exceptions.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    def _check_sendfile_params(self, sock: Any, file: Any, offset: Any, count: Any) -> None:
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("only SOCK_STREAM type sockets are supported")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        if not isinstance(offset, int):
            raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
        if offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {offset!r})")

    async def _sock_sendfile_native(
        self, sock: Any, file: Any, offset: int, count: int | None
    ) -> int:
        if not hasattr(os, "sendfile"):
            raise exceptions.SendfileNotAvailableError("os.sendfile() is not available")
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # an empty file
        blocksize = min(blocksize, _SENDFILE_MAX_BLOCK)
        fd = sock.fileno()
        total_sent = 0
        try:
            while True:
                if count:
                    blocksize = count - total_sent
                    if blocksize <= 0:
                        return total_sent
                try:
                    sent = os.sendfile(fd, fileno, offset, blocksize)
                except _NOT_READY:
                    sent = None
                except OSError as exc:
                    if total_sent == 0:
                        # Nothing sent yet: most likely a file that sendfile(2) cannot
                        # map; the fallback will say what is wrong if it is the socket.
                        raise exceptions.SendfileNotAvailableError(
                            "os.sendfile call failed"
                        ) from None
                    if exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
                        # The peer went away mid-way: the same error on every platform.
                        raise ConnectionError("socket is not connected", errno.ENOTCONN) from exc
                    raise
                if sent == 0:
                    return total_sent  # end of file
                if sent is not None:
                    offset += sent
                    total_sent += sent
                # Wait for room; after a block sent, this also lets other callbacks run
                # between blocks, as on the stdlib loop. (Not necessarily after a call that
                # found the socket full: no parked registration, see _OneShotWaits.)
                await self._sock_writable.ready(fd, None)
        finally:
            if total_sent > 0:
                os.lseek(fileno, offset, os.SEEK_SET)

    async def _sock_sendfile_fallback(
        self, sock: Any, file: Any, offset: int, count: int | None
    ) -> int:
        if offset:
            file.seek(offset)
        limit = constants.SENDFILE_FALLBACK_READBUFFER_SIZE
        blocksize = min(count, limit) if count else limit
        buf = bytearray(blocksize)
        total_sent = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break  # end of file
                await self.sock_sendall(sock, view[:read])
                total_sent += read
            return total_sent
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)
