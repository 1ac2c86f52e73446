"""The low-level socket API: loop.sock_* operations, their checks and their cancellation."""

import array
import asyncio
import errno
import socket
import ssl

import pytest
from net_support import (
    assert_bytes,
    ipv6_loopback_available,
    loop_script,
    payload,
    raw_tcp_pair,
    run,
    run_script,
)


@pytest.fixture
def tcp_pair():
    """Connected non-blocking TCP sockets with small kernel buffers (so writes block soon)."""
    a, b = raw_tcp_pair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        s.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def listener():
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def iterations(count=5):
    for _ in range(count):
        await asyncio.sleep(0)


async def cancelled(loop, coro):
    """Start `coro` as a task, let it block, cancel it and check it ended cancelled."""
    task = loop.create_task(coro)
    await iterations()
    assert not task.done(), "the operation should be waiting"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def drain_until_quiet(loop, sock, quiet=0.05):
    """Everything `sock` receives until nothing more arrives for `quiet` seconds."""
    received = bytearray()
    while True:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), quiet)
        except TimeoutError:
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk


def test_sock_recv_and_sendall_echo(loop, tcp_pair):
    a, b = tcp_pair
    data = payload(8 * 1024 * 1024)

    async def main():
        sender = loop.create_task(loop.sock_sendall(a, data))
        received = bytearray()
        while len(received) < len(data):
            received += await loop.sock_recv(b, 65536)
        assert await sender is None
        a.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(b, 10) == b""  # EOF
        return bytes(received)

    assert_bytes(run(loop, main()), data)


def test_sock_recv_into(loop, tcp_pair):
    a, b = tcp_pair

    async def main():
        buf = bytearray(10)
        reader = loop.create_task(loop.sock_recv_into(b, buf))
        await iterations()
        await loop.sock_sendall(a, b"abc")
        assert await reader == 3
        assert buf[:3] == b"abc"
        view = memoryview(buf)[5:]
        await loop.sock_sendall(a, b"0123456789")
        assert await loop.sock_recv_into(b, view) == 5
        assert buf == b"abc\0\x0001234"

    run(loop, main())


def writable_buffer(kind):
    """A zeroed writable buffer of the kind named (over 24 bytes of storage)."""
    backing = bytearray(24)
    return {
        "bytearray": backing,
        "slice of a bytearray": memoryview(backing)[4:20],
        "array of ints": array.array("i", bytes(24)),
    }[kind]


@pytest.mark.parametrize("kind", ["bytearray", "slice of a bytearray", "array of ints"])
def test_sock_recv_into_every_writable_buffer_kind(loop, tcp_pair, kind):
    """What ``sock_recv_into`` writes and returns (a count of bytes, whatever the item size),
    data already there and data that comes while it waits."""
    a, b = tcp_pair
    target = writable_buffer(kind)
    size = memoryview(target).nbytes

    async def main():
        a.send(bytes(range(1, size + 1)))
        first = await loop.sock_recv_into(b, target)
        got_first = bytes(memoryview(target).cast("B"))[:first]
        waiting = loop.create_task(loop.sock_recv_into(b, target))
        await iterations()
        a.send(b"later")
        second = await waiting
        return first, got_first, second, bytes(memoryview(target).cast("B"))[:second]

    first, got_first, second, got_second = run(loop, main())
    assert (first, got_first) == (size, bytes(range(1, size + 1)))
    assert (second, got_second) == (5, b"later")


@pytest.mark.parametrize(
    ("kind", "nbytes"),
    [("bytearray", 0), ("bytearray", 5), ("slice of a bytearray", 0), ("array of ints", 0)],
)
def test_sock_recvfrom_into_every_writable_buffer_kind(loop, udp_pair, kind, nbytes):
    """What ``sock_recvfrom_into`` writes and returns, with ``nbytes`` given or not (then
    ``len(buf)``, an item count, as on the stdlib loop); a datagram already there and one
    that comes while it waits."""
    a, b = udp_pair
    target = writable_buffer(kind)
    limit = nbytes or len(target)

    async def main():
        a.sendto(bytes(range(1, 40)), b.getsockname())
        first = await loop.sock_recvfrom_into(b, target, nbytes)
        got_first = bytes(memoryview(target).cast("B"))[: first[0]]
        waiting = loop.create_task(loop.sock_recvfrom_into(b, target, nbytes))
        await iterations()
        a.sendto(b"late", b.getsockname())
        second = await waiting
        return first, got_first, second, bytes(memoryview(target).cast("B"))[: second[0]]

    first, got_first, second, got_second = run(loop, main())
    assert first == (limit, a.getsockname())
    assert got_first == bytes(range(1, limit + 1))
    assert second == (min(4, limit), a.getsockname())
    assert got_second == b"late"[:limit]


def test_sock_sendto_recvfrom_and_recvfrom_into(loop, udp_pair):
    a, b = udp_pair

    async def main():
        receiver = loop.create_task(loop.sock_recvfrom(b, 100))
        await iterations()
        sent = await loop.sock_sendto(a, b"datagram", b.getsockname())
        assert sent == 8
        assert await receiver == (b"datagram", a.getsockname())
        buf = bytearray(16)
        await loop.sock_sendto(a, b"0123456789", b.getsockname())
        assert await loop.sock_recvfrom_into(b, buf, 4) == (4, a.getsockname())
        assert buf[:4] == b"0123"
        await loop.sock_sendto(a, b"second", b.getsockname())
        assert await loop.sock_recvfrom_into(b, buf) == (6, a.getsockname())
        assert buf[:6] == b"second"

    run(loop, main())


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "array of ints"])
def test_sock_sendto_and_recvfrom_of_every_buffer_kind(loop, udp_pair, kind):
    """What arrives, what ``sock_sendto`` returns and the sender's address, for each kind of
    data; a ``bufsize`` below the datagram's length cuts it, as ``recvfrom`` does."""
    a, b = udp_pair
    raw = bytes(range(48))
    data = {
        "bytes": raw,
        "bytearray": bytearray(raw),
        "memoryview": memoryview(raw),
        "array of ints": array.array("i", range(12)),
    }[kind]
    expected = bytes(memoryview(data).cast("B"))

    async def main():
        sent = await loop.sock_sendto(a, data, b.getsockname())
        whole = await loop.sock_recvfrom(b, 1024)
        await loop.sock_sendto(a, data, b.getsockname())
        cut = await loop.sock_recvfrom(b, 5)
        return sent, whole, cut

    sent, whole, cut = run(loop, main())
    assert sent == len(expected)
    assert whole == (expected, a.getsockname())
    assert cut == (expected[:5], a.getsockname())


@pytest.mark.parametrize(
    "call",
    [
        ("recvfrom", -1),
        ("sendto", b"x", ["127.0.0.1", 9]),
        ("sendto", b"x", ("127.0.0.1", 70000)),
        ("sendto", "text", ("127.0.0.1", 9)),
        ("sendto", memoryview(b"abcd")[::2], ("127.0.0.1", 9)),
        ("recvfrom_into", bytearray(4), 8),
        ("recvfrom_into", bytearray(4), -1),
        ("recvfrom_into", b"read-only", 0),
        ("sendto", b"x", ("not an address at all", 9)),
    ],
)
def test_sock_sendto_and_recvfrom_bad_arguments_raise_as_the_stdlib_does(assert_same_error, call):
    def action(lp):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            method, *args = call
            lp.run_until_complete(getattr(lp, "sock_" + method)(sock, *args))

    assert_same_error(action)


def test_sock_connect_and_accept(loop, listener):
    async def main():
        acceptor = loop.create_task(loop.sock_accept(listener))
        await iterations()
        client = socket.socket()
        client.setblocking(False)
        assert await loop.sock_connect(client, listener.getsockname()) is None
        conn, address = await acceptor
        assert address == client.getsockname()
        assert conn.gettimeout() == 0  # accepted sockets are non-blocking
        await loop.sock_sendall(client, b"hello")
        assert await loop.sock_recv(conn, 5) == b"hello"
        conn.close()
        client.close()

    run(loop, main())


class AcceptingSocket(socket.socket):
    """A listener subclass: its own accept() is the one to call."""

    accepted = 0

    def accept(self):
        AcceptingSocket.accepted += 1
        return super().accept()


@pytest.mark.parametrize("kind", ["tcp", "tcp6", "unix", "subclass", "with a timeout"])
def test_sock_accept_of_every_listener_kind(loop, tmp_path, kind):
    """The accepted socket is non-blocking and its address is the client's own name, for
    each kind of listener; a connection queued before the call and one that comes while it
    waits."""
    if kind == "tcp6" and not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback")
    family = {"tcp6": socket.AF_INET6, "unix": socket.AF_UNIX}.get(kind, socket.AF_INET)
    make = AcceptingSocket if kind == "subclass" else socket.socket
    listener = make(family, socket.SOCK_STREAM)
    address = {
        socket.AF_INET: ("127.0.0.1", 0),
        socket.AF_INET6: ("::1", 0),
        socket.AF_UNIX: str(tmp_path / "l.sock"),
    }[family]
    listener.bind(address)
    listener.listen()
    if kind == "with a timeout":
        listener.settimeout(5.0)  # no debug mode: the loop accepts what is there
    else:
        listener.setblocking(False)
    AcceptingSocket.accepted = 0

    async def main():
        results = []
        # A listener with a timeout blocks in accept() on the stdlib loop: only a
        # connection already queued is for it.
        for waits in (False,) if kind == "with a timeout" else (False, True):
            client = socket.socket(family, socket.SOCK_STREAM)
            if not waits:
                client.connect(listener.getsockname())
                conn, peer = await loop.sock_accept(listener)
            else:
                accepting = loop.create_task(loop.sock_accept(listener))
                await iterations()
                client.connect(listener.getsockname())
                conn, peer = await accepting
            client.sendall(b"hi")
            results.append((peer, client.getsockname(), conn.gettimeout(), conn.recv(2)))
            conn.close()
            client.close()
        return results

    with listener:
        results = run(loop, main())
    for peer, client_name, timeout, data in results:
        assert peer == client_name
        assert timeout == 0
        assert data == b"hi"
    if kind == "subclass":
        assert AcceptingSocket.accepted >= 2


def test_sock_connect_resolves_names(loop, listener):
    async def main():
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, ("localhost", listener.getsockname()[1]))
        assert client.getpeername() == listener.getsockname()
        client.close()

    run(loop, main())


def test_sock_connect_unix(loop, tmp_path):
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        server.setblocking(False)

        async def main():
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            await loop.sock_connect(client, path)
            conn, _ = await loop.sock_accept(server)
            await loop.sock_sendall(conn, b"unix")
            assert await loop.sock_recv(client, 4) == b"unix"
            conn.close()
            client.close()

        run(loop, main())


def test_sock_connect_refused(assert_same_error):
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, not listening

        def action(lp):
            with socket.socket() as client:
                client.setblocking(False)
                lp.run_until_complete(lp.sock_connect(client, reserved.getsockname()))

        exc = assert_same_error(action)
    assert isinstance(exc, ConnectionRefusedError)


@pytest.mark.parametrize("port", [-1, 65536, 1 << 40])
def test_sock_connect_to_a_port_out_of_range_raises_as_the_stdlib_does(assert_same_error, port):
    def action(lp):
        with socket.socket() as client:
            client.setblocking(False)
            lp.run_until_complete(lp.sock_connect(client, ("127.0.0.1", port)))

    assert_same_error(action)


def test_sock_connect_uses_a_socket_subclass_connect(loop, listener):
    calls = []

    class Recording(socket.socket):
        def connect(self, address):
            calls.append(address)
            return super().connect(address)

    async def main():
        with Recording() as client:
            client.setblocking(False)
            await loop.sock_connect(client, listener.getsockname())
            conn, address = await loop.sock_accept(listener)
            assert address == client.getsockname()
            conn.close()

    run(loop, main())
    assert calls == [listener.getsockname()]


def test_sock_connect_first_step_answers_as_socket_connect_raises():
    """ferroloop's first ``connect`` (src/sock.rs): False where ``socket.connect`` raises
    BlockingIOError (EINPROGRESS, and EALREADY for a connect already under way), True once
    connected, and the socket module's own exception otherwise."""
    from ferroloop._ferroloop import _sock_connect_now

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # one connection queued; the others' handshakes stay pending
        address = listener.getsockname()
        accepted = socket.socket()
        accepted.connect(address)
        pending, reference = socket.socket(), socket.socket()
        for sock in (pending, reference):
            sock.setblocking(False)
        try:
            assert _sock_connect_now(pending, address) is False  # EINPROGRESS
            with pytest.raises(BlockingIOError):
                reference.connect(address)
            assert _sock_connect_now(pending, address) is False  # EALREADY
            with pytest.raises(BlockingIOError) as raised:
                reference.connect(address)
            assert raised.value.errno == errno.EALREADY
            accepted.setblocking(False)
            with pytest.raises(OSError) as ours:
                _sock_connect_now(accepted, address)  # EISCONN
            with pytest.raises(OSError) as theirs:
                accepted.connect(address)
            assert type(ours.value) is type(theirs.value)
            assert str(ours.value) == str(theirs.value)
        finally:
            for sock in (accepted, pending, reference):
                sock.close()


AUDITED_SOCK_CALLS = """
import asyncio, socket, sys
events = []
watched = ("socket.connect", "socket.sendto")
sys.addaudithook(lambda event, args: event in watched and events.append((event, args[1])))
{setup}
async def main():
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as client, \\
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \\
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        b.bind(("127.0.0.1", 0))
        a.setblocking(False)
        await loop.sock_sendto(a, b"ping", b.getsockname())
        expected = [
            ("socket.connect", listener.getsockname()),
            ("socket.sendto", b.getsockname()),
        ]
        print(events == expected, b.recv(10))
{run}
"""


def test_sock_connect_and_sendto_raise_the_socket_modules_audit_events(loop):
    out = run_script(loop_script(AUDITED_SOCK_CALLS, loop), timeout=60)
    assert out.strip() == "True b'ping'"


def test_sock_recv_after_peer_reset(loop, tcp_pair):
    a, b = tcp_pair

    async def main():
        reader = loop.create_task(loop.sock_recv(b, 100))
        await iterations()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        a.close()
        with pytest.raises(ConnectionResetError):
            await reader

    run(loop, main())


def test_sock_sendfile(loop, tcp_pair, tmp_path):
    a, b = tcp_pair
    data = payload(3 * 1024 * 1024)
    path = tmp_path / "file.bin"
    path.write_bytes(data)

    async def main():
        with open(path, "rb") as f:
            receiver = loop.create_task(drain_until_quiet(loop, b, 0.5))
            assert await loop.sock_sendfile(a, f, 100, 2 * 1024 * 1024) == 2 * 1024 * 1024
            assert f.tell() == 100 + 2 * 1024 * 1024
            a.shutdown(socket.SHUT_WR)
            return await receiver

    assert_bytes(run(loop, main()), data[100 : 100 + 2 * 1024 * 1024])


@pytest.mark.parametrize(
    "text, args",
    [(True, ()), (False, (-1,)), (False, ("0",)), (False, (0, 0)), (False, (0, 1.5))],
    ids=["text-file", "negative-offset", "str-offset", "zero-count", "float-count"],
)
def test_sock_sendfile_parameter_checks(tcp_pair, tmp_path, assert_same_error, text, args):
    a, _ = tcp_pair
    path = tmp_path / "file.bin"
    path.write_bytes(b"content")
    with open(path, "r" if text else "rb") as f:
        exc = assert_same_error(lambda lp: lp.run_until_complete(lp.sock_sendfile(a, f, *args)))
    assert isinstance(exc, (ValueError, TypeError))


def test_sock_sendfile_needs_a_stream_socket(tmp_path, assert_same_error):
    path = tmp_path / "file.bin"
    path.write_bytes(b"content")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, open(path, "rb") as f:
        udp.setblocking(False)
        exc = assert_same_error(lambda lp: lp.run_until_complete(lp.sock_sendfile(udp, f)))
    assert isinstance(exc, ValueError)


SOCK_CALLS = {
    "sock_recv": lambda lp, s: lp.sock_recv(s, 10),
    "sock_recv_into": lambda lp, s: lp.sock_recv_into(s, bytearray(10)),
    "sock_recvfrom": lambda lp, s: lp.sock_recvfrom(s, 10),
    "sock_recvfrom_into": lambda lp, s: lp.sock_recvfrom_into(s, bytearray(10)),
    "sock_sendall": lambda lp, s: lp.sock_sendall(s, b"x"),
    "sock_sendto": lambda lp, s: lp.sock_sendto(s, b"x", ("127.0.0.1", 9)),
    "sock_connect": lambda lp, s: lp.sock_connect(s, ("127.0.0.1", 9)),
    "sock_accept": lambda lp, s: lp.sock_accept(s),
}


@pytest.mark.parametrize("name", [*SOCK_CALLS, "sock_sendfile"])
def test_ssl_sockets_are_rejected(name, assert_same_error, tmp_path):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    sock = context.wrap_socket(
        socket.socket(), server_hostname="localhost", do_handshake_on_connect=False
    )
    sock.setblocking(False)
    path = tmp_path / "file.bin"
    path.write_bytes(b"content")
    try:
        with open(path, "rb") as f:
            if name == "sock_sendfile":

                def call(lp, s):
                    return lp.sock_sendfile(s, f)
            else:
                call = SOCK_CALLS[name]
            exc = assert_same_error(lambda lp: lp.run_until_complete(call(lp, sock)))
        assert isinstance(exc, TypeError)
        assert str(exc) == "Socket cannot be of type SSLSocket"
        assert isinstance(sock, ssl.SSLSocket)
    finally:
        sock.close()


@pytest.mark.parametrize("name", [*SOCK_CALLS, "sock_sendfile"])
def test_blocking_sockets_are_rejected_in_debug_mode(name, assert_same_error, tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"content")
    kind = socket.SOCK_DGRAM if "from" in name or "sendto" in name else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock, open(path, "rb") as f:
        sock.settimeout(None)  # blocking
        if name == "sock_sendfile":

            def call(lp, s):
                return lp.sock_sendfile(s, f)
        else:
            call = SOCK_CALLS[name]

        def action(lp):
            lp.set_debug(True)
            lp.run_until_complete(call(lp, sock))

        exc = assert_same_error(action)
    assert isinstance(exc, ValueError)
    assert str(exc) == "the socket must be non-blocking"


def test_sock_call_on_a_transport_socket_is_refused(loop):
    client, server_end = raw_tcp_pair()

    async def main():
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=client)
        with pytest.raises(RuntimeError, match="^File descriptor .* is used by transport"):
            await loop.sock_recv(client, 10)
        transport.close()
        await iterations()

    run(loop, main())
    server_end.close()


# -- cancellation: no data lost, no watcher left behind ---------------------------------


def test_cancelled_sock_recv_loses_nothing(loop, tcp_pair):
    a, b = tcp_pair

    async def main():
        await cancelled(loop, loop.sock_recv(b, 100))
        assert loop.remove_reader(b) is False  # no watcher left behind
        await cancelled(loop, loop.sock_recv(b, 100))  # and again, on the same fd
        await loop.sock_sendall(a, b"after cancel")
        await iterations()
        assert await loop.sock_recv(b, 100) == b"after cancel"

    run(loop, main())


def test_cancelled_sock_recv_into_writes_nothing(loop, tcp_pair):
    a, b = tcp_pair

    async def main():
        stale = bytearray(b"-" * 12)
        await cancelled(loop, loop.sock_recv_into(b, stale))
        assert loop.remove_reader(b) is False
        await loop.sock_sendall(a, b"after cancel")
        await iterations()
        fresh = bytearray(12)
        assert await loop.sock_recv_into(b, fresh) == 12
        assert fresh == b"after cancel"
        assert stale == b"-" * 12

    run(loop, main())


@pytest.mark.parametrize("into", [False, True], ids=["recvfrom", "recvfrom_into"])
def test_cancelled_sock_recvfrom_loses_no_datagram(loop, udp_pair, into):
    a, b = udp_pair

    async def main():
        if into:
            await cancelled(loop, loop.sock_recvfrom_into(b, bytearray(100)))
        else:
            await cancelled(loop, loop.sock_recvfrom(b, 100))
        assert loop.remove_reader(b) is False
        await loop.sock_sendto(a, b"kept", b.getsockname())
        await iterations()
        assert await loop.sock_recvfrom(b, 100) == (b"kept", a.getsockname())

    run(loop, main())


def test_cancelled_sock_sendall_stops_sending(loop, tcp_pair):
    a, b = tcp_pair
    data = payload(8 * 1024 * 1024)

    async def main():
        await cancelled(loop, loop.sock_sendall(a, data))
        assert loop.remove_writer(a) is False
        await loop.sock_sendall(a, b"<tail>")
        return await drain_until_quiet(loop, b)

    received = run(loop, main())
    assert received.endswith(b"<tail>")
    sent = len(received) - len(b"<tail>")
    assert sent < len(data), "the cancelled sock_sendall kept sending"
    assert_bytes(received, data[:sent] + b"<tail>")


def test_cancelled_sock_sendto_sends_nothing(loop, tmp_path):
    path = str(tmp_path / "dgram.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)
    queued = 0
    while True:  # fill the receiver's queue until sending would block
        try:
            sender.sendto(b"filler", path)
            queued += 1
        except BlockingIOError:
            break

    async def main():
        await cancelled(loop, loop.sock_sendto(sender, b"cancelled", path))
        assert loop.remove_writer(sender) is False
        got = [receiver.recv(100) for _ in range(queued)]
        await loop.sock_sendto(sender, b"last", path)
        got.append(await loop.sock_recv(receiver, 100))
        await iterations()
        with pytest.raises(BlockingIOError):
            receiver.recv(100)
        return got

    try:
        got = run(loop, main())
    finally:
        sender.close()
        receiver.close()
    assert got == [b"filler"] * queued + [b"last"]


def test_cancelled_sock_connect(loop):
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = []
        for _ in range(2):  # a listen(0) queue takes one connection; SYNs beyond are dropped
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(full.getsockname())
            fillers.append(s)

        async def main():
            client = socket.socket()
            client.setblocking(False)
            await cancelled(loop, loop.sock_connect(client, full.getsockname()))
            assert loop.remove_writer(client) is False
            client.close()
            # The loop still connects sockets afterwards.
            with socket.create_server(("127.0.0.1", 0)) as other:
                again = socket.socket()
                again.setblocking(False)
                await loop.sock_connect(again, other.getsockname())
                again.close()

        try:
            run(loop, main())
        finally:
            for s in fillers:
                s.close()


def test_cancelled_sock_accept_loses_no_connection(loop, listener):
    async def main():
        await cancelled(loop, loop.sock_accept(listener))
        assert loop.remove_reader(listener) is False
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        await iterations()
        conn, address = await loop.sock_accept(listener)
        assert address == client.getsockname()
        conn.close()
        client.close()

    run(loop, main())


def test_cancelled_sock_sendfile_stops_sending(loop, tcp_pair, tmp_path):
    a, b = tcp_pair
    data = payload(8 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(data)

    async def main():
        with open(path, "rb") as f:
            await cancelled(loop, loop.sock_sendfile(a, f))
        assert loop.remove_writer(a) is False
        await loop.sock_sendall(a, b"<tail>")
        return await drain_until_quiet(loop, b)

    received = run(loop, main())
    assert received.endswith(b"<tail>")
    sent = len(received) - len(b"<tail>")
    assert sent < len(data), "the cancelled sock_sendfile kept sending"
    assert_bytes(received, data[:sent] + b"<tail>")


# ferroloop makes sock_recv's, sock_recv_into's and sock_sendall's socket calls itself for a plain
# non-blocking socket.socket (src/sock.rs); everything else goes to the socket's methods.
# Either way the results and errors are the socket methods' own.


@pytest.mark.parametrize(
    ("method", "arg"),
    [
        ("sock_recv", -1),
        ("sock_recv", 1.5),
        ("sock_recv", "4"),
        ("sock_recv", 2**70),
        ("sock_recv_into", b"read-only"),
        ("sock_recv_into", memoryview(b"read-only")),
        ("sock_recv_into", memoryview(bytearray(8))[::2]),
        ("sock_recv_into", "text"),
    ],
    ids=[
        "negative size",
        "float size",
        "str size",
        "huge size",
        "into bytes",
        "into a memoryview of bytes",
        "into a strided memoryview",
        "into a str",
    ],
)
def test_sock_recv_bad_arguments_raise_as_the_socket_does(assert_same_error, method, arg):
    def action(lp):
        a, b = raw_tcp_pair()
        with a, b:
            a.setblocking(False)
            b.sendall(b"data")
            lp.run_until_complete(getattr(lp, method)(a, arg))

    assert_same_error(action)


def test_sock_recv_and_sendall_on_a_closed_socket_raise_as_the_socket_does(assert_same_error):
    def action(lp, call):
        a, b = raw_tcp_pair()
        with b:
            a.setblocking(False)
            a.close()
            lp.run_until_complete(call(lp, a))

    exc = assert_same_error(lambda lp: action(lp, lambda lp, a: lp.sock_recv(a, 10)))
    assert isinstance(exc, OSError)
    assert_same_error(lambda lp: action(lp, lambda lp, a: lp.sock_sendall(a, b"x")))


def test_sock_sendall_of_a_non_contiguous_buffer_raises_as_the_socket_does(assert_same_error):
    def action(lp):
        a, b = raw_tcp_pair()
        with a, b:
            a.setblocking(False)
            lp.run_until_complete(lp.sock_sendall(a, memoryview(b"abcdef")[::2]))

    assert_same_error(action)


def test_sock_recv_of_a_reset_connection_raises_at_once(loop, tcp_pair):
    a, b = tcp_pair

    async def main():
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        a.close()
        with pytest.raises(ConnectionResetError):
            await loop.sock_recv(b, 100)

    run(loop, main())


def test_sock_sendall_and_recv_of_every_buffer_kind_and_size(loop, tcp_pair):
    a, b = tcp_pair
    ints = array.array("i", range(1000))
    # Views cast to bytes: the stdlib's sock_sendall counts other formats in items.
    sends = [
        b"bytes",
        bytearray(b"bytearray"),
        memoryview(b"memoryview"),
        memoryview(ints).cast("B"),
        b"",
    ]
    expected = b"".join(bytes(item) for item in sends)

    async def main():
        for item in sends:
            await loop.sock_sendall(a, item)
        a.shutdown(socket.SHUT_WR)
        received = bytearray()
        # Sizes below, at and above ferroloop's read buffer (256 KiB), and 1 byte.
        for size in [1, 7, 256 * 1024, 300 * 1024]:
            received += await loop.sock_recv(b, size)
        while chunk := await loop.sock_recv(b, 4096):
            received += chunk
        assert await loop.sock_recv(b, 0) == b""
        return bytes(received)

    assert run(loop, main()) == expected


def test_sock_recv_and_sendall_use_a_socket_subclass_methods(loop, tcp_pair):
    a, b = tcp_pair
    calls = []

    class Recording(socket.socket):
        def recv(self, n, *args):
            calls.append(("recv", n))
            return super().recv(n, *args)

        def send(self, data, *args):
            calls.append(("send", len(data)))
            return super().send(data, *args)

    async def main():
        with Recording(fileno=a.detach()) as sub:
            sub.setblocking(False)
            await loop.sock_sendall(sub, b"ping")
            assert await loop.sock_recv(b, 4) == b"ping"
            b.send(b"pong")
            assert await loop.sock_recv(sub, 10) == b"pong"

    run(loop, main())
    assert calls == [("send", 4), ("recv", 10)]


def test_sock_recv_and_sendall_on_a_socket_with_a_timeout(loop, tcp_pair):
    a, b = tcp_pair
    a.settimeout(5.0)

    async def main():
        await loop.sock_sendall(a, b"ping")
        assert await loop.sock_recv(b, 10) == b"ping"
        b.send(b"pong")
        assert await loop.sock_recv(a, 10) == b"pong"

    run(loop, main())


# A sock_* wait that fires leaves ferroloop's fd registered for the next wait on the same
# socket (src/poller.rs, "parked"); whatever happens to the fd in between, the next user
# of it must be served as on the stdlib loop.


async def socketpair_after_a_sock_recv_wait(loop):
    """A non-blocking socket pair whose first socket has had one sock_recv wait and
    receive (on ferroloop its fd is left parked)."""
    a, peer = socket.socketpair()
    a.setblocking(False)
    reader = loop.create_task(loop.sock_recv(a, 10))
    await iterations()
    peer.send(b"first")
    assert await reader == b"first"
    return a, peer


def test_sock_recv_on_a_new_socket_that_reuses_a_closed_ones_fd(loop):
    async def main():
        a, peer = await socketpair_after_a_sock_recv_wait(loop)
        fd = a.fileno()
        a.close()
        peer.close()
        b, peer = socket.socketpair()
        with b, peer:
            assert fd in (b.fileno(), peer.fileno())
            if peer.fileno() == fd:
                b, peer = peer, b
            b.setblocking(False)
            reader = loop.create_task(loop.sock_recv(b, 10))
            await iterations()
            peer.send(b"second")
            assert await asyncio.wait_for(reader, 5) == b"second"

    run(loop, main())


def test_sock_recv_after_a_duplicate_kept_the_closed_socket_alive(loop):
    async def main():
        a, peer = await socketpair_after_a_sock_recv_wait(loop)
        duplicate = a.dup()  # the old file stays open (and registered, if it was)
        fd = a.fileno()
        a.close()
        b, other = socket.socketpair()
        with duplicate, peer, b, other:
            if other.fileno() == fd:
                b, other = other, b
            b.setblocking(False)
            peer.send(b"to the old file")  # may wake a stale registration of fd
            reader = loop.create_task(loop.sock_recv(b, 10))
            await iterations()
            assert not reader.done()
            other.send(b"second")
            assert await asyncio.wait_for(reader, 5) == b"second"

    run(loop, main())


def test_fd_watchers_after_a_sock_recv_see_the_fd_as_unwatched(loop, tcp_pair):
    a, b = tcp_pair

    async def main():
        reader = loop.create_task(loop.sock_recv(a, 10))
        await iterations()
        b.send(b"one")
        assert await reader == b"one"
        assert loop.remove_reader(a.fileno()) is False
        b.send(b"two")  # pending before the reader is added: it must still be told
        readable = loop.create_future()
        loop.add_reader(a.fileno(), lambda: readable.done() or readable.set_result(True))
        assert await asyncio.wait_for(readable, 5)
        assert loop.remove_reader(a.fileno()) is True
        assert await loop.sock_recv(a, 10) == b"two"

    run(loop, main())


def test_a_transport_takes_over_a_socket_sock_recv_used(loop):
    async def main():
        a, peer = await socketpair_after_a_sock_recv_wait(loop)
        received = loop.create_future()

        class Collect(asyncio.Protocol):
            def data_received(self, data):
                received.set_result(data)

        transport, _ = await loop.connect_accepted_socket(Collect, a)
        peer.send(b"via transport")
        assert await asyncio.wait_for(received, 5) == b"via transport"
        transport.close()
        peer.close()

    run(loop, main())


def test_data_arriving_between_sock_recvs_is_received_and_the_next_wait_wakes(loop, tcp_pair):
    a, b = tcp_pair

    async def main():
        for round_ in range(20):
            reader = loop.create_task(loop.sock_recv(a, 100))
            await iterations(2)
            b.send(b"wake %d" % round_)
            assert await asyncio.wait_for(reader, 5) == b"wake %d" % round_
            b.send(b"unawaited %d" % round_)  # arrives while no one waits
            await iterations(2)
            assert await loop.sock_recv(a, 100) == b"unawaited %d" % round_

    run(loop, main())


def test_full_duplex_sock_sendall_and_recv_on_both_ends(loop, tcp_pair):
    a, b = tcp_pair
    size = 4 * 1024 * 1024
    ab, ba = payload(size), payload(size)[::-1]

    async def receive(sock):
        received = bytearray()
        while len(received) < size:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk
            received += chunk
        return bytes(received)

    async def main():
        return await asyncio.wait_for(
            asyncio.gather(
                loop.sock_sendall(a, ab),
                loop.sock_sendall(b, ba),
                receive(b),
                receive(a),
            ),
            30,
        )

    _, _, at_b, at_a = run(loop, main())
    assert_bytes(at_b, ab)
    assert_bytes(at_a, ba)
