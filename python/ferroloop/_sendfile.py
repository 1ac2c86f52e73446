"""``loop.sendfile``: a file to a transport, with ``os.sendfile`` where possible."""

from __future__ import annotations

import weakref
from asyncio import constants, exceptions, protocols
from typing import Any

_FALLBACK_BLOCK = 16384


class SendfileMixin:
    async def sendfile(
        self,
        transport: Any,
        file: Any,
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        """Send ``file`` (binary, regular) over ``transport``; return the bytes sent.

        Plain sockets use ``os.sendfile``; other transports (TLS) get the file read and
        written in blocks when ``fallback`` is true.
        """
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        mode = getattr(transport, "_sendfile_compatible", constants._SendfileMode.UNSUPPORTED)
        if mode is constants._SendfileMode.UNSUPPORTED:
            raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
        if mode is constants._SendfileMode.TRY_NATIVE:
            try:
                return await self._sendfile_native(transport, file, offset, count)
            except exceptions.SendfileNotAvailableError:
                if not fallback:
                    raise
        if not fallback:
            raise RuntimeError(
                "fallback is disabled and native sendfile is not supported "
                f"for transport {transport!r}"
            )
        return await self._sendfile_fallback(transport, file, offset, count)

    async def _sendfile_native(
        self, transport: Any, file: Any, offset: int, count: int | None
    ) -> int:
        # While the socket is lent to sock_sendfile, it is not the transport's.
        fd = transport._sock_fd
        self._transports.pop(fd, None)
        resume_reading = transport.is_reading()
        transport.pause_reading()
        try:
            await transport._make_empty_waiter()
            return await self.sock_sendfile(transport._sock, file, offset, count, fallback=False)
        finally:
            transport._reset_empty_waiter()
            if resume_reading:
                transport.resume_reading()
            self._transports[fd] = weakref.ref(transport)

    async def _sendfile_fallback(
        self, transport: Any, file: Any, offset: int, count: int | None
    ) -> int:
        if offset:
            file.seek(offset)
        block = min(count, _FALLBACK_BLOCK) if count else _FALLBACK_BLOCK
        buffer = bytearray(block)
        sent = 0
        writer = _FlowControlledWriter(self, transport)
        try:
            while True:
                if count:
                    block = min(count - sent, block)
                    if block <= 0:
                        return sent
                view = memoryview(buffer)[:block]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    return sent
                await writer.drain()
                transport.write(view[:read])
                sent += read
        finally:
            if sent > 0 and hasattr(file, "seek"):
                file.seek(offset + sent)
            writer.restore()


class _FlowControlledWriter(protocols.Protocol):
    """Stands in for the transport's protocol while the fallback writes a file: it pauses
    reading and turns pause/resume_writing into something ``drain()`` can wait on."""

    def __init__(self, loop: Any, transport: Any) -> None:
        self._loop = loop
        self._transport = transport
        self._protocol = transport.get_protocol()
        self._resume_reading = transport.is_reading()
        self._resume_writing = transport._protocol_paused
        self._writable: Any = loop.create_future() if self._resume_writing else None
        transport.pause_reading()
        transport.set_protocol(self)

    async def drain(self) -> None:
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self._writable is not None:
            await self._writable

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set_result(None)
            self._writable = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(exc or ConnectionError("Connection is closed by peer"))
        self._protocol.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self) -> None:
        raise RuntimeError("Invalid state: reading should be paused")

    def restore(self) -> None:
        self._transport.set_protocol(self._protocol)
        if self._resume_reading:
            self._transport.resume_reading()
        if self._writable is not None:
            self._writable.cancel()
        if self._resume_writing:
            self._protocol.resume_writing()
