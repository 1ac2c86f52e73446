"""loop.getaddrinfo / loop.getnameinfo match the socket module (no network beyond loopback)."""

import asyncio
import socket

import pytest

ADDRINFO_CALLS = {
    "ipv4": (("127.0.0.1", 80), {}),
    "bytes host": ((b"127.0.0.1", 80), {}),
    "str port": (("127.0.0.1", "80"), {}),
    "no port": (("127.0.0.1", None), {}),
    "passive": ((None, 8080), {"flags": socket.AI_PASSIVE}),
    "filtered": (
        ("127.0.0.1", 80),
        {"family": socket.AF_INET, "type": socket.SOCK_STREAM, "proto": socket.IPPROTO_TCP},
    ),
    "numeric": (("127.0.0.1", 80), {"flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV}),
    "ipv6": (("::1", 443), {"flags": socket.AI_NUMERICHOST}),
    # Numeric hosts are answered without the executor; these edge their recognition.
    "ipv6 bytes, bytes port": ((b"::1", b"443"), {}),
    "ipv4, port 0": (("127.0.0.1", 0), {"type": socket.SOCK_DGRAM}),
    "ipv4, service name": (("127.0.0.1", "http"), {}),
    "ipv6 with a scope id": (("::1%1", 80), {}),
    "localhost name": (("localhost", 80), {"family": socket.AF_INET}),
    "port above 65535": (("127.0.0.1", 70000), {}),  # the C library wraps it, as it does
}


@pytest.mark.parametrize("name", sorted(ADDRINFO_CALLS))
def test_getaddrinfo_matches_socket_getaddrinfo(loop, name):
    args, kwargs = ADDRINFO_CALLS[name]
    expected = socket.getaddrinfo(*args, **kwargs)
    assert loop.run_until_complete(loop.getaddrinfo(*args, **kwargs)) == expected


def test_many_concurrent_getaddrinfo_calls(loop):
    async def main():
        return await asyncio.gather(*(loop.getaddrinfo("127.0.0.1", port) for port in range(20)))

    results = loop.run_until_complete(main())
    assert results == [socket.getaddrinfo("127.0.0.1", port) for port in range(20)]


@pytest.mark.parametrize("sockaddr", [("127.0.0.1", 80), ("::1", 443, 0, 0)])
def test_getnameinfo_matches_socket_getnameinfo(loop, sockaddr):
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    assert loop.run_until_complete(loop.getnameinfo(sockaddr, flags)) == socket.getnameinfo(
        sockaddr, flags
    )


def test_getnameinfo_default_flags(loop):
    expected = socket.getnameinfo(("127.0.0.1", 80), 0)
    assert loop.run_until_complete(loop.getnameinfo(("127.0.0.1", 80))) == expected


BAD_LOOKUPS = {
    # Each fails inside the resolver without sending a query.
    "not numeric": lambda lp: lp.getaddrinfo("not-an-ip", 80, flags=socket.AI_NUMERICHOST),
    "wrong family": lambda lp: lp.getaddrinfo(
        "127.0.0.1", 80, family=socket.AF_INET6, flags=socket.AI_NUMERICHOST
    ),
    "unknown service": lambda lp: lp.getaddrinfo("127.0.0.1", "no-such-service-xyz"),
    "no host no port": lambda lp: lp.getaddrinfo(None, None),
    "ipv4 as IPv6 family": lambda lp: lp.getaddrinfo("127.0.0.1", 80, family=socket.AF_INET6),
    "negative port": lambda lp: lp.getaddrinfo("127.0.0.1", -1),
}


@pytest.mark.parametrize("name", sorted(BAD_LOOKUPS))
def test_failed_lookup_raises_gaierror_like_the_stdlib(assert_same_error, name):
    lookup = BAD_LOOKUPS[name]
    exc = assert_same_error(lambda lp: lp.run_until_complete(lookup(lp)))
    assert isinstance(exc, socket.gaierror)


@pytest.mark.parametrize(
    "call",
    [
        lambda lp: lp.getaddrinfo(127, 80),
        lambda lp: lp.getaddrinfo("127.0.0.1", 80.5),
        lambda lp: lp.getnameinfo("127.0.0.1"),
    ],
    ids=["int host", "float port", "str sockaddr"],
)
def test_bad_argument_types_raise_like_the_stdlib(assert_same_error, call):
    exc = assert_same_error(lambda lp: lp.run_until_complete(call(lp)))
    assert isinstance(exc, (TypeError, OSError))


def lookup_outcome(lookup):
    """What a lookup gives: its answer with reprs (enum members included), or its error."""
    try:
        return [tuple(map(repr, entry)) for entry in lookup()]
    except OSError as exc:
        return (type(exc), str(exc))


def test_numeric_lookups_match_socket_getaddrinfo_across_arguments(loop):
    # Numeric hosts are answered without the resolver thread; every combination of the
    # arguments must still give exactly what socket.getaddrinfo gives, errors included.
    hosts = ["127.0.0.1", "::1", "0:0::ffff:1.2.3.4", b"10.1.2.3", "255.255.255.255"]
    ports = [0, "443", None, 65535]
    families = [0, socket.AF_INET, socket.AF_INET6]
    kinds = [0, socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW]
    protos = [0, socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP]
    cases = [
        (host, port, family, kind, proto)
        for host in hosts
        for port in ports
        for family in families
        for kind in kinds
        for proto in protos
    ]

    async def via_loop():
        outcomes = []
        for host, port, family, kind, proto in cases:
            try:
                answer = await loop.getaddrinfo(host, port, family=family, type=kind, proto=proto)
            except OSError as exc:
                outcomes.append((type(exc), str(exc)))
            else:
                outcomes.append([tuple(map(repr, entry)) for entry in answer])
        return outcomes

    expected = [lookup_outcome(lambda c=case: socket.getaddrinfo(*c)) for case in cases]
    assert loop.run_until_complete(via_loop()) == expected
