"""loop.create_server and the Server object; connect_accepted_socket; the accept loop."""

import asyncio
import errno
import gc
import json
import os
import socket
import sys

import pytest
from net_support import (
    Capturing,
    Echo,
    Recorder,
    ipv6_loopback_available,
    loop_name,
    raise_fd_limit,
    raw_tcp_pair,
    run,
    run_script,
)


async def ping(loop, port, host="127.0.0.1", message=b"ping"):
    transport, protocol = await loop.create_connection(lambda: Recorder(loop), host, port)
    transport.write(message)
    echoed = await protocol.received(len(message))
    transport.close()
    await protocol.lost
    return echoed


class EchoRecorder(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


def port_of(server, index=0):
    return server.sockets[index].getsockname()[1]


def test_server_object(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.get_loop() is loop
        assert server.is_serving()
        assert len(server.sockets) == 1
        sock = server.sockets[0]
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockname()[0] == "127.0.0.1"
        port = port_of(server)
        assert await ping(loop, port) == b"ping"
        server.close()
        assert not server.is_serving()
        assert len(server.sockets) == 0
        server.close()  # closing twice is harmless
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await ping(loop, port)

    run(loop, main())


def test_server_as_async_context_manager(loop):
    async def main():
        async with await loop.create_server(Echo, "127.0.0.1", 0) as server:
            assert server.is_serving()
            assert await ping(loop, port_of(server)) == b"ping"
        assert not server.is_serving()
        assert len(server.sockets) == 0

    run(loop, main())


def test_start_serving_false_accepts_nothing_until_started(loop):
    async def main():
        capture = Capturing(loop, Echo)
        server = await loop.create_server(capture, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        port = port_of(server)
        probe = socket.socket()
        probe.setblocking(False)
        probe.connect_ex(("127.0.0.1", port))
        for _ in range(10):
            await asyncio.sleep(0.002)
        assert capture.protocols == []
        probe.close()
        await server.start_serving()
        assert server.is_serving()
        await server.start_serving()  # starting twice is harmless
        assert await ping(loop, port) == b"ping"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_serve_forever_until_cancelled(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        assert await ping(loop, port_of(server)) == b"ping"
        with pytest.raises(RuntimeError, match="is already being awaited on serve_forever"):
            await server.serve_forever()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()  # cancelling serve_forever closes the server
        assert len(server.sockets) == 0
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()

    run(loop, main())


def test_close_ends_serve_forever(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        server.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.wait_closed()

    run(loop, main())


def test_multiple_hosts(loop):
    async def main():
        server = await loop.create_server(Echo, ["127.0.0.1", "127.0.0.2"], 0)
        hosts = sorted(sock.getsockname()[0] for sock in server.sockets)
        assert hosts == ["127.0.0.1", "127.0.0.2"]
        for sock in server.sockets:
            host, port = sock.getsockname()
            assert await ping(loop, port, host) == b"ping"
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_hosts_of_both_families(loop):
    async def main():
        server = await loop.create_server(Echo, ["127.0.0.1", "::1"], 0)
        families = sorted(sock.family for sock in server.sockets)
        assert families == sorted([socket.AF_INET, socket.AF_INET6])
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            assert await ping(loop, port, host) == b"ping"
        v6 = next(s for s in server.sockets if s.family == socket.AF_INET6)
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_reuse_address_and_reuse_port_options(loop):
    async def main():
        default = await loop.create_server(Echo, "127.0.0.1", 0)
        assert default.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        no_reuse = await loop.create_server(Echo, "127.0.0.1", 0, reuse_address=False)
        assert not no_reuse.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        first = await loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        port = port_of(first)
        assert first.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        second = await loop.create_server(Echo, "127.0.0.1", port, reuse_port=True)
        assert port_of(second) == port
        assert await ping(loop, port) == b"ping"
        for server in (default, no_reuse, first, second):
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_address_in_use(assert_same_error):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        exc = assert_same_error(
            lambda lp: lp.run_until_complete(lp.create_server(Echo, "127.0.0.1", port))
        )
    assert exc.errno == errno.EADDRINUSE


def test_listening_socket_given_as_sock(loop):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def main():
        server = await loop.create_server(Echo, sock=sock, backlog=5)
        assert server.sockets[0].fileno() == sock.fileno()
        assert server.sockets[0].getsockname() == ("127.0.0.1", port)
        assert await ping(loop, port) == b"ping"
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert sock.fileno() == -1  # the server closed the socket it was given


def test_argument_errors(loop, assert_same_error):
    def serve(**kwargs):
        return lambda lp: lp.run_until_complete(lp.create_server(Echo, **kwargs))

    with socket.socket() as sock:
        for kwargs in [
            {},
            {"host": "127.0.0.1", "port": 0, "sock": sock},
            {"port": 0, "sock": sock},
            {"host": "127.0.0.1", "port": 0, "ssl_handshake_timeout": 1},
        ]:
            assert isinstance(assert_same_error(serve(**kwargs)), ValueError)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError, match="^A Stream Socket was expected, got "):
            serve(sock=udp)(loop)


def test_connect_accepted_socket(loop):
    client, accepted = raw_tcp_pair()

    async def main():
        transport, protocol = await loop.connect_accepted_socket(Echo, accepted)
        assert isinstance(transport, asyncio.Transport)
        assert transport.get_protocol() is protocol
        assert transport.get_extra_info("peername") == client.getsockname()
        client.sendall(b"accepted")
        echoed = await loop.run_in_executor(None, client.recv, 100)
        client.close()
        return echoed

    assert run(loop, main()) == b"accepted"


def test_connect_accepted_socket_errors(loop, assert_same_error):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError, match="^A Stream Socket was expected, got "):
            run(loop, loop.connect_accepted_socket(Echo, udp))
    with socket.socket() as sock:
        exc = assert_same_error(
            lambda lp: lp.run_until_complete(
                lp.connect_accepted_socket(Echo, sock, ssl_handshake_timeout=1)
            )
        )
    assert isinstance(exc, ValueError)


def test_a_thousand_concurrent_connections(loop):
    count = 1000
    raise_fd_limit(2 * count + 200)

    async def client(port, i):
        transport, protocol = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port
        )
        message = b"%d;" % i
        transport.write(message)
        echoed = await protocol.received(len(message))
        return transport, protocol, echoed == message

    async def main():
        capture = Capturing(loop, Echo)
        server = await loop.create_server(capture, "127.0.0.1", 0, backlog=count)
        port = port_of(server)
        results = await asyncio.gather(*(client(port, i) for i in range(count)))
        assert len(capture.protocols) == count
        ok = sum(1 for _, _, good in results if good)
        for transport, _, _ in results:
            transport.close()
        await asyncio.gather(*(protocol.lost for _, protocol, _ in results))
        server.close()
        await server.wait_closed()
        return ok

    assert run(loop, main(), timeout=30) == count


def test_connections_one_by_one_and_in_bursts_larger_than_an_accept_batch(loop):
    # One at a time, each arrives at a listener the accept loop drained (ferroloop then
    # relies on the next edge, with no re-arm); 25 already queued when serving starts with
    # backlog=4 are accepted 4 per callback, the rest reported again.
    async def main():
        made = asyncio.Queue()

        class Made(asyncio.Protocol):
            def connection_made(self, transport):
                made.put_nowait(transport)

        listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        address = listener.getsockname()
        clients = []
        server = await loop.create_server(Made, sock=listener, backlog=4, start_serving=False)
        clients += [socket.create_connection(address) for _ in range(25)]
        await server.start_serving()
        for _ in range(25):
            (await asyncio.wait_for(made.get(), 5)).close()
        for _ in range(30):
            clients.append(socket.create_connection(address))
            (await asyncio.wait_for(made.get(), 5)).close()
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()
        return made.qsize()

    assert run(loop, main()) == 0


async def connected_clients(loop, server, count):
    """`count` clients of `server`, each having exchanged one echo."""
    clients = []
    for _ in range(count):
        transport, protocol = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port_of(server)
        )
        transport.write(b"hi")
        await protocol.received(2)
        clients.append((transport, protocol))
    return clients


def test_closing_a_server_keeps_its_connections(loop):
    async def main():
        capture = Capturing(loop, Echo)
        server = await loop.create_server(capture, "127.0.0.1", 0)
        port = port_of(server)
        clients = await connected_clients(loop, server, 3)
        server.close()
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        # Established connections still work after the listener is gone.
        for transport, protocol in clients:
            transport.write(b" again")
            assert await protocol.received(8) == b"hi again"
        for transport, protocol in clients:
            transport.close()
            await protocol.lost
        await server.wait_closed()
        assert len(capture.protocols) == 3

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="3.12 wait_closed waits for connections")
def test_wait_closed_waits_for_the_last_connection(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        clients = await connected_clients(loop, server, 2)
        server.close()
        waiter = asyncio.ensure_future(server.wait_closed())
        for transport, protocol in clients:
            for _ in range(5):
                await asyncio.sleep(0)
            assert not waiter.done()
            transport.close()
            await protocol.lost
        await waiter

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason="close_clients is new in 3.13")
@pytest.mark.parametrize("method", ["close_clients", "abort_clients"])
def test_close_and_abort_clients(loop, method):
    async def main():
        capture = Capturing(loop, lambda: EchoRecorder(loop))
        server = await loop.create_server(capture, "127.0.0.1", 0)
        clients = await connected_clients(loop, server, 3)
        server.close()
        getattr(server, method)()
        for peer in capture.protocols:
            assert await peer.lost is None
        for _, protocol in clients:
            await protocol.lost  # the client sees the server end go away
        await server.wait_closed()

    run(loop, main())


class Abandoning(asyncio.Protocol):
    """Stops reading and keeps no reference to its transport: nothing holds it then."""

    def __init__(self, made):
        self.made = made

    def connection_made(self, transport):
        transport.pause_reading()
        self.made.set_result(None)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="close_clients is new in 3.13")
def test_close_clients_skips_a_collected_connection(loop):
    async def main():
        made = loop.create_future()
        capture = Capturing(loop, lambda: EchoRecorder(loop))
        factories = iter([lambda: Abandoning(made), capture])
        server = await loop.create_server(lambda: next(factories)(), "127.0.0.1", 0)
        abandoned, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port_of(server))
        await made
        with pytest.warns(ResourceWarning, match="unclosed transport"):
            gc.collect()  # the abandoned server-side transport (a cycle with its core)
        [(kept, kept_protocol)] = await connected_clients(loop, server, 1)
        server.close()
        server.close_clients()
        assert await capture.protocols[0].lost is None
        await kept_protocol.lost
        abandoned.close()
        kept.close()
        await server.wait_closed()

    run(loop, main())


EMFILE_SCRIPT = r"""
import asyncio, errno, json, os, resource, socket, sys

if sys.argv[1] == "ferroloop":
    import ferroloop
    loop = ferroloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()

errors = []
first_error = loop.create_future()
accepted = []
all_accepted = loop.create_future()
COUNT = 3


def handler(loop, context):
    exc = context.get("exception")
    errors.append([context.get("message"), getattr(exc, "errno", None), type(exc).__name__])
    if not first_error.done():
        first_error.set_result(None)


loop.set_exception_handler(handler)


class Accepted(asyncio.Protocol):
    def connection_made(self, transport):
        accepted.append(transport.get_extra_info("peername"))
        if len(accepted) == COUNT:
            all_accepted.set_result(None)


async def main():
    # The clients wait in the listen backlog until the server starts accepting.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(COUNT)]
    server = await loop.create_server(Accepted, sock=listener, start_serving=False, backlog=10)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    fillers = []
    while True:  # take every free fd below the limit
        try:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
            break
    await server.start_serving()
    await asyncio.wait_for(first_error, 5)
    await asyncio.sleep(0.3)  # still out of fds: the accept loop must back off, not spin
    errors_while_starved = len(errors)
    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    await asyncio.wait_for(all_accepted, 5)
    serving = server.is_serving()
    names = sorted(c.getsockname() for c in clients)
    for c in clients:
        c.close()
    server.close()
    return {
        "errors": errors,
        "errors_while_starved": errors_while_starved,
        "serving": serving,
        "accepted_all": sorted(accepted) == names,
    }


print(json.dumps(loop.run_until_complete(main())))
loop.close()
"""


def test_accept_survives_emfile(loop):
    result = json.loads(run_script(EMFILE_SCRIPT, loop_name(loop)))
    assert result["errors"], "running out of fds was not reported to the exception handler"
    message, err, exc_type = result["errors"][0]
    assert (message, err, exc_type) == (
        "socket.accept() out of system resource",
        errno.EMFILE,
        "OSError",
    )
    # The stdlib reports once per accept attempt of a batch (at most `backlog`, 10) and then
    # waits; an accept loop retrying at once while out of fds would report thousands.
    assert result["errors_while_starved"] <= 20, "the accept loop spun while out of fds"
    assert result["serving"]
    assert result["accepted_all"]


@pytest.mark.parametrize("default_timeout", [None, 3.0])
def test_accepted_socket_is_the_one_socket_accept_gives(loop, default_timeout):
    """The server side of a connection, whatever socket.getdefaulttimeout() says: a plain
    socket.socket of the listener's family, type and protocol, non-blocking in the kernel
    and for Python, not inheritable; its peer and local addresses are the client's."""
    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(default_timeout)

    async def main():
        capture = Capturing(loop, lambda: Recorder(loop))
        server = await loop.create_server(capture, "127.0.0.1", 0)
        with socket.create_connection(("127.0.0.1", port_of(server))) as client:
            protocol = await capture.first()
            transport = await protocol.made
            sock = transport._sock  # both loops keep the socket here
            assert type(sock) is socket.socket
            assert (sock.family, sock.type, sock.proto) == (
                socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
            )
            assert sock.gettimeout() == 0.0
            assert not os.get_blocking(sock.fileno())
            assert not sock.get_inheritable()
            assert transport.get_extra_info("peername") == client.getsockname()
            assert transport.get_extra_info("sockname") == client.getpeername()
            transport.close()
            await protocol.lost
            assert transport.get_extra_info("sockname") == client.getpeername()
        server.close()
        await server.wait_closed()

    try:
        run(loop, main())
    finally:
        socket.setdefaulttimeout(saved)


def test_accepted_addresses_follow_each_connection(loop):
    """Peers on two hosts and two local addresses of one wildcard listener, in turn: each
    connection reports its own (the loop may reuse converted addresses)."""

    async def main():
        capture = Capturing(loop, lambda: Recorder(loop))
        server = await loop.create_server(capture, "0.0.0.0", 0)
        port = port_of(server)
        clients = []
        for source, target in [
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.2", "127.0.0.1"),
            ("127.0.0.1", "127.0.0.3"),
            ("127.0.0.2", "127.0.0.3"),
            ("127.0.0.1", "127.0.0.1"),
        ]:
            client = socket.create_connection((target, port), source_address=(source, 0))
            clients.append(client)
            while len(capture.protocols) < len(clients):
                await asyncio.sleep(0.005)
            protocol = capture.protocols[-1]
            transport = await protocol.made
            assert transport.get_extra_info("peername") == client.getsockname()
            assert transport.get_extra_info("sockname") == (target, port)
            transport.close()
            await protocol.lost
            assert transport.get_extra_info("sockname") == (target, port)
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


AUDIT_SCRIPT = r"""
import asyncio, json, socket, sys

if sys.argv[1] == "ferroloop":
    import ferroloop
    loop = ferroloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()

made = []
sys.addaudithook(lambda event, args: made.append(args) if event == "socket.__new__" else None)


async def main():
    accepted = loop.create_future()

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.set_result(transport)

    server = await loop.create_server(Accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    del made[:]
    with socket.create_connection(("127.0.0.1", port)):
        transport = await accepted
        events = [
            [family, kind & ~(socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC), proto]
            for sock, family, kind, proto in made
            if sock is transport._sock
        ]
        transport.close()
    server.close()
    await server.wait_closed()
    return events


print(json.dumps(loop.run_until_complete(main())))
loop.close()
"""


def test_accepted_socket_raises_the_audit_event(loop):
    """Audit hooks see the accepted socket made, as socket.accept() makes it."""
    events = json.loads(run_script(AUDIT_SCRIPT, loop_name(loop)))
    assert events == [[socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP]]
