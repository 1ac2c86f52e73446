"""Pipe transports: loop.connect_read_pipe and loop.connect_write_pipe.

Covers delivery, EOF, pause/resume reading, write flow control against a slow reader,
write_eof/close/abort, a reader that goes away (broken pipe), PTYs, sockets used as pipes,
and the transports' identity (asyncio.ReadTransport / asyncio.WriteTransport).
"""

import asyncio
import errno
import gc
import os
import socket
import tty

import pytest
from net_support import Recorder, payload, run


@pytest.fixture
def handler_calls(loop):
    """The contexts passed to the loop's exception handler during the test."""
    calls = []
    loop.set_exception_handler(lambda _loop, context: calls.append(context))
    return calls


def os_pipe():
    """An OS pipe as two unbuffered file objects: (read end, write end)."""
    r, w = os.pipe()
    return os.fdopen(r, "rb", buffering=0), os.fdopen(w, "wb", buffering=0)


def read_to_eof(fd):
    """Blocking: read `fd` until EOF (for a peer driven in an executor thread)."""
    chunks = bytearray()
    while chunk := os.read(fd, 1 << 20):
        chunks += chunk
    return bytes(chunks)


async def settle(seconds=0.05):
    """Let the loop run many iterations, so an event that should not come has its chance."""
    await asyncio.sleep(seconds)


def assert_fd_closed(file_obj, fd):
    """The transport closed the pipe object it was given (and so its fd)."""
    assert file_obj.closed
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


# ---- read pipes ------------------------------------------------------------------------


def test_read_pipe_delivers_data_then_eof_then_connection_lost(loop):
    async def main():
        rfile, wfile = os_pipe()
        rfd = rfile.fileno()
        transport, protocol = await loop.connect_read_pipe(lambda: Recorder(loop), rfile)
        assert protocol.made.done()  # connection_made ran before connect_read_pipe returned
        assert protocol.transport is transport
        assert isinstance(transport, asyncio.ReadTransport)
        assert not isinstance(transport, asyncio.WriteTransport)
        assert transport.get_extra_info("pipe") is rfile
        assert transport.get_extra_info("no such key", "default") == "default"
        assert transport.get_protocol() is protocol
        assert transport.is_reading()
        assert not transport.is_closing()

        wfile.write(b"hello ")
        assert await protocol.received(6) == b"hello "
        wfile.write(b"world")
        assert await protocol.received(11) == b"hello world"
        wfile.close()
        exc = await protocol.lost
        assert exc is None
        assert protocol.events == ["made", "data", "eof", "lost"]
        assert transport.is_closing()
        assert_fd_closed(rfile, rfd)

    run(loop, main())


def test_read_pipe_large_transfer_in_order(loop):
    data = payload(4 * 1024 * 1024)

    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_read_pipe(lambda: Recorder(loop), rfile)

        def produce():
            with wfile:
                wfile.write(data)

        await loop.run_in_executor(None, produce)
        assert await protocol.lost is None
        return bytes(protocol.data)

    assert run(loop, main()) == data


def test_read_pipe_pause_and_resume_reading(loop):
    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_read_pipe(lambda: Recorder(loop), rfile)
        transport.pause_reading()
        assert not transport.is_reading()
        transport.pause_reading()  # a second pause is a no-op
        wfile.write(b"held back")
        await settle()
        assert protocol.data == b""
        assert protocol.events == ["made"]

        transport.resume_reading()
        assert transport.is_reading()
        transport.resume_reading()  # a second resume is a no-op
        assert await protocol.received(9) == b"held back"

        # EOF is held back too while reading is paused.
        transport.pause_reading()
        wfile.write(b"!")
        wfile.close()
        await settle()
        assert protocol.events == ["made", "data"]
        transport.resume_reading()
        assert await protocol.lost is None
        assert protocol.data == b"held back!"
        assert protocol.events == ["made", "data", "eof", "lost"]

    run(loop, main())


def test_read_pipe_close_loses_connection_and_closes_the_pipe(loop):
    async def main():
        rfile, wfile = os_pipe()
        rfd = rfile.fileno()
        transport, protocol = await loop.connect_read_pipe(lambda: Recorder(loop), rfile)
        wfile.write(b"unread")
        transport.close()
        assert transport.is_closing()
        assert not transport.is_reading()
        transport.close()  # idempotent
        assert await protocol.lost is None
        assert protocol.events == ["made", "lost"]
        assert_fd_closed(rfile, rfd)
        # The read end is gone for real: the writer now gets EPIPE.
        with pytest.raises(BrokenPipeError):
            wfile.write(b"x")
        wfile.close()

    run(loop, main())


def test_read_pipe_with_stream_reader(loop):
    lines = [b"line %d\n" % i for i in range(1000)]

    async def main():
        rfile, wfile = os_pipe()
        reader = asyncio.StreamReader(limit=1024)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), rfile
        )

        def produce():
            with wfile:
                wfile.write(b"".join(lines))

        writer_done = loop.run_in_executor(None, produce)
        got = [await reader.readline() for _ in lines]
        assert await reader.read() == b""
        assert reader.at_eof()
        await writer_done
        transport.close()
        return got

    assert run(loop, main()) == lines


def test_read_pipe_from_pty_master_after_slave_closes(loop, handler_calls):
    """Linux reports EIO on a pty master once the slave is gone: the stdlib ends the
    transport with connection_lost(OSError(EIO)), no eof_received, no error report."""

    async def main():
        master, slave = os.openpty()
        tty.setraw(slave)
        mfile = os.fdopen(master, "rb", buffering=0)
        transport, protocol = await loop.connect_read_pipe(lambda: Recorder(loop), mfile)
        assert isinstance(transport, asyncio.ReadTransport)
        os.write(slave, b"from the slave")
        assert await protocol.received(14) == b"from the slave"
        os.close(slave)
        exc = await protocol.lost
        assert transport.is_closing()
        assert_fd_closed(mfile, master)
        return exc, protocol.events

    exc, events = run(loop, main())
    assert type(exc) is OSError
    assert exc.errno == errno.EIO
    assert events == ["made", "data", "lost"]
    assert handler_calls == []


def test_read_pipe_over_a_socket(loop):
    async def main():
        a, b = socket.socketpair()
        transport, protocol = await loop.connect_read_pipe(lambda: Recorder(loop), a)
        assert transport.get_extra_info("pipe") is a
        b.sendall(b"through a socket")
        b.close()
        assert await protocol.lost is None
        assert protocol.data == b"through a socket"
        assert protocol.events == ["made", "data", "eof", "lost"]
        assert a.fileno() == -1  # closed by the transport

    run(loop, main())


class FailingReader(Recorder):
    def data_received(self, data):
        super().data_received(data)
        if data.startswith(b"boom"):
            raise ZeroDivisionError("from data_received")


def test_read_pipe_protocol_error_is_reported_and_reading_goes_on(loop, handler_calls):
    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_read_pipe(lambda: FailingReader(loop), rfile)
        wfile.write(b"boom")
        await protocol.received(4)
        await settle()
        wfile.write(b", and after")
        assert await protocol.received(15) == b"boom, and after"
        assert not transport.is_closing()  # the stdlib keeps the pipe open
        wfile.close()
        assert await protocol.lost is None

    run(loop, main())
    assert len(handler_calls) == 1
    exc = handler_calls[0]["exception"]
    assert type(exc) is ZeroDivisionError and str(exc) == "from data_received"


def test_read_pipe_closes_after_eof_even_if_eof_received_returns_true(loop):
    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_read_pipe(
            lambda: Recorder(loop, eof_result=True), rfile
        )
        wfile.close()
        assert await protocol.lost is None
        assert protocol.events == ["made", "eof", "lost"]
        # Calls on a closed read pipe are no-ops.
        transport.close()
        transport.pause_reading()
        transport.resume_reading()
        assert not transport.is_reading()
        await settle()
        assert protocol.events == ["made", "eof", "lost"]

    run(loop, main())


def test_unreferenced_paused_read_pipe_warns_and_closes(loop):
    """Paused, the transport is unknown to the loop: dropped, it is collected with a
    ResourceWarning and its pipe is closed, as on the stdlib loop."""

    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_read_pipe(lambda: Recorder(loop), rfile)
        transport.pause_reading()
        await settle(0.01)
        del transport, protocol
        with pytest.warns(ResourceWarning, match="unclosed transport"):
            gc.collect()
        assert rfile.closed
        wfile.close()

    run(loop, main())


# ---- write pipes -----------------------------------------------------------------------


def test_write_pipe_writes_then_write_eof(loop):
    async def main():
        rfile, wfile = os_pipe()
        wfd = wfile.fileno()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), wfile)
        assert protocol.made.done()
        assert isinstance(transport, asyncio.WriteTransport)
        assert transport.get_extra_info("pipe") is wfile
        assert transport.get_protocol() is protocol
        assert transport.can_write_eof()
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        assert not transport.is_closing()

        transport.write(b"bytes,")
        transport.write(bytearray(b"bytearray,"))
        transport.write(memoryview(b"memoryview"))
        transport.write(b"")
        transport.writelines([b",a", b",b"])
        transport.write_eof()
        assert transport.is_closing()
        transport.write_eof()  # idempotent
        assert await protocol.lost is None
        assert protocol.events == ["made", "lost"]
        assert_fd_closed(wfile, wfd)
        with rfile:
            return rfile.read()

    assert run(loop, main()) == b"bytes,bytearray,memoryview,a,b"


def test_write_pipe_buffer_limits(loop):
    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), wfile)
        transport.set_write_buffer_limits(high=1000)
        assert transport.get_write_buffer_limits() == (250, 1000)
        transport.set_write_buffer_limits(high=100, low=10)
        assert transport.get_write_buffer_limits() == (10, 100)
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=10, low=100)
        assert transport.get_write_buffer_size() == 0
        transport.close()
        await protocol.lost
        rfile.close()

    run(loop, main())


class SlowReader(Recorder):
    """Reads one chunk, then pauses reading for `delay` seconds before the next."""

    def __init__(self, loop, delay):
        super().__init__(loop)
        self.delay = delay
        self.largest_read = 0

    def data_received(self, data):
        super().data_received(data)
        self.largest_read = max(self.largest_read, len(data))
        self.transport.pause_reading()
        self.loop.call_later(self.delay, self.transport.resume_reading)


class FlowWriter(Recorder):
    """A producer that honours pause_writing/resume_writing."""

    def __init__(self, loop):
        super().__init__(loop)
        self.can_write = asyncio.Event()
        self.can_write.set()

    def pause_writing(self):
        super().pause_writing()
        self.can_write.clear()

    def resume_writing(self):
        super().resume_writing()
        self.can_write.set()


def test_pipe_pair_with_slow_reader_is_flow_controlled(loop):
    high, low = 64 * 1024, 16 * 1024
    chunk_size = 32 * 1024
    data = payload(8 * 1024 * 1024)

    async def main():
        rfile, wfile = os_pipe()
        rtransport, reader = await loop.connect_read_pipe(lambda: SlowReader(loop, 0.002), rfile)
        wtransport, writer = await loop.connect_write_pipe(lambda: FlowWriter(loop), wfile)
        wtransport.set_write_buffer_limits(high=high, low=low)
        largest_buffer = 0
        for start in range(0, len(data), chunk_size):
            await asyncio.wait_for(writer.can_write.wait(), 5)
            wtransport.write(data[start : start + chunk_size])
            largest_buffer = max(largest_buffer, wtransport.get_write_buffer_size())
        wtransport.write_eof()
        assert await writer.lost is None
        assert await reader.lost is None
        return bytes(reader.data), writer.flow, largest_buffer

    received, flow, largest_buffer = run(loop, main(), timeout=30)
    assert received == data
    # The writer was paused, and paused only above the high-water mark, resumed only at or
    # below the low-water mark, strictly alternating; so memory stayed bounded.
    kinds = [kind for kind, _ in flow]
    assert len(kinds) >= 2
    assert set(kinds[::2]) == {"pause"}
    assert set(kinds[1::2]) == {"resume"}
    assert all(size > high for kind, size in flow if kind == "pause")
    assert all(size <= low for kind, size in flow if kind == "resume")
    assert high < largest_buffer <= high + chunk_size


def test_many_small_writes_queued_behind_a_full_pipe_all_arrive(loop):
    # More queued writes than one vectored write takes: once the reader drains the pipe,
    # the writer must keep sending without waiting for another writable edge.
    filler = payload(1 << 20)
    pieces = [payload(300)[i % 200 :] for i in range(500)]
    expected = filler + b"".join(pieces)

    async def main():
        rfile, wfile = os_pipe()
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, wfile)
        transport.set_write_buffer_limits(high=1 << 30)
        transport.write(filler)  # fills the pipe: the rest is queued
        for piece in pieces:
            transport.write(piece)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        received = await loop.run_in_executor(None, read_to_eof, rfile.fileno())
        rfile.close()
        return received

    assert run(loop, main()) == expected


def test_write_past_the_high_water_mark_pauses_at_once(loop):
    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), wfile)
        transport.write(payload(1024 * 1024))
        # Called from inside write(), so the producer stops before it writes again.
        assert [kind for kind, _ in protocol.flow] == ["pause"]
        assert protocol.flow[0][1] > 64 * 1024
        transport.write(b"more")
        assert [kind for kind, _ in protocol.flow] == ["pause"]  # paused once
        got = loop.run_in_executor(None, read_to_eof, rfile.fileno())
        while len(protocol.flow) < 2:
            await asyncio.sleep(0.001)
        assert protocol.flow[1][0] == "resume"
        assert protocol.flow[1][1] <= 16 * 1024
        transport.close()
        assert len(await got) == 1024 * 1024 + 4
        rfile.close()

    run(loop, main())


def test_write_pipe_drain_with_stream_writer(loop):
    data = payload(2 * 1024 * 1024)

    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop), wfile
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        reading = loop.run_in_executor(None, read_to_eof, rfile.fileno())
        for start in range(0, len(data), 100_000):
            writer.write(data[start : start + 100_000])
            await writer.drain()
            assert transport.get_write_buffer_size() <= 64 * 1024
        writer.close()
        assert transport.is_closing()
        got = await reading  # EOF: close() flushed, then closed the pipe
        rfile.close()
        return got

    assert run(loop, main()) == data


@pytest.mark.parametrize("how", ["write_eof", "close"])
def test_write_eof_and_close_flush_the_buffer_first(loop, how):
    data = payload(1024 * 1024)

    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), wfile)
        transport.set_write_buffer_limits(high=len(data) * 2)
        transport.write(data)
        assert transport.get_write_buffer_size() > 0  # the pipe holds 64 KiB at most
        getattr(transport, how)()
        assert transport.is_closing()
        await settle()
        assert not protocol.lost.done()  # waits for the reader to take the rest
        got = await loop.run_in_executor(None, read_to_eof, rfile.fileno())
        rfile.close()
        assert await protocol.lost is None
        assert transport.get_write_buffer_size() == 0
        return got

    assert run(loop, main()) == data


def test_abort_discards_the_buffer(loop):
    data = payload(1024 * 1024)

    async def main():
        rfile, wfile = os_pipe()
        wfd = wfile.fileno()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), wfile)
        transport.write(data)
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert transport.is_closing()
        assert await protocol.lost is None
        assert transport.get_write_buffer_size() == 0
        assert_fd_closed(wfile, wfd)
        got = await loop.run_in_executor(None, read_to_eof, rfile.fileno())
        rfile.close()
        return got

    got = run(loop, main())
    assert len(got) < len(data)
    assert data.startswith(got)


def test_write_copies_a_bytearray_it_cannot_send_at_once(loop):
    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), wfile)
        data = bytearray(b"a" * (512 * 1024))
        transport.write(data)
        data[:] = b"b" * len(data)  # the caller may reuse its buffer at once
        transport.write(memoryview(data)[:10])
        data[:10] = b"c" * 10
        transport.close()
        got = await loop.run_in_executor(None, read_to_eof, rfile.fileno())
        rfile.close()
        return got

    assert run(loop, main()) == b"a" * (512 * 1024) + b"b" * 10


def test_write_after_close_is_dropped_silently(loop):
    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), wfile)
        transport.write(b"kept")
        transport.close()
        transport.write(b"dropped")  # the stdlib ignores writes on a closing pipe
        assert await protocol.lost is None
        transport.write(b"dropped too")
        with rfile:
            return rfile.read()

    assert run(loop, main()) == b"kept"


def test_reader_gone_while_idle_loses_connection_cleanly(loop, handler_calls):
    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), wfile)
        transport.write(b"left in the pipe, never read")
        assert transport.get_write_buffer_size() == 0
        rfile.close()
        exc = await protocol.lost
        assert transport.is_closing()
        return exc, protocol.events

    exc, events = run(loop, main())
    assert exc is None  # nothing was lost: the stdlib reports no error
    assert events == ["made", "lost"]
    assert handler_calls == []


def test_write_to_a_closed_reader_is_a_broken_pipe(loop, handler_calls):
    async def main():
        rfile, wfile = os_pipe()
        wfd = wfile.fileno()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), wfile)
        rfile.close()
        transport.write(b"nobody reads this")  # before the loop could notice the hang-up
        exc = await protocol.lost
        assert transport.is_closing()
        transport.write(b"more")  # dropped, no exception
        assert transport.get_write_buffer_size() == 0
        assert_fd_closed(wfile, wfd)
        return exc, protocol.events

    exc, events = run(loop, main())
    assert isinstance(exc, BrokenPipeError)
    assert events == ["made", "lost"]
    assert handler_calls == []  # an OSError on a pipe is not reported as a loop error


def test_reader_gone_with_data_buffered_is_a_broken_pipe(loop, handler_calls):
    async def main():
        rfile, wfile = os_pipe()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), wfile)
        transport.write(payload(512 * 1024))
        assert transport.get_write_buffer_size() > 0
        await settle()
        rfile.close()
        exc = await protocol.lost
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        return exc

    exc = run(loop, main())
    assert isinstance(exc, BrokenPipeError)
    assert handler_calls == []


def test_write_pipe_over_a_socket_sees_the_peer_close(loop, handler_calls):
    async def main():
        a, b = socket.socketpair()
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), a)
        transport.write(b"over a socket")
        b.settimeout(5)
        assert b.recv(100) == b"over a socket"
        b.close()
        assert await protocol.lost is None
        assert a.fileno() == -1

    run(loop, main())
    assert handler_calls == []


def test_write_pipe_to_a_pty(loop):
    """A pty is a character device: connect_write_pipe accepts it (no hang-up watch)."""

    async def main():
        master, slave = os.openpty()
        tty.setraw(slave)
        sfile = os.fdopen(slave, "wb", buffering=0)
        transport, protocol = await loop.connect_write_pipe(lambda: Recorder(loop), sfile)
        assert isinstance(transport, asyncio.WriteTransport)
        mfile = os.fdopen(master, "rb", buffering=0)
        rtransport, reader = await loop.connect_read_pipe(lambda: Recorder(loop), mfile)
        transport.write(b"to the master\n")
        assert await reader.received(14) == b"to the master\n"
        transport.close()
        assert await protocol.lost is None
        assert sfile.closed
        # With the slave closed, the master ends as in the read test above.
        exc = await reader.lost
        return exc

    exc = run(loop, main())
    assert isinstance(exc, OSError)
    assert exc.errno == errno.EIO


# ---- argument checks -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["connect_read_pipe", "connect_write_pipe"])
def test_pipe_transports_refuse_regular_files(assert_same_error, tmp_path, method):
    path = tmp_path / "regular"
    path.write_bytes(b"data")

    def action(lp):
        with open(path, "rb" if method == "connect_read_pipe" else "ab", buffering=0) as f:
            lp.run_until_complete(getattr(lp, method)(asyncio.Protocol, f))

    exc = assert_same_error(action)
    assert isinstance(exc, ValueError)


@pytest.mark.parametrize("method", ["connect_read_pipe", "connect_write_pipe"])
def test_pipe_transport_leaves_no_fd_behind(loop, method):
    """Opening and closing 200 pipe transports returns the fd table to where it was."""

    async def once():
        rfile, wfile = os_pipe()
        mine, other = (rfile, wfile) if method == "connect_read_pipe" else (wfile, rfile)
        transport, protocol = await getattr(loop, method)(lambda: Recorder(loop), mine)
        transport.close()
        await protocol.lost
        other.close()

    async def main():
        await once()
        gc.collect()  # fds of earlier tests' garbage must not close during the measurement
        before = set(os.listdir("/proc/self/fd"))
        for _ in range(200):
            await once()
        return before, set(os.listdir("/proc/self/fd"))

    before, after = run(loop, main())
    assert after == before
