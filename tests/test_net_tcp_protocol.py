"""TCP stream transports driving asyncio.Protocol and asyncio.BufferedProtocol."""

import asyncio
import gc
import socket
import sys

import pytest
from net_support import (
    TIMEOUT,
    Capturing,
    Echo,
    Recorder,
    assert_bytes,
    close_transport,
    ipv6_loopback_available,
    loop_name,
    payload,
    peername_on_accept,
    raw_tcp_pair,
    run,
    tcp_connection,
)


async def shutdown(server, *pairs):
    for transport, protocol in pairs:
        await close_transport(transport, protocol)
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("size", [1, 64 * 1024, 16 * 1024 * 1024], ids=["1B", "64KiB", "16MiB"])
def test_echo(loop, size):
    data = payload(size)

    async def main():
        server, transport, protocol, _ = await tcp_connection(loop, Echo)
        transport.write(data)
        received = await protocol.received(size)
        await shutdown(server, (transport, protocol))
        return received, protocol

    received, protocol = run(loop, main())
    assert len(received) == size
    assert_bytes(received, data)
    assert protocol.events == ["made", "data", "lost"]


def test_echo_of_many_writes_of_every_bytes_like_type_keeps_order(loop):
    pieces = [payload(n)[: n % 97 + 1] for n in range(1, 3000)]
    kinds = [bytes, bytearray, memoryview]
    expected = b"".join(pieces)

    async def main():
        server, transport, protocol, _ = await tcp_connection(loop, Echo)
        for i, piece in enumerate(pieces[:2000]):
            transport.write(kinds[i % 3](piece))
        transport.write(b"")  # an empty write is a no-op, not an EOF
        transport.writelines([bytearray(p) for p in pieces[2000:]])
        received = await protocol.received(len(expected))
        await shutdown(server, (transport, protocol))
        return received

    assert_bytes(run(loop, main()), expected)


class BufferedRecorder(asyncio.BufferedProtocol):
    """Receives into a fixed buffer of `size` bytes; echoes it back if `echo` is set."""

    def __init__(self, loop, size, *, echo=False):
        self.buffer = bytearray(size)
        self.echo = echo
        self.data = bytearray()
        self.hints = []
        self.updates = 0
        self.transport = None
        self.eof = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        return memoryview(self.buffer) if self.updates % 2 else self.buffer

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buffer)
        self.updates += 1
        chunk = bytes(self.buffer[:nbytes])
        self.data += chunk
        if self.echo:
            self.transport.write(chunk)

    def eof_received(self):
        self.eof.set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@pytest.mark.parametrize("bufsize", [1, 7, 65536])
def test_buffered_protocol_on_both_ends(loop, bufsize):
    data = payload({1: 4096, 7: 64 * 1024}.get(bufsize, 256 * 1024))

    async def main():
        server, transport, protocol, _ = await tcp_connection(
            loop,
            lambda: BufferedRecorder(loop, bufsize, echo=True),
            lambda: BufferedRecorder(loop, bufsize),
        )
        transport.write(data)
        transport.write_eof()
        await protocol.eof
        assert await protocol.lost is None
        server.close()
        await server.wait_closed()
        return protocol

    protocol = run(loop, main())
    assert_bytes(protocol.data, data)
    assert protocol.updates >= len(data) // bufsize
    assert all(isinstance(hint, int) for hint in protocol.hints)


def test_transport_identity_and_extra_info(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        port = server.sockets[0].getsockname()[1]
        assert isinstance(transport, asyncio.Transport)
        assert isinstance(peer.transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM
        assert transport.get_extra_info("peername") == ("127.0.0.1", port)
        assert transport.get_extra_info("sockname") == sock.getsockname()
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
        assert peer.transport.get_extra_info("peername") == transport.get_extra_info("sockname")
        assert peer.transport.get_extra_info("sockname") == ("127.0.0.1", port)
        assert isinstance(peer.transport.get_extra_info("socket"), asyncio.trsock.TransportSocket)
        # Both ends of a TCP transport disable Nagle, as the stdlib loop does.
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        peer_sock = peer.transport.get_extra_info("socket")
        assert peer_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert transport.get_extra_info("no such key") is None
        assert transport.get_extra_info("no such key", "dflt") == "dflt"
        assert transport.get_extra_info("sslcontext") is None
        assert transport.get_protocol() is protocol
        assert peer.transport.get_protocol() is peer
        assert transport.is_closing() is False
        assert transport.is_reading() is True
        assert transport.can_write_eof() is True
        assert transport.get_write_buffer_size() == 0
        await shutdown(server, (transport, protocol))
        assert transport.is_closing() is True

    run(loop, main())


def test_transport_asks_the_socket_for_its_peer_unless_told(loop):
    """A transport's "peername": the one given in ``extra``, else the socket's
    ``getpeername()``, else (the socket has no peer) None."""

    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        told, asked = (socket.create_connection(address) for _ in range(2))
        unconnected = socket.socket()
        for sock in (told, asked, unconnected):
            sock.setblocking(False)
        transports = [
            loop._make_socket_transport(told, asyncio.Protocol(), extra={"peername": "given"}),
            loop._make_socket_transport(asked, asyncio.Protocol()),
            loop._make_socket_transport(unconnected, asyncio.Protocol()),
        ]
        peernames = [t.get_extra_info("peername") for t in transports]
        nodelay = [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in (told, asked)]
        for transport in transports:
            transport.abort()
        await asyncio.sleep(0)
        server.close()
        await server.wait_closed()
        return peernames, nodelay, address

    peernames, nodelay, address = run(loop, main())
    assert peernames == ["given", address, None]
    assert all(nodelay)


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_server_side_peername_over_ipv6(loop):
    """An IPv6 connection's "peername" on the accepting side: the client's own
    ``(host, port, flowinfo, scope_id)``, as ``socket.accept()`` gives it."""

    async def main():
        Accepting, accepted = peername_on_accept(loop)
        server = await loop.create_server(Accepting, "::1", 0)
        client = socket.create_connection(server.sockets[0].getsockname()[:2])
        peername = await asyncio.wait_for(accepted, 5)
        expected = client.getsockname()
        client.close()
        server.close()
        await server.wait_closed()
        return peername, expected

    peername, expected = run(loop, main())
    assert peername == expected
    assert peername[0] == "::1"
    assert len(peername) == 4


class SocketStandIn:
    """Not a ``socket.socket``: hands everything a transport asks for to one."""

    def __init__(self, sock):
        self._sock = sock

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_transport_over_an_object_standing_in_for_a_socket(loop):
    """Its own ``family``/``type``/``proto`` decide TCP_NODELAY, and data flows both ways."""

    async def main():
        received = loop.create_future()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data)

        class Client(asyncio.Protocol):
            def data_received(self, data):
                received.set_result(data)

        server = await loop.create_server(Echo, "127.0.0.1", 0)
        sock = socket.create_connection(server.sockets[0].getsockname())
        sock.setblocking(False)
        transport = loop._make_socket_transport(SocketStandIn(sock), Client())
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        transport.write(b"over the stand-in")
        data = await asyncio.wait_for(received, 5)
        transport.close()
        await asyncio.sleep(0)
        server.close()
        await server.wait_closed()
        return nodelay, data, sock.fileno()

    nodelay, data, fileno = run(loop, main())
    assert nodelay
    assert data == b"over the stand-in"
    assert fileno == -1  # closed by the transport, through the stand-in


class ListenerSocket(socket.socket):
    """A socket subclass: its accept() is its own business (the loop must call it)."""

    accepted = 0

    def accept(self):
        ListenerSocket.accepted += 1
        return super().accept()


@pytest.mark.parametrize("listener", ["socket", "subclass"])
def test_accepted_sockets_take_the_listeners_kind_and_are_non_blocking(loop, listener):
    async def main():
        ListenerSocket.accepted = 0
        kind = ListenerSocket if listener == "subclass" else socket.socket
        sock = kind(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        capture = Capturing(loop, lambda: Recorder(loop))
        server = await loop.create_server(capture, sock=sock)
        # A default timeout must not leak into the sockets transports own.
        socket.setdefaulttimeout(5.0)
        try:
            transport, protocol = await loop.create_connection(
                lambda: Recorder(loop), *sock.getsockname()
            )
            peer = await capture.first()
            await peer.made
        finally:
            socket.setdefaulttimeout(None)
        accepted = peer.transport.get_extra_info("socket")
        assert (accepted.family, accepted.type, accepted.proto) == (
            socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,
        )
        assert isinstance(accepted.family, socket.AddressFamily)
        assert accepted.gettimeout() == 0
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert (ListenerSocket.accepted > 0) == (listener == "subclass")
        transport.write(b"ping")
        assert await peer.received(4) == b"ping"
        await shutdown(server, (transport, protocol))

    run(loop, main())


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_ipv6_connection(loop):
    async def main():
        capture = []
        server = await loop.create_server(
            lambda: capture.append(Echo()) or capture[-1], "::1", 0, family=socket.AF_INET6
        )
        port = server.sockets[0].getsockname()[1]
        transport, protocol = await loop.create_connection(lambda: Recorder(loop), "::1", port)
        assert transport.get_extra_info("peername")[:2] == ("::1", port)
        assert transport.get_extra_info("socket").family == socket.AF_INET6
        transport.write(b"over six")
        assert await protocol.received(8) == b"over six"
        await shutdown(server, (transport, protocol))

    run(loop, main())


def test_set_protocol_redirects_later_data(loop):
    async def main():
        server, transport, first, peer = await tcp_connection(loop)
        peer.transport.write(b"one")
        assert await first.received(3) == b"one"
        second = Recorder(loop)
        transport.set_protocol(second)
        assert transport.get_protocol() is second
        peer.transport.write(b"two")
        assert await second.received(3) == b"two"
        transport.close()
        assert await second.lost is None
        assert first.data == b"one"
        assert first.events == ["made", "data"]
        assert second.events == ["data", "lost"]  # set_protocol does not call connection_made
        await peer.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_queued_writes_send_what_was_written_even_if_the_buffer_changes_afterwards(loop):
    # Far more than the socket takes at once: the later writes and the rest of the first
    # are queued (ferroloop keeps a bytes object by reference, copies anything mutable).
    first = payload(4 * 1024 * 1024)
    mutable = bytearray(payload(1024 * 1024 + 7)[7:])
    view_source = bytearray(payload(300_000))
    tail = payload(5000)[13:]
    expected = first + bytes(mutable) + bytes(view_source[1000:]) + tail

    # The stdlib loop queues bytearray/memoryview data by reference from 3.12 on, so there
    # a change made after write() is what gets sent (docs/compatibility.md).
    copies_mutable = not (isinstance(loop, asyncio.BaseEventLoop) and sys.version_info >= (3, 12))

    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.write(first)
        assert transport.get_write_buffer_size() > 0  # the rest of `first` is queued
        transport.write(mutable)
        if copies_mutable:
            mutable[:] = b"\0" * len(mutable)
        transport.write(memoryview(view_source)[1000:])
        if copies_mutable:
            view_source[:] = b"\xff" * len(view_source)
        transport.write(tail)
        received = await peer.received(len(expected))
        await shutdown(server, (transport, protocol))
        return received

    assert_bytes(run(loop, main()), expected)


def test_received_bytes_stay_what_they_were_whatever_the_protocol_keeps(loop):
    # Sizes above pymalloc's 512 bytes, growing and shrinking: ferroloop refills a bytes
    # object the protocol let go of, never one it kept (the list, the memoryview); from
    # 64 KiB on it receives into such an object directly, spilling over into a buffer.
    sizes = [4000, 3000, 2500, 4000, 600, 1000, 700, 513, 2048, 60000, 40000, 30000, 1200]
    sizes = (sizes + [100_000, 90000, 70000, 200_000, 150_000, 30000, 90000, 5000, 250_000]) * 4
    chunks = [payload(size + i)[i:] for i, size in enumerate(sizes)]

    class Keeper(asyncio.Protocol):
        def __init__(self):
            self.kept = []  # every third object itself, every third a memoryview of it
            self.seen = []  # (a copy, hash(data), id(data)) of each
            self.total = 0
            self.waiter = None

        def data_received(self, data):
            assert type(data) is bytes
            copy = bytes(bytearray(data))
            self.seen.append((copy, hash(data), hash(copy), id(data)))
            if len(self.seen) % 3 == 1:
                self.kept.append(data)
            elif len(self.seen) % 3 == 2:
                self.kept.append(memoryview(data))
            self.total += len(data)
            if self.waiter is not None and self.total >= self.waiter[0]:
                self.waiter[1].set_result(None)

    async def main():
        client, server = raw_tcp_pair()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        client.setblocking(False)
        transport, protocol = await loop.create_connection(Keeper, sock=client)
        expected_total = 0
        for chunk in chunks:
            expected_total += len(chunk)
            protocol.waiter = (expected_total, loop.create_future())
            # Each chunk whole in the receive buffer before reading resumes: one read each
            # (a loopback send has queued its data at the receiver when it returns).
            transport.pause_reading()
            server.sendall(chunk)
            transport.resume_reading()
            await asyncio.wait_for(protocol.waiter[1], TIMEOUT)
        transport.close()
        server.close()
        return protocol

    protocol = run(loop, main())
    assert b"".join(copy for copy, *_ in protocol.seen) == b"".join(chunks)
    for _copy, data_hash, copy_hash, _ in protocol.seen:
        assert data_hash == copy_hash  # a refilled object's hash is recomputed
    kept = b"".join(bytes(item) for item in protocol.kept)
    expected_kept = b"".join(copy for i, (copy, *_) in enumerate(protocol.seen) if i % 3 != 2)
    assert kept == expected_kept
    if loop.__class__.__module__.startswith("ferroloop"):
        ids = [ident for *_, ident in protocol.seen]
        assert len(set(ids)) < len(ids)  # some object was refilled: the test covered it


def test_write_rejects_non_bytes(loop):
    async def main():
        server, transport, protocol, _ = await tcp_connection(loop)
        for bad in ["text", 42, None, [b"x"]]:
            with pytest.raises(TypeError) as info:
                transport.write(bad)
            assert str(info.value) == (
                f"data argument must be a bytes-like object, not {type(bad).__name__!r}"
            )
        await shutdown(server, (transport, protocol))

    run(loop, main())


def test_write_takes_data_by_keyword_and_rejects_bad_calls_as_a_method_would(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.write(data=b"by keyword ")
        transport.write(b"by position")
        expected = b"by keyword by position"
        assert await peer.received(len(expected)) == expected
        errors = []
        for call in [
            lambda: transport.write(),
            lambda: transport.write(b"a", b"b"),
            lambda: transport.write(b"a", data=b"b"),
            lambda: transport.write(payload=b"a"),
        ]:
            with pytest.raises(TypeError) as info:
                call()
            # The class name differs between loops; what follows it must not.
            errors.append(str(info.value).split(".", 1)[1])
        assert errors == [
            "write() missing 1 required positional argument: 'data'",
            "write() takes 2 positional arguments but 3 were given",
            "write() got multiple values for argument 'data'",
            "write() got an unexpected keyword argument 'payload'",
        ]
        await shutdown(server, (transport, protocol))

    run(loop, main())


def test_close_flushes_pending_data_then_reports_connection_lost_none(loop):
    data = payload(8 * 1024 * 1024)

    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.write(data)
        transport.close()
        assert transport.is_closing()
        assert transport.is_reading() is False
        transport.close()  # a second close is a no-op
        assert await protocol.lost is None
        received = await peer.received(len(data) + 1)
        await peer.eof
        await peer.lost
        server.close()
        await server.wait_closed()
        return received, protocol

    received, protocol = run(loop, main())
    assert_bytes(received, data)
    assert protocol.events == ["made", "lost"]


def test_connection_lost_leaves_the_socket_closed_as_socket_close_would(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        sockets = [t.get_extra_info("socket") for t in (transport, peer.transport)]
        transport.close()
        await protocol.lost
        await peer.lost  # the server side closes on EOF
        for sock in sockets:
            assert sock.fileno() == -1
            # What socket.socket.close() leaves behind: its flag, shown by its repr.
            assert sock._sock._closed is True
            assert "[closed]" in repr(sock._sock)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_write_after_close_is_dropped_silently(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.close()
        transport.write(b"too late")
        assert await protocol.lost is None
        await peer.eof
        await peer.lost
        server.close()
        await server.wait_closed()
        return peer

    peer = run(loop, main())
    assert peer.data == b""
    assert peer.events == ["made", "eof", "lost"]


def test_abort_discards_pending_data_and_reports_connection_lost_none(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        peer.transport.pause_reading()
        transport.write(payload(32 * 1024 * 1024))
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert transport.is_closing()
        assert await protocol.lost is None
        transport.abort()  # aborting again is harmless
        peer.transport.resume_reading()
        await peer.lost
        server.close()
        await server.wait_closed()
        return protocol, peer

    protocol, peer = run(loop, main())
    assert protocol.events == ["made", "lost"]
    assert len(peer.data) < 32 * 1024 * 1024
    assert peer.events[-1] == "lost"


def test_close_with_data_arriving_delivers_nothing_after_connection_lost(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        peer.transport.write(payload(1024 * 1024))
        transport.close()
        await protocol.lost
        for _ in range(5):
            await asyncio.sleep(0)
        await peer.lost
        server.close()
        await server.wait_closed()
        return protocol

    protocol = run(loop, main())
    assert protocol.events[-1] == "lost"
    assert protocol.events.count("lost") == 1


def test_half_close_client_to_server_then_server_to_client(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(
            loop, lambda: Recorder(loop, eof_result=True), lambda: Recorder(loop, eof_result=True)
        )
        transport.write(b"request")
        transport.write_eof()
        assert transport.is_closing() is False
        transport.write_eof()  # repeated write_eof is a no-op
        with pytest.raises(RuntimeError, match=r"^Cannot call write\(\) after write_eof\(\)$"):
            transport.write(b"more")
        await peer.eof
        assert bytes(peer.data) == b"request"
        # The server can still answer on its half of the connection.
        peer.transport.write(b"response ")
        peer.transport.write(b"after eof")
        peer.transport.write_eof()
        await protocol.eof
        assert bytes(protocol.data) == b"response after eof"
        assert not protocol.lost.done()
        assert not peer.lost.done()
        transport.close()
        peer.transport.close()
        assert await protocol.lost is None
        assert await peer.lost is None
        server.close()
        await server.wait_closed()
        return protocol, peer

    protocol, peer = run(loop, main())
    assert protocol.events == ["made", "data", "eof", "lost"]
    assert peer.events == ["made", "data", "eof", "lost"]


def test_half_close_server_to_client_then_client_answers(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(
            loop, lambda: Recorder(loop, eof_result=True), lambda: Recorder(loop, eof_result=True)
        )
        peer.transport.write(b"banner")
        peer.transport.write_eof()
        await protocol.eof
        assert bytes(protocol.data) == b"banner"
        transport.write(b"reply")
        transport.write_eof()
        await peer.eof
        assert bytes(peer.data) == b"reply"
        transport.close()
        peer.transport.close()
        await protocol.lost
        await peer.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_write_eof_flushes_buffered_data_first(loop):
    data = payload(8 * 1024 * 1024)

    async def main():
        server, transport, protocol, peer = await tcp_connection(
            loop, lambda: Recorder(loop, eof_result=True)
        )
        transport.write(data)
        transport.write_eof()
        await peer.eof
        received = bytes(peer.data)
        peer.transport.write(b"ack")
        assert await protocol.received(3) == b"ack"
        await shutdown(server, (transport, protocol), (peer.transport, peer))
        return received

    assert_bytes(run(loop, main()), data)


def test_eof_received_returning_false_closes_the_transport(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.write(b"last words")
        transport.write_eof()
        assert await peer.lost is None
        await protocol.eof
        assert await protocol.lost is None
        server.close()
        await server.wait_closed()
        return protocol, peer

    protocol, peer = run(loop, main())
    assert peer.events == ["made", "data", "eof", "lost"]
    assert protocol.events == ["made", "eof", "lost"]


def test_unclosed_transport_warns_when_collected(loop):
    client, server_end = raw_tcp_pair()

    async def main(sock):
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
        transport.pause_reading()  # nothing in the loop references it any more

    run(loop, main(client))
    del client
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        for _ in range(3):
            gc.collect()
    # The collected transport closed its socket: the peer sees EOF.
    server_end.settimeout(TIMEOUT)
    assert server_end.recv(10) == b""
    server_end.close()


def test_connection_made_runs_before_the_connection_is_returned(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        port = server.sockets[0].getsockname()[1]
        # tcp_connection awaited the server side; a fresh client is checked on return.
        transport2, protocol2 = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port
        )
        assert protocol2.events == ["made"]
        assert protocol2.transport is transport2
        await shutdown(server, (transport, protocol), (transport2, protocol2))
        await peer.lost

    run(loop, main())


class StartsOddly(Recorder):
    """Pauses reading, or raises, in connection_made."""

    def __init__(self, loop, how):
        super().__init__(loop)
        self.how = how

    def connection_made(self, transport):
        super().connection_made(transport)
        if self.how == "pause":
            transport.pause_reading()
        elif self.how == "raise":
            raise RuntimeError("connection_made failed")


@pytest.mark.parametrize("how", ["plain", "pause", "raise"])
def test_reading_starts_right_after_connection_made(loop, how):
    """Data already waiting is delivered after connection_made, unless it paused reading;
    a connection_made that raises is reported and reading starts all the same."""

    async def main():
        reported = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        ours, theirs = socket.socketpair()
        theirs.sendall(b"early")
        transport, protocol = await loop.connect_accepted_socket(
            lambda: StartsOddly(loop, how), ours
        )
        if how == "pause":
            for _ in range(5):
                await asyncio.sleep(0)
            assert protocol.events == ["made"]
            assert transport.is_reading() is False
            transport.resume_reading()
        assert await protocol.received(5) == b"early"
        assert protocol.events == ["made", "data"]
        if how == "raise":
            [context] = reported
            assert isinstance(context["exception"], RuntimeError)
            assert "connection_made" in context["message"]
        else:
            assert reported == []
        theirs.close()
        await protocol.lost
        assert protocol.events == ["made", "data", "eof", "lost"]

    run(loop, main())


class ClosesWithin(Recorder):
    """Calls `action` ("close" or "abort") on its transport in the first data_received."""

    def __init__(self, loop, action):
        super().__init__(loop)
        self.action = action

    def data_received(self, data):
        super().data_received(data)
        getattr(self.transport, self.action)()


@pytest.mark.parametrize("action", ["close", "abort"])
def test_closing_from_data_received_stops_delivery(loop, action):
    async def main():
        server, transport, protocol, peer = await tcp_connection(
            loop, client_protocol=lambda: ClosesWithin(loop, action)
        )
        peer.transport.write(payload(4 * 1024 * 1024))
        peer.transport.write_eof()
        assert await protocol.lost is None
        await peer.lost
        server.close()
        await server.wait_closed()
        return protocol

    protocol = run(loop, main())
    assert protocol.events == ["made", "data", "lost"]
    assert len(protocol.data) < 4 * 1024 * 1024


class SwapsWithin(Recorder):
    """Hands the transport to `successor` from inside its first data_received."""

    def __init__(self, loop, successor):
        super().__init__(loop)
        self.successor = successor

    def data_received(self, data):
        super().data_received(data)
        if self.transport.get_protocol() is self:
            self.transport.set_protocol(self.successor)
            self.successor.transport = self.transport


def test_set_protocol_from_data_received(loop):
    data = payload(2 * 1024 * 1024)

    async def main():
        successor = Recorder(loop)
        server, transport, first, peer = await tcp_connection(
            loop, client_protocol=lambda: SwapsWithin(loop, successor)
        )
        peer.transport.write(data)
        peer.transport.write_eof()
        await successor.lost
        await peer.lost
        server.close()
        await server.wait_closed()
        return first, successor

    first, successor = run(loop, main())
    assert first.events == ["made", "data"]
    assert_bytes(bytes(first.data) + bytes(successor.data), data)
    assert successor.events[-2:] == ["eof", "lost"]


def test_close_waits_for_a_slow_peer_before_connection_lost(loop):
    data = payload(8 * 1024 * 1024)

    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        peer.transport.pause_reading()
        transport.write(data)
        transport.close()
        for _ in range(20):
            await asyncio.sleep(0.002)
        assert not protocol.lost.done(), "connection_lost before the buffer was flushed"
        assert transport.get_write_buffer_size() > 0
        peer.transport.resume_reading()
        assert await protocol.lost is None
        await peer.eof
        received = bytes(peer.data)
        await peer.lost
        server.close()
        await server.wait_closed()
        return received

    assert_bytes(run(loop, main()), data)


def test_close_while_reading_is_paused(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.pause_reading()
        peer.transport.write(b"never read")
        await asyncio.sleep(0.01)
        transport.close()
        assert await protocol.lost is None
        await peer.lost
        server.close()
        await server.wait_closed()
        return protocol

    protocol = run(loop, main())
    assert protocol.events == ["made", "lost"]


def test_abort_after_pause_writing_never_resumes(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        peer.transport.pause_reading()
        transport.write(payload(16 * 1024 * 1024))
        assert [kind for kind, _ in protocol.flow] == ["pause"]
        transport.abort()
        assert await protocol.lost is None
        assert transport.get_write_buffer_size() == 0
        peer.transport.resume_reading()
        await peer.lost
        for _ in range(5):
            await asyncio.sleep(0)
        server.close()
        await server.wait_closed()
        return protocol

    protocol = run(loop, main())
    assert [kind for kind, _ in protocol.flow] == ["pause"]


@pytest.mark.parametrize("method", ["close", "abort"])
def test_connection_lost_comes_in_a_later_callback(loop, method):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        getattr(transport, method)()
        assert not protocol.lost.done()  # never from inside close() / abort()
        assert await protocol.lost is None
        await peer.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_peername_and_sockname_outlive_the_connection(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        peername = transport.get_extra_info("peername")
        sockname = transport.get_extra_info("sockname")
        peer.transport.close()
        await protocol.lost
        assert transport.get_extra_info("peername") == peername
        assert transport.get_extra_info("sockname") == sockname
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_sockname_and_socket_first_asked_after_the_connection_is_closed(loop):
    # Nothing asks for them while the connection is open; they are still known after.
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        client_address = peer.transport.get_extra_info("peername")
        server_address = transport.get_extra_info("peername")
        peer.transport.abort()
        transport.close()
        await protocol.lost
        await peer.lost
        assert transport.get_extra_info("sockname") == client_address
        assert peer.transport.get_extra_info("sockname") == server_address
        for side in (transport, peer.transport):
            sock = side.get_extra_info("socket")
            assert isinstance(sock, asyncio.trsock.TransportSocket)
            assert sock.fileno() == -1
            assert side.get_extra_info("socket") is sock
            assert side.get_extra_info("sockname") is side.get_extra_info("sockname")
            assert side.get_extra_info("nonexistent", "default") == "default"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_calling_transport_methods_stores_nothing_in_the_transport(loop):
    # A server keeps many transports: their methods must not be bound into each of them.
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        side = peer.transport
        before = set(vars(side))
        side.write(b"x")
        side.writelines([b"y"])
        assert not side.is_closing() and side.is_reading() and side.can_write_eof()
        side.pause_reading()
        side.resume_reading()
        side.set_write_buffer_limits(high=1024)
        assert side.get_write_buffer_limits() == (256, 1024)
        assert side.get_write_buffer_size() == 0
        side.set_protocol(side.get_protocol())
        assert set(vars(side)) == before
        for call in (lambda: side.is_closing(1), lambda: side.write(), lambda: side.close(None)):
            with pytest.raises(TypeError):
                call()
        assert await protocol.received(2) == b"xy"
        side.close()
        assert side.is_closing()
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_add_reader_on_a_transport_fd_is_refused(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        fd = transport.get_extra_info("socket").fileno()
        for register in (loop.add_reader, loop.add_writer):
            with pytest.raises(RuntimeError, match=f"^File descriptor {fd} is used by transport"):
                register(fd, print)
        for unregister in (loop.remove_reader, loop.remove_writer):
            with pytest.raises(RuntimeError, match=f"^File descriptor {fd} is used by transport"):
                unregister(fd)
        transport.close()
        await protocol.lost
        await peer.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_switching_between_protocol_kinds_mid_stream(loop):
    first = payload(300 * 1024)
    second = payload(900 * 1024)[::-1]
    third = b"back to plain"

    async def main():
        server, transport, plain, peer = await tcp_connection(loop)
        buffered = BufferedRecorder(loop, 4096)
        plain2 = Recorder(loop)
        peer.transport.write(first)
        await plain.received(len(first))
        transport.set_protocol(buffered)
        buffered.transport = transport
        peer.transport.write(second)
        while len(buffered.data) < len(second):
            await asyncio.sleep(0.001)
        transport.set_protocol(plain2)
        peer.transport.write(third)
        await plain2.received(len(third))
        transport.close()
        await plain2.lost
        await peer.lost
        server.close()
        await server.wait_closed()
        return plain, buffered, plain2

    plain, buffered, plain2 = run(loop, main())
    assert_bytes(plain.data, first)
    assert_bytes(buffered.data, second)
    assert bytes(plain2.data) == third


def test_many_connections_streaming_at_once_keep_their_bytes_apart(loop):
    count, size = 20, 1024 * 1024

    async def one(port, i):
        data = payload(size + i)[i:]  # a different stream per connection
        transport, protocol = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port
        )
        offset, step = 0, 1 + i * 997
        while offset < len(data):
            transport.write(data[offset : offset + step])
            offset += step
            step = step * 3 % 65521 + 1
            if transport.get_write_buffer_size() > 256 * 1024:
                await asyncio.sleep(0)
        received = await protocol.received(len(data))
        transport.close()
        await protocol.lost
        return received == data

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        results = await asyncio.gather(*(one(port, i) for i in range(count)))
        server.close()
        await server.wait_closed()
        return results

    assert run(loop, main(), timeout=30) == [True] * count


def test_methods_with_nothing_to_return_return_none(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        returned = [
            transport.pause_reading(),
            transport.resume_reading(),
            transport.set_write_buffer_limits(),
            transport.writelines([b"a"]),
            transport.write(b"b"),
            transport.write_eof(),
            transport.close(),
            transport.abort(),
        ]
        await protocol.lost
        await shutdown(server, (peer.transport, peer))
        return returned

    assert run(loop, main()) == [None] * 8


@pytest.mark.parametrize(
    "bad", [[b"sent?", "not bytes"], 5, [b"ok", None]], ids=["str-item", "int", "none-item"]
)
def test_writelines_with_a_bad_item_writes_nothing(loop, stdlib_error, bad):
    expected = stdlib_error(
        lambda stdlib_loop: stdlib_loop.run_until_complete(_writelines_on(stdlib_loop, bad))
    )

    async def main():
        return await _writelines_on(loop, bad)

    with pytest.raises(type(expected)) as info:
        run(loop, main())
    assert str(info.value) == str(expected)


async def _writelines_on(loop, bad):
    """writelines(bad) on a fresh connection; asserts the peer got nothing of it."""
    server, transport, protocol, peer = await tcp_connection(loop)
    try:
        transport.writelines(bad)
    finally:
        await asyncio.sleep(0.05)
        transport.write(b"end")
        transport.write_eof()
        assert await peer.received(3) == b"end"
        transport.close()
        await protocol.lost
        await shutdown(server, (peer.transport, peer))


@pytest.mark.parametrize("how", ["connect_accepted_socket", "create_connection"])
def test_a_second_transport_on_one_socket_is_refused(loop, how):
    # 3.12+ refuses it; 3.11's stdlib makes it and the two compete for the fd: ferroloop
    # refuses it on every version.
    async def main():
        ours, peer = socket.socketpair()
        ours.setblocking(False)
        make = getattr(loop, how)
        kwargs = {"sock": ours} if how == "create_connection" else {}
        args = () if kwargs else (ours,)
        transport, protocol = await make(lambda: Recorder(loop), *args, **kwargs)
        try:
            with pytest.raises(RuntimeError, match="is used by transport"):
                await make(lambda: Recorder(loop), *args, **kwargs)
            assert not transport.is_closing()
            peer.sendall(b"still mine")
            assert await protocol.received(10) == b"still mine"
        finally:
            await close_transport(transport, protocol)
            peer.close()

    if loop_name(loop) == "asyncio" and sys.version_info < (3, 12):
        pytest.skip("3.11's stdlib loop makes the second transport")
    run(loop, main())


def test_transport_methods_follow_changes_to_the_transport_class(loop):
    # ferroloop's transport methods read the `_core` slot at its offset while the class is
    # unchanged; a class-level `_core` (as a mock might set) must be honoured at once.
    async def main():
        server, first, _, first_peer = await tcp_connection(loop)
        _, second, _, second_peer = await tcp_connection(loop)
        cls = type(first)
        slot = cls.__dict__["_core"]
        cls._core = property(lambda transport: slot.__get__(second))
        try:
            first.write(b"redirected")
            assert await second_peer.received(10) == b"redirected"
        finally:
            cls._core = slot
        first.write(b"home")
        assert await first_peer.received(4) == b"home"
        core = first._core
        del first._core
        with pytest.raises(AttributeError, match="'_core'"):
            first.is_closing()
        first._core = core
        assert not first.is_closing()
        await shutdown(server, (first, first_peer), (second, second_peer))

    if loop_name(loop) != "ferroloop":
        pytest.skip("the stdlib's transports have no Rust core")
    run(loop, main())
