"""Connections and servers: create_connection, create_server, the Unix variants, start_tls.

All of it runs once per connection or per server, so it is Python. It speaks to the rest
of the loop through three things: ``_ensure_resolved`` (``getaddrinfo`` unless the host
is an IP address), ``sock_connect`` (connecting one socket) and ``_make_socket_transport``
(a connected socket becomes a transport). TLS is the stdlib's ``asyncio.sslproto.SSLProtocol``
layered over that transport, as the stdlib loop does it. Parameters, defaults and error
messages are those of the running Python version's stdlib loop; where they changed between
versions the flags below say so.
"""

from __future__ import annotations

import collections.abc
import contextvars
import errno
import functools
import itertools
import os
import socket
import stat
import sys
from asyncio import constants, exceptions, futures, sslproto, staggered, tasks, trsock
from asyncio.log import logger
from collections.abc import Callable, Iterable
from typing import Any

from ._server import Server
from ._transport import fast_accept

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover - Python built without OpenSSL
    _ssl = None  # type: ignore[assignment]

# create_connection(all_errors=...) appeared in 3.12.
_HAS_ALL_ERRORS = sys.version_info >= (3, 12)
# create_server(keep_alive=...), create_unix_server(cleanup_socket=...), skipping addresses
# the host cannot bind (EADDRNOTAVAIL) and bind errors worded with their errno: 3.13.
_PY313 = sys.version_info >= (3, 13)

_HAS_IPV6 = hasattr(socket, "AF_INET6")
# accept() failing for lack of resources: the listening socket stays readable, so stop
# watching it for ACCEPT_RETRY_DELAY instead of spinning.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

ProtocolFactory = Callable[[], Any]
AddrInfo = tuple[Any, ...]


def _bind_error_text(err: OSError) -> str:
    if _PY313 or err.strerror is None:
        return str(err).lower()
    return err.strerror.lower()


def _reject_ssl_socket(sock: Any) -> None:
    if _ssl is not None and isinstance(sock, _ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def _set_reuse_port(sock: socket.socket) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        ) from None


def _is_filesystem_path(path: Any) -> bool:
    """False for abstract Unix socket names (leading NUL) and unbound sockets ('')."""
    return bool(path) and path[0] not in (0, "\x00")


def _interleave_by_family(infos: list[AddrInfo], first_family_count: int) -> list[AddrInfo]:
    """Alternate address families (RFC 8305), starting with ``first_family_count``
    addresses of the first family; each family keeps the resolver's order."""
    by_family: dict[Any, list[AddrInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    groups = list(by_family.values())
    head = groups[0][: first_family_count - 1] if first_family_count > 1 else []
    groups[0] = groups[0][len(head) :]
    alternated = itertools.chain.from_iterable(itertools.zip_longest(*groups))
    return head + [info for info in alternated if info is not None]


def _connection_error(attempts: list[list[OSError]], all_errors: bool) -> Exception:
    """The one exception create_connection raises when no address could be connected."""
    errors = [exc for attempt in attempts for exc in attempt]
    if all_errors:
        return ExceptionGroup("create_connection failed", errors)
    if len(errors) == 1:
        return errors[0]
    first = str(errors[0])
    if all(str(exc) == first for exc in errors):
        return errors[0]
    return OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in errors)}")


# The SSLProtocol of 3.11 to 3.13, whose `__init__` makes its read buffer from `max_size`
# and whose `buffer_updated` copies out of it at once: what `_new_ssl_protocol` relies on.
_SSLPROTOCOL_AS_KNOWN = sys.version_info < (3, 14)


class ConnectionsMixin:
    """Stream connections and servers, as methods of ``ferroloop.Loop``."""

    # ---- create_connection ----------------------------------------------------------

    async def _create_connection(
        self,
        protocol_factory: ProtocolFactory,
        host: Any,
        port: Any,
        *,
        ssl: Any,
        family: int,
        proto: int,
        flags: int,
        sock: socket.socket | None,
        local_addr: Any,
        server_hostname: str | None,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None,
        happy_eyeballs_delay: float | None,
        interleave: int | None,
        all_errors: bool,
    ) -> tuple[Any, Any]:
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            # The host name is checked against the certificate; server_hostname='' opts out.
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            _reject_ssl_socket(sock)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            infos = await self._ensure_resolved(
                (host, port), family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
            )
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            local_infos = None
            if local_addr is not None:
                local_infos = await self._ensure_resolved(
                    local_addr, family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
                )
                if not local_infos:
                    raise OSError("getaddrinfo() returned empty list")
            if interleave:
                infos = _interleave_by_family(infos, interleave)
            sock = await self._connect_first(infos, local_infos, happy_eyeballs_delay, all_errors)
        elif sock is None:
            raise ValueError("host and port was not specified and no sock specified")
        elif sock.type != socket.SOCK_STREAM:
            # AF_UNIX stream sockets are welcome here too, as in the stdlib.
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")

        transport, protocol = await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if self.get_debug():
            # An SSL transport reports the socket it really uses.
            sock = transport.get_extra_info("socket")
            logger.debug("%r connected to %s:%r: (%r, %r)", sock, host, port, transport, protocol)
        return transport, protocol

    async def _connect_first(
        self,
        infos: list[AddrInfo],
        local_infos: list[AddrInfo] | None,
        happy_eyeballs_delay: float | None,
        all_errors: bool,
    ) -> socket.socket:
        """Connect to the first address that accepts: one at a time, or staggered (happy
        eyeballs) when a delay is given."""
        attempts: list[list[OSError]] = []
        try:
            if happy_eyeballs_delay is None:
                for info in infos:
                    try:
                        return await self._connect_attempt(attempts, info, local_infos)
                    except OSError:
                        continue
            else:
                sock = await self._connect_staggered(
                    attempts, infos, local_infos, happy_eyeballs_delay
                )
                if sock is not None:
                    return sock
            raise _connection_error(attempts, all_errors)
        finally:
            attempts = None  # type: ignore[assignment]  # the error's traceback would hold it

    async def _connect_staggered(
        self,
        attempts: list[list[OSError]],
        infos: list[AddrInfo],
        local_infos: list[AddrInfo] | None,
        delay: float,
    ) -> socket.socket | None:
        connected: list[socket.socket] = []

        async def attempt(info: AddrInfo) -> socket.socket:
            sock = await self._connect_attempt(attempts, info, local_infos)
            connected.append(sock)
            return sock

        try:
            winner, _, race_errors = await staggered.staggered_race(
                (functools.partial(attempt, info) for info in infos), delay, loop=self
            )
        except BaseException:
            for sock in connected:
                sock.close()
            raise
        # A second attempt may have connected before the race cancelled it.
        for sock in connected:
            if sock is not winner:
                sock.close()
        if winner is None and not any(attempts):
            # Every attempt failed with something other than OSError: raise the first.
            for exc in race_errors:
                if exc is not None:
                    raise exc
        return winner

    async def _connect_attempt(
        self,
        attempts: list[list[OSError]],
        info: AddrInfo,
        local_infos: list[AddrInfo] | None,
    ) -> socket.socket:
        """Create, bind (to a local address of the same family) and connect one socket.
        Its errors go to a list of their own in ``attempts``."""
        errors: list[OSError] = []
        attempts.append(errors)
        family, type_, proto, _, address = info
        sock = None
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if local_infos is not None:
                self._bind_local(sock, family, local_infos, errors)
            await self.sock_connect(sock, address)
            return sock
        except OSError as exc:
            errors.append(exc)
            if sock is not None:
                sock.close()
            raise
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            attempts = errors = None  # type: ignore[assignment]

    @staticmethod
    def _bind_local(
        sock: socket.socket, family: int, local_infos: list[AddrInfo], errors: list[OSError]
    ) -> None:
        for local_family, _, _, _, local_address in local_infos:
            if local_family != family:
                continue
            try:
                sock.bind(local_address)
                return
            except OSError as exc:
                message = (
                    f"error while attempting to bind on address {local_address!r}: "
                    f"{_bind_error_text(exc)}"
                )
                errors.append(OSError(exc.errno, message))
        if errors:
            raise errors.pop()  # put back by the caller's handler
        raise OSError(f"no matching local address with {family=} found")

    async def _create_connection_transport(
        self,
        sock: socket.socket,
        protocol_factory: ProtocolFactory,
        ssl: Any,
        server_hostname: str | None,
        server_side: bool = False,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[Any, Any]:
        sock.setblocking(False)
        protocol = protocol_factory()
        waiter = self.create_future()
        if ssl:
            transport = self._make_ssl_transport(
                sock,
                protocol,
                None if isinstance(ssl, bool) else ssl,
                waiter,
                server_side=server_side,
                server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
        else:
            transport = self._make_socket_transport(sock, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    if _HAS_ALL_ERRORS:

        async def create_connection(
            self,
            protocol_factory: ProtocolFactory,
            host: str | None = None,
            port: int | str | None = None,
            *,
            ssl: Any = None,
            family: int = 0,
            proto: int = 0,
            flags: int = 0,
            sock: socket.socket | None = None,
            local_addr: tuple[str, int] | None = None,
            server_hostname: str | None = None,
            ssl_handshake_timeout: float | None = None,
            ssl_shutdown_timeout: float | None = None,
            happy_eyeballs_delay: float | None = None,
            interleave: int | None = None,
            all_errors: bool = False,
        ) -> tuple[Any, Any]:
            """Open a TCP connection to ``host``:``port`` (or over the connected ``sock``)
            and return ``(transport, protocol)``.

            Addresses are tried in turn, or raced with ``happy_eyeballs_delay`` between
            starts (RFC 8305). When none connects, the one error is raised, or
            ``OSError('Multiple exceptions: …')``, or with ``all_errors`` an
            ``ExceptionGroup`` of them all.
            """
            return await self._create_connection(
                protocol_factory,
                host,
                port,
                ssl=ssl,
                family=family,
                proto=proto,
                flags=flags,
                sock=sock,
                local_addr=local_addr,
                server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                happy_eyeballs_delay=happy_eyeballs_delay,
                interleave=interleave,
                all_errors=all_errors,
            )

    else:

        async def create_connection(
            self,
            protocol_factory: ProtocolFactory,
            host: str | None = None,
            port: int | str | None = None,
            *,
            ssl: Any = None,
            family: int = 0,
            proto: int = 0,
            flags: int = 0,
            sock: socket.socket | None = None,
            local_addr: tuple[str, int] | None = None,
            server_hostname: str | None = None,
            ssl_handshake_timeout: float | None = None,
            ssl_shutdown_timeout: float | None = None,
            happy_eyeballs_delay: float | None = None,
            interleave: int | None = None,
        ) -> tuple[Any, Any]:
            """Open a TCP connection to ``host``:``port`` (or over the connected ``sock``)
            and return ``(transport, protocol)``.

            Addresses are tried in turn, or raced with ``happy_eyeballs_delay`` between
            starts (RFC 8305). When none connects, the one error is raised, or
            ``OSError('Multiple exceptions: …')``.
            """
            return await self._create_connection(
                protocol_factory,
                host,
                port,
                ssl=ssl,
                family=family,
                proto=proto,
                flags=flags,
                sock=sock,
                local_addr=local_addr,
                server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                happy_eyeballs_delay=happy_eyeballs_delay,
                interleave=interleave,
                all_errors=False,
            )

    async def create_unix_connection(
        self,
        protocol_factory: ProtocolFactory,
        path: str | bytes | os.PathLike[Any] | None = None,
        *,
        ssl: Any = None,
        sock: socket.socket | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[Any, Any]:
        """Open a Unix stream connection to ``path`` (or over the connected ``sock``)."""
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if ssl_handshake_timeout is not None:
                raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
            if ssl_shutdown_timeout is not None:
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)

        return await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    async def connect_accepted_socket(
        self,
        protocol_factory: ProtocolFactory,
        sock: socket.socket,
        *,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[Any, Any]:
        """Wrap a connection accepted outside the loop; return ``(transport, protocol)``."""
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        _reject_ssl_socket(sock)
        transport, protocol = await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            "",
            server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if self.get_debug():
            sock = transport.get_extra_info("socket")
            logger.debug("%r handled: (%r, %r)", sock, transport, protocol)
        return transport, protocol

    # ---- TLS ------------------------------------------------------------------------

    def _new_ssl_protocol(self, *args: Any, **kwargs: Any) -> sslproto.SSLProtocol:
        """The stdlib's SSLProtocol, receiving into the loop's one TLS read buffer.

        An SSLProtocol hands its transport a 256 KiB buffer to receive into, and its
        ``buffer_updated`` copies what arrived into its MemoryBIO before any other code
        runs. So one buffer can serve every TLS connection of the loop, instead of each
        keeping 256 KiB of its own, zero-filled and so all of it resident (uvloop allocates
        its buffer per connection too, but leaves it untouched).
        """
        if not _SSLPROTOCOL_AS_KNOWN:
            return sslproto.SSLProtocol(self, *args, **kwargs)
        ssl_protocol = sslproto.SSLProtocol.__new__(sslproto.SSLProtocol)
        # `__init__` sizes the buffer it makes by `max_size`: 0 for the call (an instance
        # value over the class's) spares allocating and zero-filling 256 KiB only to drop it.
        ssl_protocol.max_size = 0
        try:
            ssl_protocol.__init__(self, *args, **kwargs)  # type: ignore[misc]
        finally:
            del ssl_protocol.max_size
        if isinstance(vars(ssl_protocol).get("_ssl_buffer"), bytearray):
            shared = self._tls_read_buffer
            if shared is None:
                shared = self._tls_read_buffer = memoryview(bytearray(ssl_protocol.max_size))
            ssl_protocol._ssl_buffer = shared.obj
            ssl_protocol._ssl_buffer_view = shared
        # Otherwise it keeps what it made: `get_buffer` grows a buffer smaller than it needs.
        return ssl_protocol

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: Any,
        sslcontext: Any,
        waiter: futures.Future | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Server | None = None,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> Any:
        """A TLS transport over ``rawsock``: the stdlib's SSLProtocol on our transport."""
        self._sock_fd(rawsock)  # refused if a live transport owns the fd, as on 3.12+
        ssl_protocol = self._new_ssl_protocol(
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    async def start_tls(
        self,
        transport: Any,
        protocol: Any,
        sslcontext: Any,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> Any:
        """Upgrade ``transport`` to TLS; return the new transport ``protocol`` should use."""
        if _ssl is None:
            raise RuntimeError("Python ssl module is not available")
        if not isinstance(sslcontext, _ssl.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")

        waiter = self.create_future()
        ssl_protocol = self._new_ssl_protocol(
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False,
        )
        # Paused first, so no data reaches ssl_protocol before its connection_made.
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        connection_made = self.call_soon(ssl_protocol.connection_made, transport)
        resume_reading = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            connection_made.cancel()
            resume_reading.cancel()
            raise
        return ssl_protocol._app_transport

    # ---- servers --------------------------------------------------------------------

    async def _create_server(
        self,
        protocol_factory: ProtocolFactory,
        host: Any,
        port: Any,
        *,
        family: int,
        flags: int,
        sock: socket.socket | None,
        backlog: int,
        ssl: Any,
        reuse_address: bool | None,
        reuse_port: bool | None,
        keep_alive: bool | None,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None,
        start_serving: bool,
    ) -> Server:
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and ssl is None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            _reject_ssl_socket(sock)

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            if reuse_address is None:
                reuse_address = os.name == "posix" and sys.platform != "cygwin"
            sockets = await self._bind_listeners(
                host, port, family, flags, reuse_address, reuse_port, keep_alive
            )
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
            sockets = [sock]

        for listener in sockets:
            listener.setblocking(False)
        server = Server(
            self,
            sockets,
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        if start_serving:
            await server.start_serving()
        if self.get_debug():
            logger.info("%r is serving", server)
        return server

    async def _bind_listeners(
        self,
        host: Any,
        port: Any,
        family: int,
        flags: int,
        reuse_address: bool,
        reuse_port: bool | None,
        keep_alive: bool | None,
    ) -> list[socket.socket]:
        """One bound socket per distinct address that ``host`` (a name, an address, or an
        iterable of them; None or '' for all interfaces) resolves to."""
        hosts: Iterable[Any]
        if host == "":
            hosts = [None]
        elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
            hosts = [host]
        else:
            hosts = host
        # Tasks of this loop, so gather() needs no current loop to find one.
        lookups = [self.create_task(self._server_addrinfo(h, port, family, flags)) for h in hosts]
        resolved = await tasks.gather(*lookups) if lookups else []
        infos = set(itertools.chain.from_iterable(resolved))

        debug = self.get_debug()
        sockets: list[socket.socket] = []
        completed = False
        try:
            for af, socktype, proto, _, address in infos:
                try:
                    sock = socket.socket(af, socktype, proto)
                except OSError:
                    # A family/type/protocol combination this host cannot make.
                    if debug:
                        logger.warning(
                            "create_server() failed to create socket.socket(%r, %r, %r)",
                            af,
                            socktype,
                            proto,
                            exc_info=True,
                        )
                    continue
                sockets.append(sock)
                if reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                if reuse_port:
                    _set_reuse_port(sock)
                if keep_alive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                if _HAS_IPV6 and af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    # Linux listens on IPv4 too from an IPv6 socket unless told not to;
                    # the IPv4 address has a socket of its own.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                try:
                    sock.bind(address)
                except OSError as err:
                    message = (
                        f"error while attempting to bind on address {address!r}: "
                        f"{_bind_error_text(err)}"
                    )
                    if _PY313 and err.errno == errno.EADDRNOTAVAIL:
                        # The family is not enabled on this host (bpo-30945).
                        sockets.pop()
                        sock.close()
                        if debug:
                            logger.warning(message)
                        continue
                    raise OSError(err.errno, message) from None
            if _PY313 and not sockets:
                raise OSError(
                    f"could not bind on any address out of {[info[4] for info in infos]!r}"
                )
            completed = True
        finally:
            if not completed:
                for sock in sockets:
                    sock.close()
        return sockets

    async def _server_addrinfo(
        self, host: Any, port: Any, family: int, flags: int
    ) -> list[AddrInfo]:
        infos = await self._ensure_resolved(
            (host, port), family=family, type=socket.SOCK_STREAM, flags=flags
        )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned empty list")
        return infos

    if _PY313:

        async def create_server(
            self,
            protocol_factory: ProtocolFactory,
            host: str | Iterable[str] | None = None,
            port: int | str | None = None,
            *,
            family: int = socket.AF_UNSPEC,
            flags: int = socket.AI_PASSIVE,
            sock: socket.socket | None = None,
            backlog: int = 100,
            ssl: Any = None,
            reuse_address: bool | None = None,
            reuse_port: bool | None = None,
            keep_alive: bool | None = None,
            ssl_handshake_timeout: float | None = None,
            ssl_shutdown_timeout: float | None = None,
            start_serving: bool = True,
        ) -> Server:
            """Listen for TCP connections on ``host``:``port`` (every address it resolves
            to; ``host`` may be a sequence) or on ``sock``; return the Server."""
            return await self._create_server(
                protocol_factory,
                host,
                port,
                family=family,
                flags=flags,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                reuse_address=reuse_address,
                reuse_port=reuse_port,
                keep_alive=keep_alive,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving,
            )

    else:

        async def create_server(
            self,
            protocol_factory: ProtocolFactory,
            host: str | Iterable[str] | None = None,
            port: int | str | None = None,
            *,
            family: int = socket.AF_UNSPEC,
            flags: int = socket.AI_PASSIVE,
            sock: socket.socket | None = None,
            backlog: int = 100,
            ssl: Any = None,
            reuse_address: bool | None = None,
            reuse_port: bool | None = None,
            ssl_handshake_timeout: float | None = None,
            ssl_shutdown_timeout: float | None = None,
            start_serving: bool = True,
        ) -> Server:
            """Listen for TCP connections on ``host``:``port`` (every address it resolves
            to; ``host`` may be a sequence) or on ``sock``; return the Server."""
            return await self._create_server(
                protocol_factory,
                host,
                port,
                family=family,
                flags=flags,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                reuse_address=reuse_address,
                reuse_port=reuse_port,
                keep_alive=None,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving,
            )

    async def _create_unix_server(
        self,
        protocol_factory: ProtocolFactory,
        path: Any,
        *,
        sock: socket.socket | None,
        backlog: int,
        ssl: Any,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None,
        start_serving: bool,
        cleanup_socket: bool,
    ) -> Server:
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if _is_filesystem_path(path):
                _remove_stale_socket_file(path)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")

        socket_files: dict[socket.socket, tuple[Any, int]] = {}
        if cleanup_socket:
            bound = sock.getsockname()
            if _is_filesystem_path(bound):
                try:
                    socket_files[sock] = (bound, os.stat(bound).st_ino)
                except FileNotFoundError:
                    pass

        sock.setblocking(False)
        server = Server(
            self,
            [sock],
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
            socket_files=socket_files,
        )
        if start_serving:
            await server.start_serving()
        return server

    if _PY313:

        async def create_unix_server(
            self,
            protocol_factory: ProtocolFactory,
            path: str | bytes | os.PathLike[Any] | None = None,
            *,
            sock: socket.socket | None = None,
            backlog: int = 100,
            ssl: Any = None,
            ssl_handshake_timeout: float | None = None,
            ssl_shutdown_timeout: float | None = None,
            start_serving: bool = True,
            cleanup_socket: bool = True,
        ) -> Server:
            """Listen for Unix stream connections on ``path`` (a stale socket file there is
            replaced) or on ``sock``; with ``cleanup_socket`` the file goes on close."""
            return await self._create_unix_server(
                protocol_factory,
                path,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving,
                cleanup_socket=cleanup_socket,
            )

    else:

        async def create_unix_server(
            self,
            protocol_factory: ProtocolFactory,
            path: str | bytes | os.PathLike[Any] | None = None,
            *,
            sock: socket.socket | None = None,
            backlog: int = 100,
            ssl: Any = None,
            ssl_handshake_timeout: float | None = None,
            ssl_shutdown_timeout: float | None = None,
            start_serving: bool = True,
        ) -> Server:
            """Listen for Unix stream connections on ``path`` (a stale socket file there is
            replaced) or on ``sock``. The socket file stays after close, as in the stdlib
            of this Python version."""
            return await self._create_unix_server(
                protocol_factory,
                path,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving,
                cleanup_socket=False,
            )

    # ---- the accept loop ------------------------------------------------------------
    # The stdlib loop's names and signatures: Server calls them, and so do some tests.

    def _start_serving(
        self,
        protocol_factory: ProtocolFactory,
        sock: socket.socket,
        sslcontext: Any = None,
        server: Server | None = None,
        backlog: int = 100,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        self.add_reader(
            sock.fileno(),
            self._accept_connection,
            protocol_factory,
            sock,
            sslcontext,
            server,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
            fast_accept(sock),  # worked out once per listener, not once per readiness
        )

    def _stop_serving(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd != -1:
            self.remove_reader(fd)
        sock.close()

    def _resume_serving(
        self, protocol_factory: ProtocolFactory, sock: socket.socket, *args: Any
    ) -> None:
        if sock.fileno() == -1:
            return  # the server closed while accepting was paused
        self._start_serving(protocol_factory, sock, *args)

    def _accept_connection(
        self,
        protocol_factory: ProtocolFactory,
        sock: socket.socket,
        sslcontext: Any = None,
        server: Server | None = None,
        backlog: int = 100,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
        acceptor: tuple[Callable[[], tuple[Any, Any]], bool] | None = None,
    ) -> None:
        """The listening socket is readable: accept what is queued, at most ``backlog``
        connections, so one busy listener cannot hold the loop. ``acceptor``: what
        ``fast_accept(sock)`` gives, if the caller has it."""
        debug = self.get_debug()
        accept, nonblocking = fast_accept(sock) if acceptor is None else acceptor
        for _ in range(backlog):
            try:
                accepted = accept()
            except BlockingIOError:
                accepted = None
            except (InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise  # reported by the loop as an error in this callback
                self.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": exc,
                        "socket": trsock.TransportSocket(sock),
                    }
                )
                self.remove_reader(sock.fileno())
                self.call_later(
                    constants.ACCEPT_RETRY_DELAY,
                    self._resume_serving,
                    protocol_factory,
                    sock,
                    sslcontext,
                    server,
                    backlog,
                    ssl_handshake_timeout,
                    ssl_shutdown_timeout,
                )
                return
            if accepted is None:
                # Drained: epoll reports the next connection without a re-arm.
                self._fd_drained(sock.fileno())
                return
            conn, addr = accepted
            if debug:
                logger.debug("%r got a new connection from %r: %r", server, addr, conn)
            # Each connection's protocol runs in a context of its own, as it would in the
            # task the stdlib loop starts per connection.
            contextvars.copy_context().run(
                self._serve_accepted,
                protocol_factory,
                conn,
                nonblocking,
                {"peername": addr},
                sslcontext,
                server,
                ssl_handshake_timeout,
                ssl_shutdown_timeout,
            )

    def _serve_accepted(
        self,
        protocol_factory: ProtocolFactory,
        conn: socket.socket,
        nonblocking: bool,
        extra: dict[str, Any],
        sslcontext: Any,
        server: Server | None,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None,
    ) -> None:
        """Give an accepted connection its protocol and transport (``nonblocking``: the
        socket already is)."""
        protocol = transport = None
        try:
            if not nonblocking:
                conn.setblocking(False)
            protocol = protocol_factory()
            if sslcontext:
                waiter = self.create_future()
                transport = self._make_ssl_transport(
                    conn,
                    protocol,
                    sslcontext,
                    waiter,
                    server_side=True,
                    extra=extra,
                    server=server,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout,
                )
                waiter.add_done_callback(functools.partial(self._tls_accepted, protocol, transport))
            else:
                transport = self._make_socket_transport(conn, protocol, extra=extra, server=server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            else:
                transport.close()
            self._report_accept_failure(exc, protocol, transport)

    def _tls_accepted(self, protocol: Any, transport: Any, waiter: futures.Future) -> None:
        """The server-side TLS handshake finished; on failure drop the connection."""
        if waiter.cancelled():
            exc: BaseException | None = exceptions.CancelledError()
        else:
            exc = waiter.exception()
        if exc is None:
            return
        transport.close()
        self._report_accept_failure(exc, protocol, transport)

    def _report_accept_failure(self, exc: BaseException, protocol: Any, transport: Any) -> None:
        # Like the stdlib, only in debug mode: a peer failing its handshake is routine.
        if not self.get_debug():
            return
        context: dict[str, Any] = {
            "message": "Error on transport creation for incoming connection",
            "exception": exc,
        }
        if protocol is not None:
            context["protocol"] = protocol
        if transport is not None:
            context["transport"] = transport
        self.call_exception_handler(context)


def _remove_stale_socket_file(path: Any) -> None:
    """A socket file left by a dead server would make bind() fail: remove it (only if it
    is a socket; anything else at ``path`` makes bind() fail, as it should)."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        # The directory may only allow creating the socket.
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)
