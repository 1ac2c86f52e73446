"""TLS: ssl= on connections and servers (TCP and Unix), start_tls, timeouts, extra info.

The certificate is self-signed and generated for the session with the openssl tool.
"""

import asyncio
import gc
import socket
import ssl
import struct
import threading
import time
import tracemalloc

import pytest
from net_support import (
    TIMEOUT,
    TLS,
    Capturing,
    Echo,
    Recorder,
    assert_bytes,
    loop_name,
    open_fds,
    payload,
    raw_tcp_pair,
    run,
    tcp_connection,
)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return TLS(str(tmp_path_factory.mktemp("tls")))


async def tls_connection(loop, tls, server_protocol=None, client_protocol=None, **client_kwargs):
    capture = Capturing(loop, server_protocol or (lambda: Recorder(loop)))
    server = await loop.create_server(capture, "127.0.0.1", 0, ssl=tls.server())
    port = server.sockets[0].getsockname()[1]
    client_kwargs.setdefault("server_hostname", "localhost")
    transport, protocol = await loop.create_connection(
        client_protocol or (lambda: Recorder(loop)),
        "127.0.0.1",
        port,
        ssl=client_kwargs.pop("ssl", None) or tls.client(),
        **client_kwargs,
    )
    peer = await capture.first()
    if isinstance(peer, Recorder):
        await peer.made
    return server, transport, protocol, peer


async def finish(server, *pairs):
    for transport, protocol in pairs:
        transport.close()
        await protocol.lost
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("size", [1, 64 * 1024, 4 * 1024 * 1024], ids=["1B", "64KiB", "4MiB"])
def test_tls_echo(loop, tls, size):
    data = payload(size)

    async def main():
        server, transport, protocol, _ = await tls_connection(loop, tls, Echo)
        transport.write(data)
        received = await protocol.received(size)
        await finish(server, (transport, protocol))
        return received, protocol

    received, protocol = run(loop, main())
    assert_bytes(received, data)
    assert protocol.events[:2] == ["made", "data"]
    assert protocol.events[-1] == "lost"
    assert protocol.lost.result() is None


def test_tls_server_hostname_defaults_to_the_host(loop, tls):
    async def main():
        server, transport, protocol, _ = await tls_connection(loop, tls, Echo, server_hostname=None)
        transport.write(b"ip address in the certificate")
        assert await protocol.received(29) == b"ip address in the certificate"
        await finish(server, (transport, protocol))

    run(loop, main())


def test_tls_extra_info(loop, tls):
    async def main():
        client_context = tls.client()
        server, transport, protocol, peer = await tls_connection(loop, tls, ssl=client_context)
        assert isinstance(transport, asyncio.Transport)
        assert transport.get_extra_info("sslcontext") is client_context
        ssl_object = transport.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        assert ssl_object.server_hostname == "localhost"
        peercert = transport.get_extra_info("peercert")
        assert ((("commonName", "localhost"),)) in peercert["subject"]
        cipher = transport.get_extra_info("cipher")
        assert cipher == ssl_object.cipher()
        assert isinstance(cipher[0], str)
        assert transport.get_extra_info("compression") == ssl_object.compression()
        assert isinstance(transport.get_extra_info("socket"), asyncio.trsock.TransportSocket)
        port = server.sockets[0].getsockname()[1]
        assert transport.get_extra_info("peername") == ("127.0.0.1", port)
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
        assert transport.can_write_eof() is False
        with pytest.raises(NotImplementedError):
            transport.write_eof()
        server_side = peer.transport
        assert isinstance(server_side.get_extra_info("ssl_object"), ssl.SSLObject)
        assert server_side.get_extra_info("peercert") is None  # no client certificate
        assert server_side.get_extra_info("cipher") == cipher
        await finish(server, (transport, protocol))

    run(loop, main())


def test_tls_close_reaches_both_sides(loop, tls):
    async def main():
        server, transport, protocol, peer = await tls_connection(loop, tls)
        transport.write(b"bye")
        await peer.received(3)
        transport.close()
        assert transport.is_closing()
        assert await protocol.lost is None
        await peer.lost
        server.close()
        await server.wait_closed()
        return peer

    peer = run(loop, main())
    assert peer.data == b"bye"
    assert peer.events[0] == "made" and peer.events[-1] == "lost"


def test_tls_unix(loop, tls, tmp_path):
    path = str(tmp_path / "tls.sock")

    async def main():
        server = await loop.create_unix_server(Echo, path, ssl=tls.server())
        transport, protocol = await loop.create_unix_connection(
            lambda: Recorder(loop), path, ssl=tls.client(), server_hostname="localhost"
        )
        assert isinstance(transport.get_extra_info("ssl_object"), ssl.SSLObject)
        transport.write(b"secret over unix")
        assert await protocol.received(16) == b"secret over unix"
        await finish(server, (transport, protocol))

    run(loop, main())


def test_untrusted_certificate_fails_the_handshake(loop, tls):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=tls.server())
        port = server.sockets[0].getsockname()[1]
        untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts no one
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", port, ssl=untrusting, server_hostname="localhost"
            )
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", port, ssl=tls.client(), server_hostname="other.test"
            )
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_start_tls_upgrades_a_plain_connection(loop, tls):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.write(b"STARTTLS\n")
        assert await peer.received(9) == b"STARTTLS\n"
        server_tls, client_tls = await asyncio.gather(
            loop.start_tls(peer.transport, peer, tls.server(), server_side=True),
            loop.start_tls(transport, protocol, tls.client(), server_hostname="localhost"),
        )
        assert isinstance(client_tls, asyncio.Transport)
        assert isinstance(client_tls.get_extra_info("ssl_object"), ssl.SSLObject)
        assert client_tls.get_extra_info("peercert") is not None
        assert client_tls.get_protocol() is protocol
        client_tls.write(b"now encrypted")
        assert await peer.received(9 + 13) == b"STARTTLS\nnow encrypted"
        server_tls.write(b"ok")
        assert await protocol.received(2) == b"ok"
        client_tls.close()
        await protocol.lost
        await peer.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_stream_start_tls(loop, tls):
    async def handler(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"go ahead\n")
        await writer.drain()
        await writer.start_tls(tls.server())
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"go ahead\n"
        await writer.start_tls(tls.client(), server_hostname="localhost")
        assert writer.get_extra_info("ssl_object") is not None
        writer.write(b"whisper\n")
        assert await reader.readline() == b"WHISPER\n"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_streams_over_tls(loop, tls):
    async def handler(reader, writer):
        writer.write(await reader.readexactly(1 << 20))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls.server())
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client(), server_hostname="localhost"
        )
        data = payload(1 << 20)
        writer.write(data)
        await writer.drain()
        assert_bytes(await reader.readexactly(len(data)), data)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_client_handshake_timeout(tls, assert_same_error):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]

        def action(lp):
            started = time.monotonic()
            try:
                lp.run_until_complete(
                    asyncio.wait_for(
                        lp.create_connection(
                            asyncio.Protocol,
                            "127.0.0.1",
                            port,
                            ssl=tls.client(),
                            server_hostname="localhost",
                            ssl_handshake_timeout=0.2,
                        ),
                        10,
                    )
                )
            finally:
                assert time.monotonic() - started < 5

        exc = assert_same_error(action)
    assert isinstance(exc, ConnectionAbortedError)


def test_server_handshake_timeout(loop, tls):
    async def main():
        capture = Capturing(loop, lambda: Recorder(loop))
        server = await loop.create_server(
            capture, "127.0.0.1", 0, ssl=tls.server(), ssl_handshake_timeout=0.2
        )
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))  # never starts the handshake
        client.settimeout(5)
        started = loop.time()

        def wait_for_close():
            try:
                return client.recv(100)
            except ConnectionResetError:
                return b""

        assert await loop.run_in_executor(None, wait_for_close) == b""
        elapsed = loop.time() - started
        client.close()
        server.close()
        await server.wait_closed()
        return elapsed, capture

    elapsed, capture = run(loop, main())
    assert 0.1 < elapsed < 4
    assert all(not p.made.done() for p in capture.protocols)


def test_shutdown_timeout_when_the_peer_never_answers(loop, tls):
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def mute_peer():
        conn, _ = listener.accept()
        conn.settimeout(10)
        with tls.server().wrap_socket(conn, server_side=True) as tls_conn:
            tls_conn.recv(5)  # completes the handshake, reads the greeting
            release.wait(10)  # then never reads the close_notify nor answers it

    thread = threading.Thread(target=mute_peer)
    thread.start()

    async def main():
        transport, protocol = await loop.create_connection(
            lambda: Recorder(loop),
            "127.0.0.1",
            listener.getsockname()[1],
            ssl=tls.client(),
            server_hostname="localhost",
            ssl_shutdown_timeout=0.3,
        )
        transport.write(b"hello")
        started = loop.time()
        transport.close()
        await protocol.lost
        return loop.time() - started

    try:
        elapsed = run(loop, main())
    finally:
        release.set()
        thread.join(10)
        listener.close()
    assert 0.2 < elapsed < 4


def test_ssl_argument_errors(assert_same_error, tls):
    def connect(**kwargs):
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 1)
        return lambda lp: lp.run_until_complete(lp.create_connection(asyncio.Protocol, **kwargs))

    with socket.socket() as sock:
        for action in [
            connect(server_hostname="localhost"),
            connect(ssl_handshake_timeout=1),
            connect(ssl_shutdown_timeout=1),
            connect(host=None, port=None, sock=sock, ssl=tls.client()),
            lambda lp: lp.run_until_complete(
                lp.create_server(Echo, "127.0.0.1", 0, ssl_shutdown_timeout=1)
            ),
            lambda lp: lp.run_until_complete(
                lp.create_unix_connection(asyncio.Protocol, "/nonexistent", ssl=tls.client())
            ),
        ]:
            assert isinstance(assert_same_error(action), ValueError)
    exc = assert_same_error(
        lambda lp: lp.run_until_complete(lp.create_server(Echo, "127.0.0.1", 0, ssl=True))
    )
    assert isinstance(exc, TypeError)


def test_start_tls_argument_errors(assert_same_error):
    def on_transport(lp, **kwargs):
        client, server_end = raw_tcp_pair()

        async def main():
            transport, protocol = await lp.create_connection(asyncio.Protocol, sock=client)
            try:
                await lp.start_tls(transport, protocol, **kwargs)
            finally:
                transport.close()
                await asyncio.sleep(0)

        try:
            lp.run_until_complete(main())
        finally:
            server_end.close()

    exc = assert_same_error(lambda lp: on_transport(lp, sslcontext="not a context"))
    assert isinstance(exc, TypeError)


def test_tls_close_flushes_pending_data(loop, tls):
    data = payload(4 * 1024 * 1024)

    async def main():
        server, transport, protocol, peer = await tls_connection(loop, tls)
        transport.write(data)
        transport.close()
        assert await protocol.lost is None
        received = await peer.received(len(data) + 1)
        await peer.lost
        server.close()
        await server.wait_closed()
        return received

    assert_bytes(run(loop, main()), data)


def test_tls_pause_and_resume_reading(loop, tls):
    async def main():
        server, transport, protocol, peer = await tls_connection(loop, tls)
        transport.pause_reading()
        assert transport.is_reading() is False
        peer.transport.write(b"held back")
        for _ in range(20):
            await asyncio.sleep(0.002)
        assert protocol.data == b""
        transport.resume_reading()
        assert transport.is_reading() is True
        assert await protocol.received(9) == b"held back"
        await finish(server, (transport, protocol))

    run(loop, main())


class BufferedSink(asyncio.BufferedProtocol):
    def __init__(self, loop, expected):
        self.buffer = bytearray(1000)
        self.data = bytearray()
        self.expected = expected
        self.done = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        # A memoryview: the stdlib's SSL layer fills the buffer through slices of it.
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes):
        self.data += self.buffer[:nbytes]
        if len(self.data) >= self.expected and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_tls_with_a_buffered_protocol(loop, tls):
    data = payload(512 * 1024)

    async def main():
        server, transport, protocol, _ = await tls_connection(
            loop, tls, Echo, lambda: BufferedSink(loop, len(data))
        )
        transport.write(data)
        await protocol.done
        await finish(server, (transport, protocol))
        return bytes(protocol.data)

    assert_bytes(run(loop, main()), data)


def test_connect_accepted_socket_with_tls(loop, tls):
    client, accepted = raw_tcp_pair()

    async def main():
        server_side = loop.create_task(
            loop.connect_accepted_socket(Echo, accepted, ssl=tls.server())
        )
        transport, protocol = await loop.create_connection(
            lambda: Recorder(loop), sock=client, ssl=tls.client(), server_hostname="localhost"
        )
        server_transport, _ = await server_side
        assert isinstance(server_transport.get_extra_info("ssl_object"), ssl.SSLObject)
        transport.write(b"accepted over tls")
        assert await protocol.received(17) == b"accepted over tls"
        transport.close()
        await protocol.lost

    run(loop, main())


# -- many connections at once ---------------------------------------------------------------


async def tls_echo_server(loop, tls):
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=tls.server())
    return server, server.sockets[0].getsockname()[1]


def test_concurrent_tls_connections_each_get_their_own_bytes(loop, tls):
    """Sixteen TLS echoes at once, each a different 300 KB: reads of many connections in
    one loop iteration (ferroloop receives them all into one buffer) never mix."""

    async def one(port, index):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client(), server_hostname="localhost"
        )
        data = bytes([index]) * 1000 + payload(300_000)
        writer.write(data)
        echoed = await reader.readexactly(len(data))
        writer.close()
        await writer.wait_closed()
        return echoed == data

    async def main():
        server, port = await tls_echo_server(loop, tls)
        results = await asyncio.gather(*(one(port, index) for index in range(16)))
        server.close()
        await server.wait_closed()
        return results

    assert run(loop, main(), timeout=60) == [True] * 16


def test_tls_connections_keep_no_read_buffer_of_their_own(loop, tls):
    """The stdlib's SSLProtocol keeps a zero-filled 256 KiB read buffer per connection;
    on ferroloop the loop's TLS connections share one (docs/architecture.md)."""
    if loop_name(loop) != "ferroloop":
        pytest.skip("the stdlib loop gives each TLS connection its own read buffer")
    connections = 8

    async def main():
        server, port = await tls_echo_server(loop, tls)
        opened = []

        async def one():
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls.client(), server_hostname="localhost"
            )
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            opened.append(writer)

        await one()  # the shared buffer itself, and what else a first connection makes
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await asyncio.gather(*(one() for _ in range(connections)))
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        for writer in opened:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return grown

    grown = run(loop, main())
    # Each connection has two ends, client and server, here: 2 * 8 * 256 KiB on the stdlib.
    assert grown < connections * 256 * 1024 / 2, grown


# -- churn with faults: nothing left behind ------------------------------------------------


async def tls_churn_round(loop, tls, port, pairs):
    """`pairs` connections of each kind against a TLS streams echo server on `port`: a clean
    echo and close; a handshake cut off by the client; a reset while the server is still
    sending; a client that leaves without close_notify."""

    async def clean():
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client(), server_hostname="localhost"
        )
        writer.write(b"c" * 3000)
        assert await reader.readexactly(3000) == b"c" * 3000
        writer.close()
        await writer.wait_closed()

    async def cut_handshake():
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")
        sock.close()

    async def reset_while_sending():
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client(), server_hostname="localhost"
        )
        writer.write(b"r" * 200_000)  # echoed back: more than the socket buffers hold
        await reader.readexactly(1000)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def no_close_notify():
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client(), server_hostname="localhost"
        )
        writer.write(b"n" * 100)
        await reader.readexactly(100)
        writer.transport.abort()

    kinds = [clean, cut_handshake, reset_while_sending, no_close_notify]
    await asyncio.gather(*(kind() for _ in range(pairs) for kind in kinds))


def test_tls_connections_churned_with_faults_leave_no_fd_or_protocol(loop, tls):
    """The incumbents' "TLS leaks under load": after rounds of clean, cut-off, reset and
    close_notify-less connections, the server holds no fd, SSL protocol or transport."""
    handlers = []

    async def echo(reader, writer):
        handlers.append(asyncio.current_task())
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def live_tls_objects():
        gc.collect()
        return [o for o in gc.get_objects() if isinstance(o, asyncio.sslproto.SSLProtocol)]

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=tls.server())
        port = server.sockets[0].getsockname()[1]
        await tls_churn_round(loop, tls, port, 2)  # warm-up: the loop's lazily made fds
        await asyncio.gather(*handlers)
        gc.collect()
        before = open_fds()
        for _ in range(3):
            await tls_churn_round(loop, tls, port, 10)
        await asyncio.wait_for(asyncio.gather(*handlers), TIMEOUT)
        for _ in range(3):  # let closes scheduled with call_soon run
            await asyncio.sleep(0)
        assert len(handlers) == 3 * (2 + 3 * 10)  # cut-off handshakes never reach `echo`
        assert open_fds() - before == set()
        assert live_tls_objects() == []
        server.close()
        await server.wait_closed()

    loop.set_exception_handler(lambda loop, context: None)  # the faults are logged otherwise
    run(loop, main(), timeout=60)
