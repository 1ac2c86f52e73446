"""The low-level socket API (loop.sock_*), on ferroloop and on the stdlib loop.

Echo through socket pairs and TCP/UDP/Unix sockets on loopback with every sock_* call, large
transfers against a slow reader, cancellation of every call (nothing lost, no watcher left
behind, no callback firing into a finished future), the argument checks and their errors.
"""

import asyncio
import io
import os
import socket
import ssl
import sys

import pytest

TIMEOUT = 10.0
MIB = 1 << 20

# Abstract Unix socket names, the listen backlog and reset timing as Linux has them.
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="Linux socket behaviour")


def run(loop, coro, timeout=TIMEOUT):
    """Run `coro` on `loop`; a hang fails the test after `timeout` seconds."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def is_ferroloop(loop):
    return not type(loop).__module__.startswith("asyncio")


def pattern(size):
    """`size` bytes that differ from one offset to the next (to catch reordering)."""
    block = bytes(range(251)) * (size // 251 + 1)
    return block[:size]


def nonblocking(*socks):
    for sock in socks:
        sock.setblocking(False)
    return socks


@pytest.fixture
def errors(loop):
    """What reaches the loop's exception handler (a sock_* call must report nothing)."""
    reported = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    yield reported
    assert reported == []


@pytest.fixture
def pair():
    """A connected non-blocking Unix stream socket pair."""
    a, b = nonblocking(*socket.socketpair())
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def listener():
    """A non-blocking TCP listener on 127.0.0.1."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
def tcp_pair(listener):
    """A connected non-blocking TCP pair on loopback: (client end, server end)."""
    client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
    listener.setblocking(True)
    server, _ = listener.accept()
    nonblocking(client, server)
    yield client, server
    client.close()
    server.close()


@pytest.fixture
def udp_pair():
    """Two non-blocking UDP sockets bound on 127.0.0.1."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (a, b):
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    yield a, b
    a.close()
    b.close()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fill_send_buffer(sock):
    """Send until `sock` would block; return what was sent."""
    sent = 0
    chunk = b"\0" * 65536
    while True:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            return sent


def drain(sock):
    """Everything readable from the non-blocking `sock` right now."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(MIB)
        except BlockingIOError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


async def iterations(count=5):
    for _ in range(count):
        await asyncio.sleep(0)


# ---- echo ---------------------------------------------------------------------------


def test_echo_socketpair(loop, pair, errors):
    a, b = pair

    async def main():
        # Nothing to read yet: both sides wait for readiness.
        reply = asyncio.ensure_future(loop.sock_recv(a, 100))
        request = asyncio.ensure_future(loop.sock_recv(b, 100))
        await iterations()
        assert not request.done()
        await loop.sock_sendall(a, b"ping")
        assert await request == b"ping"
        await loop.sock_sendall(b, b"pong")
        assert await reply == b"pong"

        buf = bytearray(10)
        into = asyncio.ensure_future(loop.sock_recv_into(b, buf))
        await iterations()
        await loop.sock_sendall(a, memoryview(b"hello"))
        assert await into == 5
        assert buf[:5] == b"hello"

        # Data already there: the fast path, which never waits.
        await loop.sock_sendall(a, bytearray(b"abc"))
        assert await loop.sock_recv(b, 2) == b"ab"
        assert await loop.sock_recv_into(b, buf) == 1
        assert buf[:1] == b"c"

        await _echo_roundtrips(loop, a, b)

    run(loop, main())
    for sock in pair:
        assert not loop.remove_reader(sock)
        assert not loop.remove_writer(sock)


async def _echo_roundtrips(loop, client, server, count=200):
    async def echo():
        while True:
            data = await loop.sock_recv(server, 65536)
            if not data:
                server.shutdown(socket.SHUT_WR)
                return
            await loop.sock_sendall(server, data)

    task = asyncio.ensure_future(echo())
    buf = bytearray(65536)
    for i in range(count):
        message = b"message %d " % i * (i % 7 + 1)
        await loop.sock_sendall(client, message)
        received = b""
        while len(received) < len(message):
            if i % 2:
                received += await loop.sock_recv(client, 65536)
            else:
                n = await loop.sock_recv_into(client, buf)
                received += buf[:n]
        assert received == message
    client.shutdown(socket.SHUT_WR)
    await task
    assert await loop.sock_recv(client, 10) == b""


def test_echo_tcp_with_accept_and_connect(loop, listener, errors):
    async def main():
        # The accept waits: nobody has connected yet.
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        await iterations()
        assert not accepting.done()
        client = socket.socket()
        client.setblocking(False)
        with client:
            await loop.sock_connect(client, listener.getsockname())
            server, address = await accepting
            with server:
                assert server.gettimeout() == 0
                assert address == client.getsockname()
                await _echo_roundtrips(loop, client, server)
            assert not loop.remove_writer(client)
            assert not loop.remove_reader(listener)

    run(loop, main())


def test_sock_accept_ready_connection(loop, listener, errors):
    client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
    with client:
        conn, address = run(loop, loop.sock_accept(listener))
        with conn:
            assert conn.gettimeout() == 0
            assert address == client.getsockname()
            assert client.getpeername() == listener.getsockname()


def test_echo_unix_stream_path(loop, tmp_path, errors):
    path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        listener.setblocking(False)

        async def main():
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            with client:
                await loop.sock_connect(client, path)
                server, _ = await loop.sock_accept(listener)
                with server:
                    await _echo_roundtrips(loop, client, server, count=50)

        run(loop, main())


def test_udp_sendto_recvfrom(loop, udp_pair, errors):
    a, b = udp_pair

    async def main():
        # recvfrom before anything was sent: it waits.
        receiving = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
        await iterations()
        assert not receiving.done()
        assert await loop.sock_sendto(a, b"first", b.getsockname()) == 5
        assert await receiving == (b"first", a.getsockname())

        buf = bytearray(100)
        into = asyncio.ensure_future(loop.sock_recvfrom_into(a, buf))
        await iterations()
        assert await loop.sock_sendto(b, b"second", a.getsockname()) == 6
        assert await into == (6, b.getsockname())
        assert buf[:6] == b"second"

        # nbytes caps the datagram (the rest of it is discarded, as recvfrom does).
        await loop.sock_sendto(a, b"0123456789", b.getsockname())
        await iterations(1)
        assert await loop.sock_recvfrom_into(b, buf, 4) == (4, a.getsockname())
        assert buf[:4] == b"0123"

        await loop.sock_sendto(a, b"x" * 50, b.getsockname())
        await iterations(1)
        assert await loop.sock_recvfrom(b, 10) == (b"x" * 10, a.getsockname())

    run(loop, main())
    for sock in udp_pair:
        assert not loop.remove_reader(sock)
        assert not loop.remove_writer(sock)


# ---- large transfers ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_sendall_16mib_to_slow_reader(loop, kind, request, errors):
    if kind == "tcp":
        client, server = request.getfixturevalue("tcp_pair")
    else:
        client, server = request.getfixturevalue("pair")
    data = pattern(16 * MIB)

    async def slow_reader():
        received = bytearray()
        reads = 0
        while True:
            chunk = await loop.sock_recv(server, 256 * 1024)
            if not chunk:
                return bytes(received)
            received += chunk
            reads += 1
            if reads % 8 == 0:
                await asyncio.sleep(0.001)

    async def main():
        reader = asyncio.ensure_future(slow_reader())
        await loop.sock_sendall(client, data)
        assert not loop.remove_writer(client)
        client.shutdown(socket.SHUT_WR)
        return await reader

    received = run(loop, main())
    assert len(received) == len(data)
    assert received == data


def test_recv_into_large(loop, tcp_pair, errors):
    client, server = tcp_pair
    data = pattern(4 * MIB)

    async def main():
        sender = asyncio.ensure_future(loop.sock_sendall(client, data))
        buf = bytearray(len(data))
        view = memoryview(buf)
        got = 0
        while got < len(data):
            got += await loop.sock_recv_into(server, view[got:])
        await sender
        return buf

    assert run(loop, main()) == data


# ---- cancellation -------------------------------------------------------------------


def test_cancelled_sock_recv_loses_nothing(loop, pair, errors):
    a, b = pair

    async def main():
        waiting = asyncio.ensure_future(loop.sock_recv(b, 100))
        await iterations()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await iterations()
        # Data arriving after the cancel must not wake anything of the cancelled call.
        a.send(b"after the cancel")
        await iterations()
        assert await loop.sock_recv(b, 100) == b"after the cancel"

    run(loop, main())
    assert not loop.remove_reader(b)


@pytest.mark.parametrize("call", ["sock_recv", "sock_recv_into"])
def test_cancel_after_readiness(loop, pair, call, errors):
    """The cancel lands after the socket turned readable, before the call resumed.

    ferroloop waits for readiness and reads only in the resumed call, so the data stays in
    the socket; the stdlib loop reads in its reader callback, so the cancel drops the data
    it had read. Either way nothing is left watching the fd.
    """
    a, b = pair
    buf = bytearray(100)

    async def main():
        if call == "sock_recv":
            waiting = asyncio.ensure_future(loop.sock_recv(b, 100))
        else:
            waiting = asyncio.ensure_future(loop.sock_recv_into(b, buf))
        await iterations()

        def readable_then_cancel():
            a.send(b"data")
            # Due timers run after the I/O callbacks of the next iteration.
            loop.call_later(0, waiting.cancel)

        loop.call_soon(readable_then_cancel)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await iterations()
        return drain(b)

    left = run(loop, main())
    assert left == (b"data" if is_ferroloop(loop) else b"")
    assert not loop.remove_reader(b)


def test_cancelled_sock_recv_into_leaves_buffer(loop, pair, errors):
    a, b = pair
    buf = bytearray(b"untouched")

    async def main():
        waiting = asyncio.ensure_future(loop.sock_recv_into(b, buf))
        await iterations()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        a.send(b"new")
        await iterations()
        assert buf == b"untouched"
        assert await loop.sock_recv_into(b, buf) == 3

    run(loop, main())
    assert buf == b"newouched"
    assert not loop.remove_reader(b)


def test_two_concurrent_recvs_like_the_stdlib(loop, pair, errors):
    """One fd has one reader: the second waiting call takes it over, the first waits until
    cancelled (as on the stdlib loop); cancelling it then leaves the second's reader alone."""
    a, b = pair

    async def main():
        first = asyncio.ensure_future(loop.sock_recv(b, 100))
        await iterations()
        second = asyncio.ensure_future(loop.sock_recv(b, 100))
        await iterations()
        a.send(b"one")
        assert await second == b"one"
        await iterations()
        assert not first.done()

        third = asyncio.ensure_future(loop.sock_recv(b, 100))
        await iterations()
        # first no longer owns the reader: cancelling it must not remove third's.
        first.cancel()
        await iterations()
        a.send(b"two")
        assert await third == b"two"

    run(loop, main())
    assert not loop.remove_reader(b)


def test_cancelled_sock_sendall_sends_a_prefix_then_nothing(loop, tcp_pair, errors):
    client, server = tcp_pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    data = pattern(8 * MIB)

    async def main():
        sending = asyncio.ensure_future(loop.sock_sendall(client, data))
        await asyncio.sleep(0.05)  # the buffers fill; the call waits for writability
        assert not sending.done()
        # Let the reader take some: the call resumes sending, then is cancelled.
        received = bytearray(drain(server))
        await asyncio.sleep(0.01)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        assert not loop.remove_writer(client)
        # Whatever follows on the stream comes straight after what the cancelled call sent.
        await iterations()
        tail = b"<end>"
        finishing = asyncio.ensure_future(loop.sock_sendall(client, tail))
        while not received.endswith(tail):
            chunk = await loop.sock_recv(server, MIB)
            assert chunk
            received += chunk
        await finishing
        return bytes(received)

    received = run(loop, main())
    sent = len(received) - len(b"<end>")
    assert 0 < sent < len(data)
    assert received[:sent] == data[:sent]


@linux_only
def test_cancelled_sock_sendto_sends_nothing(loop, errors):
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.bind(b"\0ferroloop-test-sendto-%d-%d" % (os.getpid(), id(loop)))
        a.connect(b.getsockname())  # so that a polls writable only when b has room
        nonblocking(a, b)
        queued = 0
        with pytest.raises(BlockingIOError):
            while True:
                a.sendto(b"fill", b.getsockname())
                queued += 1

        async def main():
            sending = asyncio.ensure_future(loop.sock_sendto(a, b"cancelled", b.getsockname()))
            await iterations()
            assert not sending.done()
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            assert not loop.remove_writer(a)
            datagrams = []
            while True:
                try:
                    datagrams.append(b.recv(100))
                except BlockingIOError:
                    break
            await iterations()
            assert not loop.remove_writer(a)
            # Room again: a new sock_sendto goes through.
            assert await loop.sock_sendto(a, b"after", b.getsockname()) == 5
            datagrams.append(await loop.sock_recv(b, 100))
            return datagrams

        datagrams = run(loop, main())
        assert datagrams == [b"fill"] * queued + [b"after"]


def test_cancelled_sock_recvfrom_loses_nothing(loop, udp_pair, errors):
    a, b = udp_pair
    buf = bytearray(100)

    async def main():
        for call in (
            lambda: loop.sock_recvfrom(b, 100),
            lambda: loop.sock_recvfrom_into(b, buf),
        ):
            waiting = asyncio.ensure_future(call())
            await iterations()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert not loop.remove_reader(b)
        await loop.sock_sendto(a, b"datagram", b.getsockname())
        await iterations()
        assert await loop.sock_recvfrom(b, 100) == (b"datagram", a.getsockname())

    run(loop, main())


def test_cancelled_sock_accept_leaves_the_connection(loop, listener, errors):
    async def main():
        waiting = asyncio.ensure_future(loop.sock_accept(listener))
        await iterations()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not loop.remove_reader(listener)
        with socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as client:
            await iterations()
            conn, address = await loop.sock_accept(listener)
            with conn:
                assert address == client.getsockname()

    run(loop, main())
    assert not loop.remove_reader(listener)


@linux_only
def test_cancelled_sock_connect(loop, errors):
    # A backlog-0 listener that nobody accepts from takes one connection; the next
    # connect stays in progress (its SYNs are dropped) until cancelled.
    with socket.socket() as listener, socket.socket() as first, socket.socket() as second:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        nonblocking(first, second)

        async def main():
            await loop.sock_connect(first, listener.getsockname())
            connecting = asyncio.ensure_future(loop.sock_connect(second, listener.getsockname()))
            await asyncio.sleep(0.05)
            assert not connecting.done()
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
            assert not loop.remove_writer(second)

        run(loop, main())


def test_cancelled_sock_sendfile(loop, tcp_pair, tmp_path, errors):
    client, server = tcp_pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    data = pattern(8 * MIB)
    path = tmp_path / "big"
    path.write_bytes(data)

    async def main():
        with open(path, "rb") as file:
            sending = asyncio.ensure_future(loop.sock_sendfile(client, file))
            await asyncio.sleep(0.05)
            assert not sending.done()
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            assert not loop.remove_writer(client)
        client.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := await loop.sock_recv(server, MIB):
            received += chunk
        return bytes(received)

    received = run(loop, main())
    assert 0 < len(received) < len(data)
    assert received == data[: len(received)]


# ---- connecting ---------------------------------------------------------------------


def test_sock_connect_refused(loop, errors):
    port = free_port()

    async def main():
        with socket.socket() as sock:
            sock.setblocking(False)
            with pytest.raises(ConnectionRefusedError):
                await loop.sock_connect(sock, ("127.0.0.1", port))
            assert not loop.remove_writer(sock)

    run(loop, main())


def test_sock_connect_resolves_localhost(loop, listener, errors):
    async def main():
        with socket.socket(socket.AF_INET) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("localhost", listener.getsockname()[1]))
            assert sock.getpeername() == listener.getsockname()
            conn, _ = await loop.sock_accept(listener)
            conn.close()

    run(loop, main())


def test_sock_connect_service_name_port(loop, errors):
    """A non-numeric port goes through getaddrinfo too (and fails like the stdlib's)."""

    async def main():
        with socket.socket(socket.AF_INET) as sock:
            sock.setblocking(False)
            with pytest.raises(OSError):
                await loop.sock_connect(sock, ("127.0.0.1", "no-such-service-name"))

    run(loop, main())


def ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_sock_connect_ipv6_two_tuple(loop, errors):
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as listener:
        listener.setblocking(False)

        async def main():
            with socket.socket(socket.AF_INET6) as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, ("::1", listener.getsockname()[1]))
                assert sock.getpeername()[:2] == listener.getsockname()[:2]
                conn, _ = await loop.sock_accept(listener)
                conn.close()

        run(loop, main())


# ---- argument checks ----------------------------------------------------------------


def all_calls(loop, sock, tmp_path):
    """Every sock_* call on `sock`, as coroutine factories."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    return {
        "sock_recv": lambda: loop.sock_recv(sock, 1),
        "sock_recv_into": lambda: loop.sock_recv_into(sock, bytearray(1)),
        "sock_recvfrom": lambda: loop.sock_recvfrom(sock, 1),
        "sock_recvfrom_into": lambda: loop.sock_recvfrom_into(sock, bytearray(1)),
        "sock_sendall": lambda: loop.sock_sendall(sock, b"x"),
        "sock_sendto": lambda: loop.sock_sendto(sock, b"x", ("127.0.0.1", 9)),
        "sock_connect": lambda: loop.sock_connect(sock, ("127.0.0.1", 9)),
        "sock_accept": lambda: loop.sock_accept(sock),
        "sock_sendfile": lambda: _sendfile_from(loop, sock, path),
    }


async def _sendfile_from(loop, sock, path):
    with open(path, "rb") as file:
        return await loop.sock_sendfile(sock, file)


CALLS = [
    "sock_recv",
    "sock_recv_into",
    "sock_recvfrom",
    "sock_recvfrom_into",
    "sock_sendall",
    "sock_sendto",
    "sock_connect",
    "sock_accept",
    "sock_sendfile",
]


@pytest.mark.parametrize("call", CALLS)
def test_blocking_socket_rejected_in_debug_mode(loop, call, tmp_path):
    loop.set_debug(True)
    with socket.socket() as sock:
        sock.settimeout(1.0)
        coro = all_calls(loop, sock, tmp_path)[call]()
        with pytest.raises(ValueError, match="^the socket must be non-blocking$"):
            run(loop, coro)


@pytest.mark.parametrize("call", CALLS)
def test_ssl_socket_rejected(loop, call, tmp_path):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with context.wrap_socket(
        socket.socket(), server_hostname="localhost", do_handshake_on_connect=False
    ) as sock:
        sock.setblocking(False)
        coro = all_calls(loop, sock, tmp_path)[call]()
        with pytest.raises(TypeError, match="^Socket cannot be of type SSLSocket$"):
            run(loop, coro)


def test_fd_owned_by_a_transport_refused(loop, tcp_pair):
    client, server = tcp_pair

    async def main():
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server)
        try:
            # Ready data takes the fast path, as on the stdlib loop; waiting is refused.
            with pytest.raises(RuntimeError, match="is used by transport"):
                await loop.sock_recv(server, 10)
            fill_send_buffer(server)
            with pytest.raises(RuntimeError, match="is used by transport"):
                await loop.sock_sendall(server, b"x")
        finally:
            transport.close()
            await iterations()

    run(loop, main())


# ---- sendfile -----------------------------------------------------------------------


@pytest.fixture
def data_file(tmp_path):
    data = pattern(3 * MIB + 123)
    path = tmp_path / "data"
    path.write_bytes(data)
    return path, data


async def _read_to_eof(loop, sock):
    received = bytearray()
    while chunk := await loop.sock_recv(sock, MIB):
        received += chunk
    return bytes(received)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_sock_sendfile_whole_file(loop, kind, data_file, request, errors):
    client, server = request.getfixturevalue("tcp_pair" if kind == "tcp" else "pair")
    path, data = data_file

    async def main():
        reader = asyncio.ensure_future(_read_to_eof(loop, server))
        with open(path, "rb") as file:
            sent = await loop.sock_sendfile(client, file)
            assert file.tell() == len(data)
        client.shutdown(socket.SHUT_WR)
        return sent, await reader

    sent, received = run(loop, main())
    assert sent == len(data)
    assert received == data
    assert not loop.remove_writer(client)


def test_sock_sendfile_offset_and_count(loop, tcp_pair, data_file, errors):
    client, server = tcp_pair
    path, data = data_file

    async def main():
        reader = asyncio.ensure_future(_read_to_eof(loop, server))
        with open(path, "rb") as file:
            sent = await loop.sock_sendfile(client, file, 1000, 2 * MIB)
            assert file.tell() == 1000 + 2 * MIB
        client.shutdown(socket.SHUT_WR)
        return sent, await reader

    sent, received = run(loop, main())
    assert sent == 2 * MIB
    assert received == data[1000 : 1000 + 2 * MIB]


def test_sock_sendfile_empty_file(loop, tcp_pair, tmp_path, errors):
    client, _ = tcp_pair
    path = tmp_path / "empty"
    path.write_bytes(b"")

    async def main():
        with open(path, "rb") as file:
            return await loop.sock_sendfile(client, file)

    assert run(loop, main()) == 0


@pytest.mark.parametrize("count", [None, 5000])
def test_sock_sendfile_fallback(loop, tcp_pair, count, errors):
    """A file object without a file descriptor: read and sent with sock_sendall."""
    client, server = tcp_pair
    data = pattern(MIB + 7)
    file = io.BytesIO(data)

    async def main():
        reader = asyncio.ensure_future(_read_to_eof(loop, server))
        sent = await loop.sock_sendfile(client, file, 10, count)
        client.shutdown(socket.SHUT_WR)
        return sent, await reader

    sent, received = run(loop, main())
    expected = data[10 : 10 + count] if count else data[10:]
    assert sent == len(expected)
    assert received == expected
    assert file.tell() == 10 + sent


def test_sock_sendfile_no_fallback(loop, tcp_pair):
    client, _ = tcp_pair
    with pytest.raises(asyncio.SendfileNotAvailableError, match="not a regular file"):
        run(loop, loop.sock_sendfile(client, io.BytesIO(b"data"), fallback=False))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"count": 0}, ValueError, "count must be a positive integer (got 0)"),
        ({"count": -1}, ValueError, "count must be a positive integer (got -1)"),
        ({"count": "1"}, TypeError, "count must be a positive integer (got '1')"),
        ({"offset": -1}, ValueError, "offset must be a non-negative integer (got -1)"),
        ({"offset": 1.5}, TypeError, "offset must be a non-negative integer (got 1.5)"),
    ],
)
def test_sock_sendfile_bad_params(loop, tcp_pair, data_file, kwargs, error, message):
    client, _ = tcp_pair
    path, _ = data_file
    with open(path, "rb") as file:
        with pytest.raises(error) as info:
            run(loop, loop.sock_sendfile(client, file, **kwargs))
    assert str(info.value) == message


def test_sock_sendfile_text_file(loop, tcp_pair, data_file):
    client, _ = tcp_pair
    path, _ = data_file
    with open(path, encoding="latin-1") as file:
        with pytest.raises(ValueError, match="^file should be opened in binary mode$"):
            run(loop, loop.sock_sendfile(client, file))


def test_sock_sendfile_datagram_socket(loop, udp_pair, data_file):
    sock, _ = udp_pair
    path, _ = data_file
    with open(path, "rb") as file:
        with pytest.raises(ValueError, match="^only SOCK_STREAM type sockets are supported$"):
            run(loop, loop.sock_sendfile(sock, file))


@linux_only
def test_sock_sendfile_peer_gone(loop, tcp_pair, tmp_path):
    client, server = tcp_pair
    path = tmp_path / "big"
    path.write_bytes(pattern(32 * MIB))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    async def main():
        with open(path, "rb") as file:
            sending = asyncio.ensure_future(loop.sock_sendfile(client, file))
            await asyncio.sleep(0.05)
            server.close()  # a reset mid-way
            with pytest.raises(ConnectionError):
                await sending

    run(loop, main())
    assert not loop.remove_writer(client)


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost:80"])
def test_sock_connect_to_a_str_address_is_a_type_error(loop, address):
    # A str is not unpacked into a host, a port and more; the stdlib's message names its
    # own helper function, so only the type is compared.
    async def main():
        with socket.socket() as sock:
            sock.setblocking(False)
            with pytest.raises(TypeError):
                await loop.sock_connect(sock, address)

    run(loop, main())
