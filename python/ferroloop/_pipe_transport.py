"""Read and write pipe transports (``connect_read_pipe``, ``connect_write_pipe``), over the
Rust ``PipeCore``; subprocess pipes use them too."""

from __future__ import annotations

import errno
import os
import stat
from asyncio import futures, transports
from asyncio.log import logger
from typing import Any

from ._core_transport import CoreTransport
from ._ferroloop import PipeCore

_READ_METHODS = ("pause_reading", "resume_reading", "is_reading", "close", "is_closing")
_WRITE_METHODS = (
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "abort",
    "close",
    "is_closing",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "set_write_buffer_limits",
)


class _PipeTransportBase(CoreTransport):
    """What both pipe transports share: set-up, repr, reports, the unclosed warning."""

    _core: PipeCore
    _extra: dict[str, Any]

    def _setup(self, loop: Any, pipe: Any, protocol: Any, writer: bool, watch_peer: bool) -> None:
        self._extra["pipe"] = pipe
        self._loop = loop
        self._pipe = self._file = pipe
        self._fileno = pipe.fileno()
        os.set_blocking(self._fileno, False)
        core = PipeCore(loop, pipe, protocol, self, writer, watch_peer)
        self._core = core
        for name in _WRITE_METHODS if writer else _READ_METHODS:
            setattr(self, name, getattr(core, name))

    def is_closing(self) -> bool:
        return self._core.is_closing()

    def close(self) -> None:
        self._core.close()

    def __repr__(self) -> str:
        fd, closed, closing, _polling, queued = self._core._describe()
        info = [type(self).__name__]
        if closed:
            info.append("closed")
        elif closing:
            info.append("closing")
        info.append(f"fd={fd}")
        # The stdlib shows "open" where it cannot ask a selector (as here).
        info.append("closed" if closed else "open")
        if not closed and queued:
            info.append(f"bufsize={queued}")
        return "<{}>".format(" ".join(info))

    def _is_quiet_error(self, exc: BaseException) -> bool:
        # A PTY master reads EIO once its slave closes; a write pipe's OSErrors are the
        # reader going away: neither is a bug (as on the stdlib loop).
        return isinstance(exc, OSError) and (self._quiet_oserrors or exc.errno == errno.EIO)

    # Called by the core.

    def _log_closed_by_peer(self) -> None:
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)


class ReadPipeTransport(_PipeTransportBase, transports.ReadTransport):
    """Reads a pipe, FIFO, socket or character device (a PTY, say) into a protocol."""

    _quiet_oserrors = False

    def __init__(
        self,
        loop: Any,
        pipe: Any,
        protocol: Any,
        waiter: futures.Future | None = None,
        extra: Any = None,
    ) -> None:
        super().__init__(extra)
        mode = os.fstat(pipe.fileno()).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            raise ValueError("Pipe transport is for pipes/sockets only.")
        self._setup(loop, pipe, protocol, writer=False, watch_peer=False)
        self._core._register()
        loop.call_soon(protocol.connection_made, self)
        self._core._start_reading_soon()
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def pause_reading(self) -> None:
        self._core.pause_reading()

    def resume_reading(self) -> None:
        self._core.resume_reading()

    def is_reading(self) -> bool:
        return self._core.is_reading()


class WritePipeTransport(_PipeTransportBase, transports.WriteTransport):
    """Writes to a pipe, FIFO, socket or character device, with flow control."""

    _quiet_oserrors = True

    def __init__(
        self,
        loop: Any,
        pipe: Any,
        protocol: Any,
        waiter: futures.Future | None = None,
        extra: Any = None,
    ) -> None:
        super().__init__(extra)
        mode = os.fstat(pipe.fileno()).st_mode
        is_socket, is_fifo = stat.S_ISSOCK(mode), stat.S_ISFIFO(mode)
        if not (stat.S_ISCHR(mode) or is_fifo or is_socket):
            raise ValueError("Pipe transport is only for pipes, sockets and character devices")
        # A FIFO's or socket's fd reports when the reader goes away; a tty's does not.
        self._setup(loop, pipe, protocol, writer=True, watch_peer=is_socket or is_fifo)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._core._register)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def write(self, data: Any) -> None:
        self._core.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._core.writelines(list_of_data)

    def write_eof(self) -> None:
        self._core.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        self._core.abort()

    def get_write_buffer_size(self) -> int:
        return self._core.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._core.set_write_buffer_limits(high, low)

    @property
    def _protocol_paused(self) -> bool:
        return self._core._protocol_paused
