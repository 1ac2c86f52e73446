"""Failures: peer resets, protocol callbacks that raise, and no fd left open afterwards."""

import asyncio
import gc
import socket

import pytest
from net_support import (
    TLS,
    Echo,
    Recorder,
    open_fds,
    payload,
    raw_tcp_pair,
    run,
    tcp_connection,
)


@pytest.fixture
def handler_calls(loop):
    """The contexts passed to the loop's exception handler during the test."""
    calls = []
    loop.set_exception_handler(lambda _loop, context: calls.append(context))
    return calls


def abort_with_reset(transport):
    """Abort `transport` so that its peer sees a TCP reset."""
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    transport.abort()


def test_peer_reset_while_idle(loop, handler_calls):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        abort_with_reset(peer.transport)
        exc = await protocol.lost
        assert transport.is_closing()
        await peer.lost
        server.close()
        await server.wait_closed()
        return exc, protocol

    exc, protocol = run(loop, main())
    assert isinstance(exc, ConnectionResetError)
    assert protocol.events == ["made", "lost"]
    assert handler_calls == []  # an OSError from the socket is not a loop error


def test_peer_reset_during_write(loop, handler_calls):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        peer.transport.pause_reading()
        transport.set_write_buffer_limits(high=1 << 30)
        transport.write(payload(32 * 1024 * 1024))
        assert transport.get_write_buffer_size() > 0
        abort_with_reset(peer.transport)
        exc = await protocol.lost
        assert transport.get_write_buffer_size() == 0  # the unsendable rest was dropped
        for _ in range(10):  # writes after the loss are ignored, never raised
            transport.write(b"into the void")
        for _ in range(5):
            await asyncio.sleep(0)
        await peer.lost
        server.close()
        await server.wait_closed()
        return exc, protocol

    exc, protocol = run(loop, main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert protocol.events == ["made", "lost"]
    assert handler_calls == []


def test_peer_reset_during_a_paused_write_with_a_raw_peer(loop, handler_calls):
    client, server_end = raw_tcp_pair()

    async def main():
        transport, protocol = await loop.create_connection(lambda: Recorder(loop), sock=client)
        transport.write(payload(16 * 1024 * 1024))
        assert protocol.flow and protocol.flow[0][0] == "pause"
        server_end.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        server_end.close()
        exc = await protocol.lost
        return exc, protocol

    exc, protocol = run(loop, main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert protocol.events == ["made", "lost"]
    assert handler_calls == []


class Failing(Recorder):
    """A recorder whose `method` raises ZeroDivisionError."""

    def __init__(self, loop, method):
        super().__init__(loop)
        self.method = method

    def data_received(self, data):
        super().data_received(data)
        if self.method == "data_received":
            raise ZeroDivisionError("in data_received")

    def eof_received(self):
        super().eof_received()
        if self.method == "eof_received":
            raise ZeroDivisionError("in eof_received")


@pytest.mark.parametrize("method", ["data_received", "eof_received"])
def test_protocol_callback_raising_closes_the_transport(loop, handler_calls, method):
    async def main():
        server, transport, protocol, peer = await tcp_connection(
            loop, client_protocol=lambda: Failing(loop, method)
        )
        peer.transport.write(b"trigger")
        peer.transport.write_eof()
        exc = await protocol.lost
        assert transport.is_closing()
        await peer.lost
        server.close()
        await server.wait_closed()
        return exc, transport, protocol

    exc, transport, protocol = run(loop, main())
    assert isinstance(exc, ZeroDivisionError)
    assert protocol.events.count("lost") == 1
    assert len(handler_calls) == 1
    context = handler_calls[0]
    assert context["message"] == f"Fatal error: protocol.{method}() call failed."
    assert context["exception"] is exc
    assert context["transport"] is transport
    assert context["protocol"] is protocol


class FailingBuffered(asyncio.BufferedProtocol):
    def __init__(self, loop, fault):
        self.fault = fault
        self.lost = loop.create_future()
        self.updates = 0

    def get_buffer(self, sizehint):
        if self.fault == "get_buffer raises":
            raise ZeroDivisionError("in get_buffer")
        if self.fault == "empty buffer":
            return bytearray()
        return bytearray(100)

    def buffer_updated(self, nbytes):
        self.updates += 1
        raise ZeroDivisionError("in buffer_updated")

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@pytest.mark.parametrize(
    "fault, message",
    [
        ("get_buffer raises", "Fatal error: protocol.get_buffer() call failed."),
        ("empty buffer", "Fatal error: protocol.get_buffer() call failed."),
        ("buffer_updated raises", "Fatal error: protocol.buffer_updated() call failed."),
    ],
)
def test_buffered_protocol_faults(loop, handler_calls, fault, message):
    async def main():
        server, transport, protocol, peer = await tcp_connection(
            loop, client_protocol=lambda: FailingBuffered(loop, fault)
        )
        peer.transport.write(b"trigger")
        exc = await protocol.lost
        await peer.lost
        server.close()
        await server.wait_closed()
        return exc, protocol

    exc, protocol = run(loop, main())
    if fault == "empty buffer":
        assert isinstance(exc, RuntimeError)
        assert str(exc) == "get_buffer() returned an empty buffer"
    else:
        assert isinstance(exc, ZeroDivisionError)
    assert protocol.updates == (1 if fault == "buffer_updated raises" else 0)
    assert [c["message"] for c in handler_calls] == [message]
    assert handler_calls[0]["exception"] is exc


def test_failing_server_protocol_factory_is_reported_in_debug_mode(loop, handler_calls):
    loop.set_debug(True)
    made = []

    def factory():
        made.append(None)
        if len(made) == 1:
            raise ZeroDivisionError("no protocol for you")
        return Echo()

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        first = socket.create_connection(("127.0.0.1", port))
        while not handler_calls:
            await asyncio.sleep(0.001)
        # The server survives and serves the next connection.
        transport, protocol = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port
        )
        transport.write(b"still here")
        assert await protocol.received(10) == b"still here"
        transport.close()
        await protocol.lost
        first.close()
        server.close()
        await server.wait_closed()

    run(loop, main())
    context = handler_calls[0]
    assert context["message"] == "Error on transport creation for incoming connection"
    assert isinstance(context["exception"], ZeroDivisionError)


def test_client_protocol_factory_error_propagates(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def factory():
            raise ZeroDivisionError("client factory")

        with pytest.raises(ZeroDivisionError, match="client factory"):
            await loop.create_connection(factory, "127.0.0.1", port)
        server.close()

    run(loop, main())


# -- no fd left open ---------------------------------------------------------------------


def check_no_fd_left(loop, scenario):
    """Run `scenario` once to warm up lazily created loop resources, then check that a
    second run leaves exactly the fds that were open before it."""
    run(loop, scenario())
    gc.collect()  # sockets that earlier tests dropped unclosed must not close mid-scenario
    before = open_fds()
    run(loop, scenario())
    for _ in range(3):  # let closes scheduled with call_soon run
        loop.run_until_complete(asyncio.sleep(0))
    assert open_fds() - before == set()


def test_no_fd_left_after_a_server_and_its_clients_close(loop):
    async def scenario():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for _ in range(20):
            transport, protocol = await loop.create_connection(
                lambda: Recorder(loop), "127.0.0.1", port
            )
            transport.write(b"x")
            await protocol.received(1)
            clients.append((transport, protocol))
        for transport, protocol in clients:
            transport.close()
            await protocol.lost
        server.close()
        await server.wait_closed()

    check_no_fd_left(loop, scenario)


def test_no_fd_left_after_aborts_resets_and_refusals(loop):
    async def scenario():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.abort()
        await protocol.lost
        await peer.lost
        server.close()
        await server.wait_closed()
        server, transport, protocol, peer = await tcp_connection(loop)
        abort_with_reset(peer.transport)
        await protocol.lost
        await peer.lost
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)

    check_no_fd_left(loop, scenario)


def test_no_fd_left_after_unix_connections(loop, tmp_path):
    path = str(tmp_path / "fd.sock")

    async def scenario():
        server = await loop.create_unix_server(Echo, path)
        transport, protocol = await loop.create_unix_connection(lambda: Recorder(loop), path)
        transport.write(b"x")
        await protocol.received(1)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            await loop.create_unix_connection(asyncio.Protocol, str(tmp_path / "missing.sock"))

    check_no_fd_left(loop, scenario)


def test_no_fd_left_after_tls_connections(loop, tmp_path):
    tls = TLS(str(tmp_path))

    async def scenario():
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=tls.server())
        port = server.sockets[0].getsockname()[1]
        transport, protocol = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=tls.client(), server_hostname="localhost"
        )
        transport.write(b"x")
        await protocol.received(1)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()

    check_no_fd_left(loop, scenario)


def test_no_fd_left_after_streams(loop):
    async def handler(reader, writer):
        writer.write(await reader.read(100))
        writer.close()
        await writer.wait_closed()

    async def scenario():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        assert await reader.read() == b"x"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    check_no_fd_left(loop, scenario)


@pytest.fixture
def unanswered_address():
    """A loopback address whose connects stay pending: its listen queue is full."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = []
        for _ in range(2):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(full.getsockname())
            fillers.append(s)
        try:
            yield full.getsockname()
        finally:
            for s in fillers:
                s.close()


def test_no_fd_left_by_a_cancelled_create_connection(loop, unanswered_address):
    async def scenario():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                loop.create_connection(asyncio.Protocol, *unanswered_address), 0.05
            )

    check_no_fd_left(loop, scenario)


def test_no_fd_left_by_a_cancelled_tls_handshake(loop, tmp_path):
    tls = TLS(str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers

        async def scenario():
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    loop.create_connection(
                        asyncio.Protocol,
                        *silent.getsockname(),
                        ssl=tls.client(),
                        server_hostname="localhost",
                    ),
                    0.05,
                )
            # The connection sits in the backlog; accepting and closing it frees its fd.
            conn, _ = silent.accept()
            conn.close()

        check_no_fd_left(loop, scenario)


class Exits(Recorder):
    def __init__(self, loop, exc_type):
        super().__init__(loop)
        self.exc_type = exc_type

    def data_received(self, data):
        super().data_received(data)
        raise self.exc_type("from data_received")


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_from_data_received_propagate(loop, exc_type):
    server, transport, protocol, peer = run(
        loop, tcp_connection(loop, client_protocol=lambda: Exits(loop, exc_type))
    )
    peer.transport.write(b"trigger")
    never = loop.create_future()
    guard = loop.call_later(5, never.set_result, None)  # fail, not hang, if it is swallowed
    with pytest.raises(exc_type, match="from data_received"):
        loop.run_until_complete(never)
    guard.cancel()

    async def cleanup():
        transport.close()
        peer.transport.close()
        await peer.lost
        server.close()
        await server.wait_closed()

    run(loop, cleanup())
