"""loop.create_connection: every parameter of the stdlib signature, and its errors.

Scenarios with several resolved addresses use a name that only the loop's own getaddrinfo
knows (patched on the loop instance, as CPython's tests do): the machine resolves nothing
but localhost offline.
"""

import asyncio
import contextlib
import socket
import sys

import pytest
from net_support import (
    Echo,
    Recorder,
    ipv6_loopback_available,
    run,
)

needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")


@contextlib.contextmanager
def refused_ports(count, family=socket.AF_INET):
    """`count` loopback ports that refuse connections (bound, never listening) while open."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    socks = [socket.socket(family) for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        yield [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def echo_listener(loop, host="127.0.0.1", family=socket.AF_INET):
    """A stdlib-free listening socket served by the loop under test (yields the port)."""
    server = run(loop, loop.create_server(Echo, host, 0, family=family))
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        run(loop, server.wait_closed())


def fake_resolver(loop, name, addresses):
    """Make `loop.getaddrinfo` resolve `name` to `addresses` ((host, port) pairs, in order)."""
    real = loop.getaddrinfo

    async def getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        if host != name:
            return await real(host, port, family=family, type=type, proto=proto, flags=flags)
        infos = []
        for addr_host, addr_port in addresses:
            fam = socket.AF_INET6 if ":" in addr_host else socket.AF_INET
            sockaddr = (
                (addr_host, addr_port) if fam == socket.AF_INET else (addr_host, addr_port, 0, 0)
            )
            if family in (0, fam):
                infos.append((fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return infos

    loop.getaddrinfo = getaddrinfo


async def connect_and_ping(loop, *args, **kwargs):
    transport, protocol = await loop.create_connection(lambda: Recorder(loop), *args, **kwargs)
    transport.write(b"ping")
    assert await protocol.received(4) == b"ping"
    peername = transport.get_extra_info("peername")
    sockname = transport.get_extra_info("sockname")
    transport.close()
    await protocol.lost
    return peername, sockname


def test_host_and_port(loop):
    with echo_listener(loop) as port:
        peername, _ = run(loop, connect_and_ping(loop, "127.0.0.1", port))
        assert peername == ("127.0.0.1", port)
        peername, _ = run(loop, connect_and_ping(loop, "localhost", port))
        assert peername == ("127.0.0.1", port)
        peername, _ = run(loop, connect_and_ping(loop, host="127.0.0.1", port=str(port)))
        assert peername == ("127.0.0.1", port)


def test_connected_socket(loop):
    with echo_listener(loop) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        fileno = sock.fileno()

        async def main():
            transport, protocol = await loop.create_connection(lambda: Recorder(loop), sock=sock)
            assert transport.get_extra_info("socket").fileno() == fileno
            assert transport.get_extra_info("peername") == ("127.0.0.1", port)
            transport.write(b"via sock")
            assert await protocol.received(8) == b"via sock"
            transport.close()
            await protocol.lost

        run(loop, main())
        assert sock.fileno() == -1  # the transport owned the socket and closed it


def test_local_addr(loop):
    with echo_listener(loop) as port:
        _, sockname = run(
            loop, connect_and_ping(loop, "127.0.0.1", port, local_addr=("127.0.0.2", 0))
        )
        assert sockname[0] == "127.0.0.2"


def test_local_addr_in_use(assert_same_error):
    with socket.create_server(("127.0.0.1", 0)) as busy, refused_ports(1) as (target,):
        local = busy.getsockname()
        exc = assert_same_error(
            lambda lp: lp.run_until_complete(
                lp.create_connection(asyncio.Protocol, "127.0.0.1", target, local_addr=local)
            )
        )
        assert isinstance(exc, OSError)


def test_family_restricts_resolution(loop, assert_same_error):
    with echo_listener(loop) as port:
        peername, _ = run(loop, connect_and_ping(loop, "localhost", port, family=socket.AF_INET))
        assert peername == ("127.0.0.1", port)
    exc = assert_same_error(
        lambda lp: lp.run_until_complete(
            lp.create_connection(asyncio.Protocol, "127.0.0.1", 1, family=socket.AF_INET6)
        )
    )
    assert isinstance(exc, socket.gaierror)


def test_proto_and_flags_reach_the_resolver(loop, assert_same_error):
    with echo_listener(loop) as port:
        peername, _ = run(
            loop,
            connect_and_ping(
                loop,
                "127.0.0.1",
                port,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            ),
        )
        assert peername == ("127.0.0.1", port)
    exc = assert_same_error(
        lambda lp: lp.run_until_complete(
            lp.create_connection(asyncio.Protocol, "localhost", 1, flags=socket.AI_NUMERICHOST)
        )
    )
    assert isinstance(exc, socket.gaierror)


def test_refused(assert_same_error):
    with refused_ports(1) as (port,):
        exc = assert_same_error(
            lambda lp: lp.run_until_complete(
                lp.create_connection(asyncio.Protocol, "127.0.0.1", port)
            )
        )
    assert isinstance(exc, ConnectionRefusedError)
    assert str(exc) == f"[Errno 111] Connect call failed ('127.0.0.1', {port})"


def test_argument_errors(assert_same_error):
    def connect(**kwargs):
        return lambda lp: lp.run_until_complete(lp.create_connection(asyncio.Protocol, **kwargs))

    with socket.socket() as sock:
        for kwargs in [
            {},
            {"host": "127.0.0.1", "port": 1, "sock": sock},
            {"port": 1, "sock": sock},
        ]:
            assert isinstance(assert_same_error(connect(**kwargs)), ValueError)


def test_datagram_socket_is_rejected(loop):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(ValueError, match="^A Stream Socket was expected, got "):
            run(loop, loop.create_connection(asyncio.Protocol, sock=sock))


def test_next_address_is_tried_after_a_refusal(loop):
    with echo_listener(loop) as port, refused_ports(2) as (bad1, bad2):
        fake_resolver(
            loop, "multi.test", [("127.0.0.1", bad1), ("127.0.0.1", bad2), ("127.0.0.1", port)]
        )
        peername, _ = run(loop, connect_and_ping(loop, "multi.test", 0))
        assert peername == ("127.0.0.1", port)


def test_all_addresses_refused_reports_each(loop, stdlib_error):
    with refused_ports(2) as (bad1, bad2):
        addresses = [("127.0.0.1", bad1), ("127.0.0.1", bad2)]

        def action(lp):
            fake_resolver(lp, "multi.test", addresses)
            lp.run_until_complete(lp.create_connection(asyncio.Protocol, "multi.test", 0))

        expected = stdlib_error(action)
        with pytest.raises(OSError) as info:
            action(loop)
    assert type(info.value) is type(expected) is OSError
    assert (
        str(info.value)
        == str(expected)
        == (
            f"Multiple exceptions: [Errno 111] Connect call failed ('127.0.0.1', {bad1}), "
            f"[Errno 111] Connect call failed ('127.0.0.1', {bad2})"
        )
    )


@pytest.mark.skipif(sys.version_info < (3, 12), reason="all_errors is new in 3.12")
@pytest.mark.parametrize("happy_eyeballs_delay", [None, 0.05])
def test_all_errors_raises_an_exception_group(loop, happy_eyeballs_delay):
    with refused_ports(2) as (bad1, bad2):
        fake_resolver(loop, "multi.test", [("127.0.0.1", bad1), ("127.0.0.1", bad2)])
        with pytest.raises(ExceptionGroup) as info:
            run(
                loop,
                loop.create_connection(
                    asyncio.Protocol,
                    "multi.test",
                    0,
                    all_errors=True,
                    happy_eyeballs_delay=happy_eyeballs_delay,
                ),
            )
    group = info.value
    assert group.message == "create_connection failed"
    assert [type(exc) for exc in group.exceptions] == [ConnectionRefusedError] * 2
    assert [str(exc) for exc in group.exceptions] == [
        f"[Errno 111] Connect call failed ('127.0.0.1', {bad1})",
        f"[Errno 111] Connect call failed ('127.0.0.1', {bad2})",
    ]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="all_errors is new in 3.12")
def test_all_errors_with_a_single_address(loop):
    with refused_ports(1) as (port,):
        with pytest.raises(ExceptionGroup) as info:
            run(loop, loop.create_connection(asyncio.Protocol, "127.0.0.1", port, all_errors=True))
    assert [type(exc) for exc in info.value.exceptions] == [ConnectionRefusedError]


def test_happy_eyeballs_connects_to_the_address_that_answers(loop):
    with echo_listener(loop) as port, refused_ports(1) as (bad,):
        fake_resolver(loop, "multi.test", [("127.0.0.1", bad), ("127.0.0.1", port)])
        peername, _ = run(loop, connect_and_ping(loop, "multi.test", 0, happy_eyeballs_delay=0.25))
        assert peername == ("127.0.0.1", port)


@needs_ipv6
@pytest.mark.parametrize(
    "kwargs, order",
    [
        ({}, ["a6", "b6", "c4"]),
        ({"interleave": 1}, ["a6", "c4", "b6"]),
        ({"interleave": 2}, ["a6", "b6", "c4"]),
        ({"happy_eyeballs_delay": 0.05}, ["a6", "c4", "b6"]),  # interleave defaults to 1
        ({"happy_eyeballs_delay": 0.05, "interleave": 2}, ["a6", "b6", "c4"]),
    ],
)
def test_interleave_orders_attempts_by_family(loop, kwargs, order):
    with refused_ports(2, socket.AF_INET6) as (a6, b6), refused_ports(1) as (c4,):
        ports = {"a6": a6, "b6": b6, "c4": c4}
        fake_resolver(loop, "multi.test", [("::1", a6), ("::1", b6), ("127.0.0.1", c4)])
        with pytest.raises(OSError) as info:
            run(loop, loop.create_connection(asyncio.Protocol, "multi.test", 0, **kwargs))
    message = str(info.value)
    assert message.startswith("Multiple exceptions: ")
    positions = [message.index(f"', {ports[name]}") for name in order]
    assert positions == sorted(positions), message


@needs_ipv6
def test_ipv6_address_with_happy_eyeballs(loop):
    with echo_listener(loop, "::1", socket.AF_INET6) as port:
        fake_resolver(loop, "multi.test", [("::1", port), ("127.0.0.1", 9)])
        peername, _ = run(loop, connect_and_ping(loop, "multi.test", 0, happy_eyeballs_delay=0.25))
        assert peername[:2] == ("::1", port)
