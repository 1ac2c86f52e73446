"""create_connection, create_server, the Unix variants, connect_accepted_socket, start_tls
and the Server object: arguments, errors, address handling and server lifecycle.

Loopback only. Where an error message varies between Python versions, the test compares
against what the stdlib loop of the running version raises.
"""

import asyncio
import os
import re
import resource
import socket
import stat
import sys

import pytest

TIMEOUT = 10.0
PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)


def run(loop, coro, timeout=TIMEOUT):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")


class Peer(asyncio.Protocol):
    """Records its transport, what it receives and when the connection ends; with `echo`
    writes back what it receives."""

    def __init__(self, echo=False):
        loop = asyncio.get_running_loop()
        self.echo = echo
        self.transport = None
        self.data = bytearray()
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        self.data += data
        if self.echo:
            self.transport.write(data)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class Factory:
    """A factory of echoing protocols, remembering what it made."""

    def __init__(self):
        self.made = []

    def __call__(self):
        protocol = Peer(echo=True)
        self.made.append(protocol)
        return protocol


@pytest.fixture
def closed_port():
    """A loopback TCP port nothing listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def listener():
    """A listening blocking socket on 127.0.0.1 (accept it yourself)."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s


@pytest.fixture
def unresponsive_port():
    """A loopback port whose accept queue is full, so a new connect() hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(0)
        filler = socket.create_connection(s.getsockname())
        try:
            yield s.getsockname()[1]
        finally:
            filler.close()


def fake_getaddrinfo(loop, infos):
    """Make `loop.getaddrinfo` answer `infos` for any name (IP literals skip it)."""
    calls = []

    async def getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        calls.append((host, port))
        return list(infos)

    loop.getaddrinfo = getaddrinfo
    return calls


def tcp4(host, port):
    return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))


def tcp6(host, port):
    return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))


async def echo_once(transport, protocol):
    transport.write(b"ping")
    while len(protocol.data) < 4:
        await asyncio.sleep(0.01)
    return bytes(protocol.data)


# ---- argument errors: the stdlib's exception types and messages ------------------------


def _call(method, *args, **kwargs):
    """An action calling `loop.<method>(*args, **kwargs)`; a callable argument named
    `sock` (or the one positional `tcp`/`udp`/`unix` marker) becomes a fresh socket,
    closed afterwards."""

    def action(lp):
        made = []

        def materialize(value):
            if value in SOCKETS:
                made.append(SOCKETS[value]())
                return made[-1]
            return value

        try:
            call = getattr(lp, method)(
                *[materialize(a) for a in args],
                **{k: materialize(v) for k, v in kwargs.items()},
            )
            lp.run_until_complete(call)
        finally:
            for sock in made:
                sock.close()

    return action


SOCKETS = {
    "<tcp>": socket.socket,
    "<udp>": lambda: socket.socket(type=socket.SOCK_DGRAM),
    "<unix>": lambda: socket.socket(socket.AF_UNIX),
}
P = asyncio.Protocol
HOST = "127.0.0.1"

ARGUMENT_ERRORS = {
    "host-and-sock": _call("create_connection", P, HOST, 80, sock="<tcp>"),
    "nothing": _call("create_connection", P),
    "server_hostname-without-ssl": _call("create_connection", P, HOST, 80, server_hostname="x"),
    "handshake-timeout-without-ssl": _call(
        "create_connection", P, HOST, 80, ssl_handshake_timeout=1
    ),
    "shutdown-timeout-without-ssl": _call("create_connection", P, HOST, 80, ssl_shutdown_timeout=1),
    "ssl-without-host": _call("create_connection", P, ssl=True, sock="<tcp>"),
    "datagram-sock": _call("create_connection", P, sock="<udp>"),
    "server-ssl-bool": _call("create_server", P, HOST, 0, ssl=True),
    "server-handshake-timeout-without-ssl": _call(
        "create_server", P, HOST, 0, ssl_handshake_timeout=1
    ),
    "server-host-and-sock": _call("create_server", P, HOST, 0, sock="<tcp>"),
    "server-nothing": _call("create_server", P),
    "server-datagram-sock": _call("create_server", P, sock="<udp>"),
    "unix-server_hostname-without-ssl": _call(
        "create_unix_connection", P, "/nonexistent", server_hostname="x"
    ),
    "unix-ssl-without-server_hostname": _call(
        "create_unix_connection", P, "/nonexistent", ssl=True
    ),
    "unix-path-and-sock": _call("create_unix_connection", P, "/nonexistent", sock="<unix>"),
    "unix-nothing": _call("create_unix_connection", P),
    "unix-inet-sock": _call("create_unix_connection", P, sock="<tcp>"),
    "unix-missing-path": _call("create_unix_connection", P, "/nonexistent/ferroloop.sock"),
    "unix-server-ssl-bool": _call("create_unix_server", P, "/nonexistent/s", ssl=True),
    "unix-server-path-and-sock": _call("create_unix_server", P, "/nonexistent/s", sock="<unix>"),
    "unix-server-nothing": _call("create_unix_server", P),
    "unix-server-inet-sock": _call("create_unix_server", P, sock="<tcp>"),
    "accepted-datagram-sock": _call("connect_accepted_socket", P, "<udp>"),
    "accepted-handshake-timeout-without-ssl": _call(
        "connect_accepted_socket", P, "<tcp>", ssl_handshake_timeout=1
    ),
    "start_tls-not-a-context": _call("start_tls", None, None, "not a context"),
}


def _without_fds(text):
    # A socket's repr in a message names its fd, which differs between the two runs.
    return re.sub(r"fd=\d+", "fd=N", text)


@pytest.mark.parametrize("case", sorted(ARGUMENT_ERRORS))
def test_argument_errors_match_the_stdlib(loop, stdlib_error, case):
    action = ARGUMENT_ERRORS[case]
    expected = stdlib_error(action)
    with pytest.raises(BaseException) as info:
        action(loop)
    assert type(info.value) is type(expected)
    assert _without_fds(str(info.value)) == _without_fds(str(expected))


def test_all_errors_exists_from_312(loop, closed_port):
    async def main():
        await loop.create_connection(asyncio.Protocol, "127.0.0.1", closed_port, all_errors=True)

    expected = ExceptionGroup if PY312 else TypeError  # noqa: F821 - a builtin from 3.11
    with pytest.raises(expected):
        run(loop, main())


def test_keep_alive_and_cleanup_socket_exist_from_313(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, keep_alive=True)
        keep_alive = server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        server.close()
        return keep_alive

    if PY313:
        assert run(loop, main()) != 0
    else:
        with pytest.raises(TypeError, match="keep_alive"):
            run(loop, main())


# ---- connecting ------------------------------------------------------------------------


def test_connect_and_echo_through_server(loop):
    async def main():
        factory = Factory()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, protocol = await loop.create_connection(Peer, "127.0.0.1", port)
        assert isinstance(transport, asyncio.Transport)
        assert transport.get_extra_info("peername") == ("127.0.0.1", port)
        assert await echo_once(transport, protocol) == b"ping"
        server_side = factory.made[0]
        assert server_side.transport.get_extra_info("peername") == transport.get_extra_info(
            "sockname"
        )
        transport.abort()
        await protocol.lost
        await server_side.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_connection_refused(loop, closed_port, stdlib_error):
    def action(lp):
        lp.run_until_complete(lp.create_connection(asyncio.Protocol, "127.0.0.1", closed_port))

    expected = stdlib_error(action)
    assert type(expected) is ConnectionRefusedError
    with pytest.raises(ConnectionRefusedError) as info:
        action(loop)
    assert str(info.value) == str(expected)
    assert str(closed_port) in str(info.value)


def test_refused_on_every_address_is_one_combined_oserror(loop, closed_port, stdlib_error):
    infos = [tcp6("::1", closed_port), tcp4("127.0.0.1", closed_port)]

    def action(lp):
        fake_getaddrinfo(lp, infos)
        lp.run_until_complete(lp.create_connection(asyncio.Protocol, "dual.test", closed_port))

    expected = stdlib_error(action)
    assert type(expected) is OSError
    assert str(expected).startswith("Multiple exceptions: ")
    with pytest.raises(OSError) as info:
        action(loop)
    assert type(info.value) is OSError
    assert str(info.value) == str(expected)


def test_same_error_on_every_address_is_raised_once(loop, closed_port):
    fake_getaddrinfo(loop, [tcp4("127.0.0.1", closed_port)] * 2)
    with pytest.raises(ConnectionRefusedError):
        run(loop, loop.create_connection(asyncio.Protocol, "twice.test", closed_port))


@pytest.mark.skipif(not PY312, reason="all_errors is 3.12+")
def test_all_errors_raises_an_exception_group(loop, closed_port):
    fake_getaddrinfo(loop, [tcp4("127.0.0.1", closed_port)] * 2)
    coro = loop.create_connection(asyncio.Protocol, "twice.test", closed_port, all_errors=True)
    with pytest.raises(ExceptionGroup) as info:
        run(loop, coro)
    assert str(info.value).startswith("create_connection failed")
    assert [type(exc) for exc in info.value.exceptions] == [ConnectionRefusedError] * 2


@pytest.mark.skipif(not PY312, reason="all_errors is 3.12+")
def test_all_errors_with_one_address_is_still_a_group(loop, closed_port):
    coro = loop.create_connection(asyncio.Protocol, "127.0.0.1", closed_port, all_errors=True)
    with pytest.raises(ExceptionGroup) as info:
        run(loop, coro)
    assert [type(exc) for exc in info.value.exceptions] == [ConnectionRefusedError]


def test_dns_failure_raises_gaierror(loop):
    with pytest.raises(socket.gaierror):
        run(loop, loop.create_connection(asyncio.Protocol, "nonexistent.invalid", 80))


def test_empty_resolution(assert_same_error):
    def action(lp):
        fake_getaddrinfo(lp, [])
        lp.run_until_complete(lp.create_connection(asyncio.Protocol, "empty.test", 80))

    assert_same_error(action)


def test_ip_literal_is_not_resolved(loop, listener):
    calls = fake_getaddrinfo(loop, [])
    port = listener.getsockname()[1]

    async def main():
        transport, _ = await loop.create_connection(Peer, "127.0.0.1", port)
        transport.close()

    run(loop, main())
    listener.accept()[0].close()
    assert calls == []


def test_local_addr_is_bound(loop, listener):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()
    port = listener.getsockname()[1]

    async def main():
        transport, protocol = await loop.create_connection(
            Peer, "127.0.0.1", port, local_addr=local
        )
        sockname = transport.get_extra_info("sockname")
        transport.close()
        await protocol.lost
        return sockname

    assert run(loop, main()) == local
    listener.accept()[0].close()


def test_local_addr_bind_failure(loop, listener, assert_same_error):
    busy = listener.getsockname()
    port = busy[1]

    def action(lp):
        lp.run_until_complete(
            lp.create_connection(asyncio.Protocol, "127.0.0.1", port, local_addr=busy)
        )

    error = assert_same_error(action)
    assert "error while attempting to bind on address" in str(error)


def test_local_addr_of_another_family(listener, assert_same_error):
    port = listener.getsockname()[1]

    def action(lp):
        lp.run_until_complete(
            lp.create_connection(asyncio.Protocol, "127.0.0.1", port, local_addr=("::1", 0))
        )

    error = assert_same_error(action)
    assert "no matching local address" in str(error)


# ---- several addresses: in turn, interleaved, happy eyeballs ---------------------------


@needs_ipv6
@pytest.mark.parametrize("delay", [None, 0.25], ids=["in-turn", "happy-eyeballs"])
def test_first_address_refuses_second_connects(loop, listener, delay):
    port = listener.getsockname()[1]
    fake_getaddrinfo(loop, [tcp6("::1", port), tcp4("127.0.0.1", port)])

    async def main():
        transport, protocol = await loop.create_connection(
            Peer, "dual.test", port, happy_eyeballs_delay=delay
        )
        peer = transport.get_extra_info("peername")
        transport.close()
        await protocol.lost
        return peer

    assert run(loop, main()) == ("127.0.0.1", port)
    listener.accept()[0].close()


def test_happy_eyeballs_starts_the_next_address_after_the_delay(loop, listener, unresponsive_port):
    port = listener.getsockname()[1]
    fake_getaddrinfo(loop, [tcp4("127.0.0.1", unresponsive_port), tcp4("127.0.0.1", port)])

    async def main():
        started = loop.time()
        transport, protocol = await loop.create_connection(
            Peer, "slow.test", port, happy_eyeballs_delay=0.1
        )
        took = loop.time() - started
        peer = transport.get_extra_info("peername")
        transport.close()
        await protocol.lost
        return peer, took

    peer, took = run(loop, main())
    assert peer == ("127.0.0.1", port)
    assert 0.1 <= took < 5
    listener.accept()[0].close()


def test_happy_eyeballs_keeps_no_socket_of_a_loser(loop, listener, unresponsive_port):
    port = listener.getsockname()[1]
    fake_getaddrinfo(loop, [tcp4("127.0.0.1", unresponsive_port), tcp4("127.0.0.1", port)])

    async def main():
        before = set(os.listdir("/proc/self/fd"))  # the running loop's own fds included
        transport, protocol = await loop.create_connection(
            Peer, "slow.test", port, happy_eyeballs_delay=0.05
        )
        transport.close()
        await protocol.lost
        await asyncio.sleep(0.05)
        return open_sockets_since(before)

    assert run(loop, main()) == []
    listener.accept()[0].close()


def open_sockets_since(before):
    """The socket fds opened since `before` (a listing of /proc/self/fd) still open."""
    sockets = []
    for fd in set(os.listdir("/proc/self/fd")) - before:
        try:
            if stat.S_ISSOCK(os.stat(f"/proc/self/fd/{fd}").st_mode):
                sockets.append(fd)
        except FileNotFoundError:
            pass
    return sockets


@needs_ipv6
@pytest.mark.parametrize("interleave,delay", [(None, None), (1, None), (2, None), (None, 0.5)])
def test_attempt_order_follows_interleave(loop, closed_port, stdlib_error, interleave, delay):
    # The combined error lists the attempts in the order they were made.
    # Distinct messages (the flowinfo shows in the address), so the order shows.
    infos = [
        tcp6("::1", closed_port),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", closed_port, 1, 0)),
        tcp4("127.0.0.1", closed_port),
        tcp4("127.0.0.2", closed_port),
    ]

    def action(lp):
        fake_getaddrinfo(lp, infos)
        lp.run_until_complete(
            lp.create_connection(
                asyncio.Protocol,
                "many.test",
                closed_port,
                interleave=interleave,
                happy_eyeballs_delay=delay,
            )
        )

    expected = stdlib_error(action)
    with pytest.raises(OSError) as info:
        action(loop)
    assert str(info.value) == str(expected)


def test_cancelled_connect_closes_its_socket(loop, unresponsive_port):
    async def main():
        before = set(os.listdir("/proc/self/fd"))
        task = loop.create_task(
            loop.create_connection(asyncio.Protocol, "127.0.0.1", unresponsive_port)
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return open_sockets_since(before)

    assert run(loop, main()) == []


# ---- servers ---------------------------------------------------------------------------


def test_create_server_on_a_busy_port(listener, assert_same_error):
    busy = listener.getsockname()

    def action(lp):
        lp.run_until_complete(lp.create_server(asyncio.Protocol, *busy))

    error = assert_same_error(action)
    assert str(busy[1]) in str(error)


def test_reuse_port_lets_two_servers_share_a_port(loop):
    async def main():
        first = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
        port = first.sockets[0].getsockname()[1]
        second = await loop.create_server(asyncio.Protocol, "127.0.0.1", port, reuse_port=True)
        ports = [s.getsockname()[1] for s in (*first.sockets, *second.sockets)]
        for server in (first, second):
            server.close()
            await server.wait_closed()
        return ports, port

    ports, port = run(loop, main())
    assert ports == [port, port]


def test_reuse_address_default_is_on(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        value = server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        off = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_address=False)
        value_off = off.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        server.close()
        off.close()
        return value, value_off

    value, value_off = run(loop, main())
    assert value != 0
    assert value_off == 0


@needs_ipv6
def test_server_on_several_hosts_binds_each_address_once(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, ["127.0.0.1", "::1", "127.0.0.1"], 0)
        families = sorted(s.family for s in server.sockets)
        v6only = [
            s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            for s in server.sockets
            if s.family == socket.AF_INET6
        ]
        server.close()
        await server.wait_closed()
        return families, v6only

    families, v6only = run(loop, main())
    assert families == sorted([socket.AF_INET, socket.AF_INET6])
    assert v6only == [1]


def test_server_resolves_names_through_getaddrinfo(loop):
    calls = fake_getaddrinfo(loop, [tcp4("127.0.0.1", 0)])

    async def main():
        server = await loop.create_server(asyncio.Protocol, "name.test", 0)
        count = len(server.sockets)
        server.close()
        return count

    assert run(loop, main()) == 1
    assert calls == [("name.test", 0)]


def test_server_empty_resolution(assert_same_error):
    def action(lp):
        fake_getaddrinfo(lp, [])
        lp.run_until_complete(lp.create_server(asyncio.Protocol, "empty.test", 0))

    assert_same_error(action)


def test_server_with_existing_socket(loop):
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def main():
        server = await loop.create_server(Factory(), sock=sock)
        assert sock.getblocking() is False
        transport, protocol = await loop.create_connection(Peer, "127.0.0.1", port)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert sock.fileno() == -1  # the server owned it and closed it


def test_server_lifecycle(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, start_serving=False)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.get_loop() is loop
        assert server.is_serving() is False
        (sock,) = server.sockets
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert repr(server) == f"<{type(server).__name__} sockets={server.sockets!r}>"
        await server.start_serving()
        assert server.is_serving() is True
        await server.start_serving()  # idempotent
        server.close()
        assert server.is_serving() is False
        assert server.sockets == ()
        server.close()  # idempotent
        await server.wait_closed()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()

    run(loop, main())


def test_server_does_not_listen_before_start_serving(loop):
    async def main():
        factory = Factory()
        server = await loop.create_server(factory, "127.0.0.1", 0, start_serving=False)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Peer, "127.0.0.1", port)
        await server.start_serving()
        transport, protocol = await loop.create_connection(Peer, "127.0.0.1", port)
        while not factory.made:
            await asyncio.sleep(0.01)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_serve_forever_until_cancelled(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, start_serving=False)
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        with pytest.raises(RuntimeError, match="already being awaited"):
            await server.serve_forever()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        assert server.sockets == ()

    run(loop, main())


def test_server_as_async_context_manager(loop):
    async def main():
        async with await loop.create_server(asyncio.Protocol, "127.0.0.1", 0) as server:
            assert server.is_serving()
        assert server.sockets == ()

    run(loop, main())


def test_wait_closed_and_live_connections(loop):
    # 3.12+: wait_closed waits for the connections too; 3.11 returns once closed.
    async def main():
        factory = Factory()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, protocol = await loop.create_connection(Peer, "127.0.0.1", port)
        while not factory.made:
            await asyncio.sleep(0.01)
        await factory.made[0].made
        server.close()
        waiting = loop.create_task(server.wait_closed())
        await asyncio.sleep(0.05)
        done_before_disconnect = waiting.done()
        transport.close()
        await protocol.lost
        await asyncio.wait_for(waiting, TIMEOUT)
        await server.wait_closed()  # returns at once now
        return done_before_disconnect

    assert run(loop, main()) is (not PY312)


@pytest.mark.skipif(not PY312, reason="the wait_closed fix of 3.12.1")
def test_wait_closed_waits_for_close_of_an_idle_server(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        waiting = loop.create_task(server.wait_closed())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        server.close()
        await asyncio.wait_for(waiting, TIMEOUT)

    run(loop, main())


@pytest.mark.skipif(not PY313, reason="close_clients/abort_clients are 3.13+")
@pytest.mark.parametrize("method", ["close_clients", "abort_clients"])
def test_close_and_abort_clients(loop, method):
    async def main():
        factory = Factory()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [await loop.create_connection(Peer, "127.0.0.1", port) for _ in range(3)]
        while len(factory.made) < 3:
            await asyncio.sleep(0.01)
        for protocol in factory.made:
            await protocol.made
        server.close()
        getattr(server, method)()
        for _, protocol in clients:
            await protocol.lost
        for protocol in factory.made:
            await protocol.lost
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)

    run(loop, main())


def test_many_queued_connections_are_all_accepted(loop):
    count = 60

    async def main():
        factory = Factory()
        server = await loop.create_server(factory, "127.0.0.1", 0, backlog=count + 10)
        port = server.sockets[0].getsockname()[1]
        # All queued in the kernel before the loop looks at the listening socket again.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        while len(factory.made) < count:
            await asyncio.sleep(0.01)
        for client in clients:
            client.close()
        for protocol in factory.made:
            await protocol.lost
        server.close()
        await server.wait_closed()
        return len(factory.made)

    assert run(loop, main()) == count


def test_each_connection_gets_its_own_context(loop):
    import contextvars

    var = contextvars.ContextVar("var", default=None)
    seen = []

    class Setter(Peer):
        def connection_made(self, transport):
            seen.append(var.get())
            var.set(len(seen))
            super().connection_made(transport)

    async def main():
        var.set("server")
        server = await loop.create_server(Setter, "127.0.0.1", 0)
        var.set("client")
        port = server.sockets[0].getsockname()[1]
        for _ in range(3):
            transport, protocol = await loop.create_connection(Peer, "127.0.0.1", port)
            while len(seen) < 1:
                await asyncio.sleep(0.01)
            transport.close()
            await protocol.lost
        while len(seen) < 3:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert seen == ["server"] * 3


def test_accept_out_of_file_descriptors_is_reported_and_retried(loop):
    reports = []
    loop.set_exception_handler(lambda lp, context: reports.append(context))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def main():
        factory = Factory()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.socket()
        client.setblocking(False)
        # Leave accept() no free fd number; the kernel completes the handshake regardless.
        # The listing's own directory fd may be the highest number and is closed again, so
        # fill until open() hands out a number at or above it: then every lower one is taken.
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        fillers = []
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
            if fillers[-1] >= highest:
                break
        resource.setrlimit(resource.RLIMIT_NOFILE, (fillers[-1] + 1, hard))
        try:
            try:
                client.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            while not reports:
                await asyncio.sleep(0.01)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for fd in fillers:
                os.close(fd)
        assert factory.made == []
        started = loop.time()
        while not factory.made:
            await asyncio.sleep(0.01)
        waited = loop.time() - started
        client.close()
        await factory.made[0].lost
        server.close()
        await server.wait_closed()
        return waited

    waited = run(loop, main())
    context = reports[0]
    assert context["message"] == "socket.accept() out of system resource"
    assert isinstance(context["exception"], OSError)
    assert isinstance(context["socket"], asyncio.trsock.TransportSocket)
    assert 0.5 < waited < 5


def test_connect_accepted_socket(loop, listener):
    port = listener.getsockname()[1]

    async def main():
        transport, protocol = await loop.create_connection(Peer, "127.0.0.1", port)
        conn, _ = listener.accept()
        accepted, peer = await loop.connect_accepted_socket(lambda: Peer(echo=True), conn)
        assert accepted.get_extra_info("peername") == transport.get_extra_info("sockname")
        data = await echo_once(transport, protocol)
        accepted.close()
        await protocol.lost
        await peer.lost
        return data

    assert run(loop, main()).startswith(b"ping")


# ---- Unix sockets ----------------------------------------------------------------------


@pytest.fixture
def unix_path(tmp_path):
    return str(tmp_path / "s.sock")


def test_unix_server_and_connection(loop, unix_path):
    async def main():
        server = await loop.create_unix_server(Factory(), unix_path)
        assert server.sockets[0].getsockname() == unix_path
        transport, protocol = await loop.create_unix_connection(Peer, unix_path)
        data = await echo_once(transport, protocol)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()
        return data

    assert run(loop, main()).startswith(b"ping")
    assert os.path.exists(unix_path) is (not PY313)


def test_unix_server_replaces_a_stale_socket_file(loop, unix_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(unix_path)
    stale.close()
    assert stat.S_ISSOCK(os.stat(unix_path).st_mode)

    async def main():
        server = await loop.create_unix_server(Factory(), unix_path)
        transport, protocol = await loop.create_unix_connection(Peer, unix_path)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_server_on_a_regular_file(tmp_path, assert_same_error):
    path = tmp_path / "file"
    path.write_text("not a socket")

    def action(lp):
        lp.run_until_complete(lp.create_unix_server(asyncio.Protocol, str(path)))

    error = assert_same_error(action)
    assert error.errno is not None
    assert path.read_text() == "not a socket"


@pytest.mark.skipif(not PY313, reason="cleanup_socket is 3.13+")
def test_unix_server_cleanup(loop, unix_path):
    async def main():
        kept = await loop.create_unix_server(Factory(), unix_path, cleanup_socket=False)
        kept.close()
        await kept.wait_closed()
        assert os.path.exists(unix_path)
        first = await loop.create_unix_server(Factory(), unix_path)
        # A second server takes the path over; closing the first leaves its file alone.
        second = await loop.create_unix_server(Factory(), unix_path)
        first.close()
        await first.wait_closed()
        assert os.path.exists(unix_path)
        second.close()
        await second.wait_closed()
        assert not os.path.exists(unix_path)

    run(loop, main())


def test_unix_server_on_a_given_socket(loop, unix_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(unix_path)

    async def main():
        server = await loop.create_unix_server(Factory(), sock=sock)
        transport, protocol = await loop.create_unix_connection(Peer, unix_path)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert os.path.exists(unix_path) is (not PY313)


def test_unix_connection_over_a_given_socket(loop, unix_path):
    async def main():
        server = await loop.create_unix_server(Factory(), unix_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(unix_path)
        transport, protocol = await loop.create_unix_connection(Peer, sock=sock)
        data = await echo_once(transport, protocol)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()
        return data

    assert run(loop, main()).startswith(b"ping")


def test_create_connection_accepts_a_unix_stream_socket(loop, unix_path):
    async def main():
        server = await loop.create_unix_server(Factory(), unix_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(unix_path)
        transport, protocol = await loop.create_connection(Peer, sock=sock)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


# ---- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    from net_support import TLS

    return TLS(tmp_path_factory.mktemp("tls"))


def test_tls_server_and_client(loop, tls):
    async def main():
        factory = Factory()
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls.server())
        port = server.sockets[0].getsockname()[1]
        transport, protocol = await loop.create_connection(
            Peer, "127.0.0.1", port, ssl=tls.client(), ssl_handshake_timeout=TIMEOUT
        )
        assert transport.get_extra_info("ssl_object") is not None
        assert transport.get_extra_info("peercert") is not None
        data = await echo_once(transport, protocol)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()
        return data

    assert run(loop, main()).startswith(b"ping")


def test_tls_hostname_is_checked(loop, tls):
    async def main():
        server = await loop.create_server(Factory(), "127.0.0.1", 0, ssl=tls.server())
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl_module().SSLCertVerificationError):
                await loop.create_connection(
                    Peer, "127.0.0.1", port, ssl=tls.client(), server_hostname="example.com"
                )
        finally:
            server.close()
            await server.wait_closed()

    run(loop, main())


def ssl_module():
    import ssl

    return ssl


def test_tls_server_drops_a_plaintext_client(loop, tls):
    async def main():
        server = await loop.create_server(Factory(), "127.0.0.1", 0, ssl=tls.server())
        port = server.sockets[0].getsockname()[1]
        transport, protocol = await loop.create_connection(Peer, "127.0.0.1", port)
        transport.write(b"GET / HTTP/1.0\r\n\r\n" * 10)
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_start_tls_upgrades_a_plain_connection(loop, tls):
    async def main():
        upgraded = loop.create_future()

        class Upgrader(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                assert data == b"STARTTLS"
                self.transport.write(b"OK")
                loop.create_task(self.upgrade())

            async def upgrade(self):
                peer = Peer(echo=True)
                new = await loop.start_tls(self.transport, peer, tls.server(), server_side=True)
                peer.connection_made(new)
                upgraded.set_result(peer)

        class Client(asyncio.Protocol):
            def __init__(self):
                self.ok = loop.create_future()
                self.data = bytearray()
                self.lost = loop.create_future()

            def data_received(self, data):
                if not self.ok.done():
                    self.ok.set_result(data)
                else:
                    self.data += data

            def connection_lost(self, exc):
                self.lost.set_result(exc)

        server = await loop.create_server(Upgrader, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
        transport.write(b"STARTTLS")
        assert await client.ok == b"OK"
        tls_transport = await loop.start_tls(
            transport, client, tls.client(), server_hostname="localhost"
        )
        assert tls_transport.get_extra_info("ssl_object") is not None
        await upgraded
        tls_transport.write(b"hello")
        while len(client.data) < 5:
            await asyncio.sleep(0.01)
        tls_transport.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return bytes(client.data)

    assert run(loop, main()) == b"hello"
