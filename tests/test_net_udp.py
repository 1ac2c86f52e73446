"""Datagram endpoints: create_datagram_endpoint over UDP (IPv4/IPv6) and Unix datagram
sockets, its argument checks, and the datagram transport it returns.

Loopback only. Where an error message varies between Python versions, the test compares
against what the stdlib loop of the running version raises.
"""

import asyncio
import errno
import gc
import logging
import os
import pathlib
import re
import socket
import struct
import sys
import threading
import time

import pytest
from net_support import ipv6_loopback_available, loop_name, loop_script, open_fds, run, run_script

needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
needs_reuse_port = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
needs_af_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX")


class Datagrams(asyncio.DatagramProtocol):
    """Records what the transport calls; with `echo` sends each datagram back."""

    def __init__(self, echo=False):
        self.loop = asyncio.get_running_loop()
        self.echo = echo
        self.transport = None
        self.events = []  # "made", "datagram", "error", "lost" in call order
        self.datagrams = []  # (data, addr)
        self.errors = []
        self.made = self.loop.create_future()
        self.lost = self.loop.create_future()
        self._waiters = []

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def datagram_received(self, data, addr):
        assert isinstance(data, bytes), type(data)
        self.events.append("datagram")
        self.datagrams.append((data, addr))
        if self.echo:
            self.transport.sendto(data, addr)
        self._wake()

    def error_received(self, exc):
        self.events.append("error")
        self.errors.append(exc)
        self._wake()

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)
        self._wake()

    def _wake(self):
        for count, fut in list(self._waiters):
            if not fut.done() and (len(self.datagrams) >= count or self.errors or self.lost.done()):
                fut.set_result(None)

    async def received(self, count=1):
        """Wait until `count` datagrams arrived (or an error, or the end) and return them."""
        if len(self.datagrams) < count and not self.errors and not self.lost.done():
            fut = self.loop.create_future()
            self._waiters.append((count, fut))
            await fut
        return list(self.datagrams)


def recorder():
    return Datagrams()


def echoer():
    return Datagrams(echo=True)


async def close_endpoint(transport, protocol):
    transport.close()
    assert await protocol.lost is None


def udp_port_nobody_uses():
    """A loopback UDP port with no socket bound (datagrams to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- echo --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)], ids=["ipv4", "ipv6"]
)
def test_udp_echo(loop, host):
    async def main():
        server, server_protocol = await loop.create_datagram_endpoint(echoer, local_addr=(host, 0))
        server_address = server.get_extra_info("sockname")
        client, protocol = await loop.create_datagram_endpoint(
            recorder, remote_addr=server_address[:2]
        )
        client_address = client.get_extra_info("sockname")
        messages = [b"first", b"second", b"x" * 60000]
        for message in messages:
            client.sendto(message)
        received = await protocol.received(len(messages))
        assert [data for data, _ in received] == messages
        assert {addr for _, addr in received} == {server_address}
        assert [addr for _, addr in server_protocol.datagrams] == [client_address] * 3
        await close_endpoint(client, protocol)
        await close_endpoint(server, server_protocol)
        assert protocol.events == ["made", "datagram", "datagram", "datagram", "lost"]

    run(loop, main())


def test_unconnected_endpoints_talk_with_sendto(loop):
    async def main():
        a, pa = await loop.create_datagram_endpoint(recorder, local_addr=("127.0.0.1", 0))
        b, pb = await loop.create_datagram_endpoint(echoer, local_addr=("127.0.0.1", 0))
        a.sendto(b"ping", b.get_extra_info("sockname"))
        assert await pa.received() == [(b"ping", b.get_extra_info("sockname"))]
        await close_endpoint(a, pa)
        await close_endpoint(b, pb)

    run(loop, main())


def test_pause_reading_holds_datagrams_until_resume(loop):
    class Pausing(Datagrams):
        # Pauses itself on the first datagram, as a protocol with a full queue would.
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"first":
                self.transport.pause_reading()

    async def main():
        a, pa = await loop.create_datagram_endpoint(Pausing, local_addr=("127.0.0.1", 0))
        b, pb = await loop.create_datagram_endpoint(recorder, local_addr=("127.0.0.1", 0))
        assert a.is_reading()
        for message in (b"first", b"second", b"third"):
            b.sendto(message, a.get_extra_info("sockname"))
        await pa.received(1)
        for _ in range(20):
            await asyncio.sleep(0.005)
        while_paused = ([data for data, _ in pa.datagrams], a.is_reading())
        a.pause_reading()  # again: nothing changes
        a.resume_reading()
        assert a.is_reading()
        a.resume_reading()  # again: nothing changes
        after = [data for data, _ in await pa.received(3)]
        await close_endpoint(b, pb)
        a.close()
        closed = (a.is_reading(), a.pause_reading(), a.resume_reading(), a.is_reading())
        assert await pa.lost is None
        return while_paused, after, closed

    while_paused, after, closed = run(loop, main())
    assert while_paused == ([b"first"], False)
    assert after == [b"first", b"second", b"third"]
    assert closed == (False, None, None, False)


def test_addresses_follow_each_sender_and_each_destination_form(loop):
    # Several peers in turn, and several forms of the same address: the tuple received, a new
    # equal tuple, a host name, a bytes host.
    async def main():
        hub, hub_protocol = await loop.create_datagram_endpoint(
            recorder, local_addr=("127.0.0.1", 0)
        )
        peers = [
            await loop.create_datagram_endpoint(recorder, local_addr=("127.0.0.1", 0))
            for _ in range(3)
        ]
        hub_address = hub.get_extra_info("sockname")
        for round_ in range(3):
            for i, (peer, _) in enumerate(peers):
                peer.sendto(b"%d:%d" % (round_, i), hub_address)
            await hub_protocol.received(3 * (round_ + 1))
        got = hub_protocol.datagrams
        names = [peer.get_extra_info("sockname") for peer, _ in peers]
        assert got == [(b"%d:%d" % (r, i), names[i]) for r in range(3) for i in range(3)]
        assert all(type(addr) is tuple and type(addr[0]) is str for _, addr in got)
        assert all(type(addr[1]) is int for _, addr in got)

        first_protocol, port = peers[0][1], names[0][1]
        hub.sendto(b"received tuple", got[0][1])
        hub.sendto(b"equal tuple", ("127.0.0.1", port))
        hub.sendto(b"host name", ("localhost", port))
        hub.sendto(b"bytes host", (b"127.0.0.1", port))
        assert [data for data, _ in await first_protocol.received(4)] == [
            b"received tuple",
            b"equal tuple",
            b"host name",
            b"bytes host",
        ]
        assert {addr for _, addr in first_protocol.datagrams} == {hub_address}
        for transport, protocol in [(hub, hub_protocol), *peers]:
            await close_endpoint(transport, protocol)

    run(loop, main())


@pytest.mark.parametrize("address", ["in range", "port too large", "bool port"])
def test_sendto_an_odd_address_behaves_as_on_the_stdlib(loop, stdlib_error, address):
    def action(lp):
        async def main():
            sender, protocol = await lp.create_datagram_endpoint(
                recorder, local_addr=("127.0.0.1", 0)
            )
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receiver.bind(("127.0.0.1", 0))
            port = receiver.getsockname()[1]
            try:
                if address == "in range":
                    sender.sendto(b"x", ("127.0.0.1", port))
                    await asyncio.sleep(0.05)
                    receiver.setblocking(False)
                    raise RuntimeError(receiver.recvfrom(10)[0])
                if address == "port too large":
                    sender.sendto(b"x", ("127.0.0.1", 70000))
                else:
                    sender.sendto(b"x", ("127.0.0.1", True))
                await asyncio.sleep(0.05)
                raise RuntimeError(protocol.events)
            finally:
                receiver.close()
                sender.close()
                await asyncio.sleep(0)

        lp.run_until_complete(main())

    expected = stdlib_error(action)
    with pytest.raises(type(expected)) as info:
        action(loop)
    assert str(info.value) == str(expected)


def test_sendto_errors_reach_error_received_as_on_the_stdlib(loop):
    # No SO_BROADCAST: the kernel refuses the broadcast address (EACCES).
    async def main():
        sender, protocol = await loop.create_datagram_endpoint(
            recorder, local_addr=("127.0.0.1", 0)
        )
        sender.sendto(b"x", ("255.255.255.255", 9))
        await asyncio.sleep(0.05)
        assert protocol.events == ["made", "error"]
        [error] = protocol.errors
        assert type(error) is PermissionError
        assert error.errno == errno.EACCES
        assert str(error) == f"[Errno {errno.EACCES}] {os.strerror(errno.EACCES)}"
        await close_endpoint(sender, protocol)

    run(loop, main())


AUDITED_SENDS = """
import asyncio, socket, sys
events = []
sys.addaudithook(lambda event, args: event == "socket.sendto" and events.append(args[1]))
{setup}
class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)
async def main():
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    address = server.get_extra_info("sockname")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.sendto(b"ping", address)
    client.setblocking(False)
    for _ in range(100):
        await asyncio.sleep(0.01)
        try:
            client.recv(10)
            break
        except BlockingIOError:
            pass
    server.sendto(b"to a tuple", ("127.0.0.1", client.getsockname()[1]))
    await asyncio.sleep(0.05)
    server.close()
    print([addr == client.getsockname() for addr in events])
{run}
"""


def test_sendto_raises_the_socket_sendto_audit_event(loop):
    out = run_script(loop_script(AUDITED_SENDS, loop), timeout=60)
    # The client's own send, the echo, the send to a new tuple.
    assert out.strip() == "[False, True, True]"


def test_empty_datagram_is_received(loop):
    async def main():
        server, sp = await loop.create_datagram_endpoint(recorder, local_addr=("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(LOCAL)
            peer.sendto(b"", server.get_extra_info("sockname"))
            assert await sp.received() == [(b"", peer.getsockname())]
        await close_endpoint(server, sp)

    run(loop, main())


def test_connect_refused_gives_error_received(loop):
    port = udp_port_nobody_uses()

    async def main():
        transport, protocol = await loop.create_datagram_endpoint(
            recorder, remote_addr=("127.0.0.1", port)
        )
        # The ICMP port-unreachable arrives asynchronously; send until it is reported.
        for _ in range(50):
            transport.sendto(b"anyone?")
            try:
                await asyncio.wait_for(asyncio.shield(protocol.received()), 0.1)
            except TimeoutError:
                continue
            break
        assert protocol.errors, "no error_received"
        assert isinstance(protocol.errors[0], ConnectionRefusedError)
        assert not transport.is_closing()
        assert not protocol.lost.done()
        await close_endpoint(transport, protocol)
        assert protocol.lost.result() is None

    run(loop, main())


def test_100000_datagrams_none_lost(loop):
    """A blocking sender thread, paced so the receive buffer never overflows."""
    total = 100_000
    window = 1_000  # datagrams in flight; far below what the receive buffer holds
    credit = threading.BoundedSemaphore(window)

    class Counting(asyncio.DatagramProtocol):
        def __init__(self):
            self.seen = []
            self.done = loop.create_future()
            self.lost = loop.create_future()

        def datagram_received(self, data, addr):
            self.seen.append(data)
            credit.release()
            if len(self.seen) == total:
                self.done.set_result(None)

        def error_received(self, exc):
            self.done.set_exception(exc)

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    def send_all(address, sender):
        for seq in range(total):
            if not credit.acquire(timeout=5):
                raise AssertionError(f"receiver stalled at datagram {seq}")
            sender.send(struct.pack("!I", seq))

    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0))
        transport, protocol = await loop.create_datagram_endpoint(Counting, sock=sock)
        address = sock.getsockname()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.connect(address)
            started = time.monotonic()
            sending = loop.run_in_executor(None, send_all, address, sender)
            await protocol.done
            await sending
            elapsed = time.monotonic() - started
        assert len(protocol.seen) == total
        assert protocol.seen == [struct.pack("!I", seq) for seq in range(total)]
        transport.close()
        await protocol.lost
        return elapsed

    elapsed = run(loop, main(), timeout=10)
    assert elapsed < 10


@needs_af_unix
def test_unix_datagram_echo(loop, tmp_path):
    server_path = str(tmp_path / "server.sock")
    client_path = str(tmp_path / "client.sock")

    async def main():
        server, sp = await loop.create_datagram_endpoint(
            echoer, local_addr=server_path, family=socket.AF_UNIX
        )
        client, cp = await loop.create_datagram_endpoint(
            recorder, local_addr=client_path, remote_addr=server_path, family=socket.AF_UNIX
        )
        assert server.get_extra_info("sockname") == server_path
        assert client.get_extra_info("sockname") == client_path
        assert client.get_extra_info("peername") == server_path
        assert server.get_extra_info("socket").family == socket.AF_UNIX
        client.sendto(b"over a path")
        client.sendto(b"y" * 100_000)
        received = await cp.received(2)
        assert received == [(b"over a path", server_path), (b"y" * 100_000, server_path)]
        assert [addr for _, addr in sp.datagrams] == [client_path, client_path]
        await close_endpoint(client, cp)
        await close_endpoint(server, sp)

    run(loop, main())


@needs_af_unix
def test_unix_stale_socket_file_is_replaced(loop, tmp_path):
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()  # the file stays behind
    assert os.path.exists(path)

    async def main():
        transport, protocol = await loop.create_datagram_endpoint(
            recorder, local_addr=path, family=socket.AF_UNIX
        )
        assert transport.get_extra_info("sockname") == path
        await close_endpoint(transport, protocol)

    run(loop, main())


@needs_af_unix
def test_unix_path_that_is_not_a_socket_is_left_alone(loop, tmp_path, stdlib_error):
    path = tmp_path / "regular-file"
    path.write_text("keep me")

    def action(lp):
        lp.run_until_complete(
            lp.create_datagram_endpoint(recorder, local_addr=str(path), family=socket.AF_UNIX)
        )

    expected = stdlib_error(action)
    assert isinstance(expected, OSError) and expected.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as info:
        action(loop)
    assert type(info.value) is type(expected)
    assert str(info.value) == str(expected)
    assert path.read_text() == "keep me"


@needs_af_unix
def test_unix_unbound_endpoint_sends_to_a_path(loop, tmp_path):
    path = str(tmp_path / "target.sock")

    async def main():
        target, tp = await loop.create_datagram_endpoint(
            recorder, local_addr=path, family=socket.AF_UNIX
        )
        sender, spr = await loop.create_datagram_endpoint(recorder, family=socket.AF_UNIX)
        sender.sendto(b"anonymous", path)
        assert [data for data, _ in await tp.received()] == [b"anonymous"]
        await close_endpoint(sender, spr)
        await close_endpoint(target, tp)

    run(loop, main())


# ---- argument errors: the stdlib's exception types and messages --------------------------

P = asyncio.DatagramProtocol
SOCKETS = {
    "<tcp>": socket.socket,
    "<udp>": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
}


def _endpoint(*args, resolver=None, **kwargs):
    """An action calling `loop.create_datagram_endpoint(*args, **kwargs)`; a `sock` given as
    a marker becomes a fresh socket, closed afterwards; `resolver` replaces getaddrinfo."""

    def action(lp):
        made = []
        if resolver is not None:
            lp.getaddrinfo = resolver
        if kwargs.get("sock") in SOCKETS:
            made.append(SOCKETS[kwargs["sock"]]())
            kwargs_now = {**kwargs, "sock": made[-1]}
        else:
            kwargs_now = kwargs
        try:
            transport, _ = lp.run_until_complete(lp.create_datagram_endpoint(*args, **kwargs_now))
            transport.close()  # an unexpected success: the stdlib run then fails the test
        finally:
            for sock in made:
                sock.close()

    return action


def _answering(*infos):
    async def getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        return list(infos)

    return getaddrinfo


async def _failing_resolver(host, port, *, family=0, type=0, proto=0, flags=0):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def udp4(host, port):
    return (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", (host, port))


def udp6(host, port):
    return (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", (host, port, 0, 0))


LOCAL = ("127.0.0.1", 0)
ARGUMENT_ERRORS = {
    "stream-sock": _endpoint(P, sock="<tcp>"),
    "sock-and-local_addr": _endpoint(P, LOCAL, sock="<udp>"),
    "sock-and-remote_addr": _endpoint(P, remote_addr=LOCAL, sock="<udp>"),
    "sock-and-family": _endpoint(P, family=socket.AF_INET, sock="<udp>"),
    "sock-and-proto": _endpoint(P, proto=socket.IPPROTO_UDP, sock="<udp>"),
    "sock-and-flags": _endpoint(P, flags=socket.AI_PASSIVE, sock="<udp>"),
    "sock-and-reuse_port": _endpoint(P, reuse_port=True, sock="<udp>"),
    "sock-and-allow_broadcast": _endpoint(P, allow_broadcast=True, sock="<udp>"),
    "sock-and-everything": _endpoint(
        P, LOCAL, LOCAL, family=2, proto=17, flags=1, reuse_port=1, allow_broadcast=1, sock="<udp>"
    ),
    "nothing": _endpoint(P),
    "unix-bytes-local_addr": _endpoint(P, b"/nonexistent/s", family=socket.AF_UNIX),
    "unix-pathlike-remote_addr": _endpoint(
        P, remote_addr=pathlib.Path("/nonexistent/s"), family=socket.AF_UNIX
    ),
    "unix-tuple-local_addr": _endpoint(P, LOCAL, family=socket.AF_UNIX),
    "unix-missing-remote": _endpoint(
        P, remote_addr="/nonexistent/ferroloop.sock", family=socket.AF_UNIX
    ),
    "unix-unwritable-local": _endpoint(P, "/nonexistent/ferroloop.sock", family=socket.AF_UNIX),
    "address-not-a-tuple": _endpoint(P, "127.0.0.1"),
    "address-4-tuple": _endpoint(P, remote_addr=("::1", 9, 0, 0)),
    "families-do-not-match": _endpoint(P, LOCAL, ("::1", 9)),
    "family-excludes-address": _endpoint(P, LOCAL, family=socket.AF_INET6),
    "bad-proto": _endpoint(P, family=socket.AF_INET, proto=9999),
    "bad-family": _endpoint(P, family=12345),
    "not-a-local-address": _endpoint(P, ("192.0.2.1", 0)),
    "resolver-empty": _endpoint(P, ("udp.test", 0), resolver=_answering()),
    "resolver-error": _endpoint(P, remote_addr=("udp.test", 9), resolver=_failing_resolver),
    "every-pair-fails": _endpoint(
        P,
        ("udp.test", 0),
        resolver=_answering(udp6("2001:db8::1", 0), udp4("192.0.2.1", 0)),
    ),
    "local-resolves-to-no-remote-family": _endpoint(
        P, ("udp.test", 0), ("::1", 9), resolver=_answering(udp4("127.0.0.1", 0))
    ),
}


def _without_fds(text):
    # A socket's repr in a message names its fd, which may differ between the two runs.
    return re.sub(r"fd=\d+", "fd=N", text)


@pytest.mark.parametrize("case", sorted(ARGUMENT_ERRORS))
def test_argument_errors_match_the_stdlib(loop, stdlib_error, case):
    action = ARGUMENT_ERRORS[case]
    expected = stdlib_error(action)
    with pytest.raises(BaseException) as info:
        action(loop)
    assert type(info.value) is type(expected)
    assert _without_fds(str(info.value)) == _without_fds(str(expected))


def test_address_in_use_matches_the_stdlib(loop, stdlib_error):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        action = _endpoint(P, busy.getsockname())
        expected = stdlib_error(action)
        assert isinstance(expected, OSError) and expected.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as info:
            action(loop)
    assert type(info.value) is type(expected)
    assert str(info.value) == str(expected)


def test_reuse_address_is_not_a_parameter(loop):
    # Removed in 3.11: the stdlib's signature no longer has it.
    with pytest.raises(TypeError, match="unexpected keyword argument 'reuse_address'"):
        loop.run_until_complete(
            loop.create_datagram_endpoint(P, local_addr=LOCAL, reuse_address=True)
        )


def test_errors_leave_no_fd_open(loop):
    for case in ("family-excludes-address", "not-a-local-address", "every-pair-fails"):
        with pytest.raises(OSError):
            ARGUMENT_ERRORS[case](loop)
    gc.collect()
    before = open_fds()
    for case in ("not-a-local-address", "every-pair-fails", "bad-proto", "unix-missing-remote"):
        with pytest.raises(OSError):
            ARGUMENT_ERRORS[case](loop)
    assert open_fds() - before == set()


# ---- address pairs -----------------------------------------------------------------------


def test_next_address_pair_is_tried_when_one_fails(loop):
    async def main():
        loop.getaddrinfo = _answering(udp6("2001:db8::1", 0), udp4("127.0.0.1", 0))
        transport, protocol = await loop.create_datagram_endpoint(
            recorder, local_addr=("udp.test", 0)
        )
        sockname = transport.get_extra_info("sockname")
        await close_endpoint(transport, protocol)
        return sockname

    host, port = run(loop, main())
    assert host == "127.0.0.1" and port > 0


def test_host_names_are_resolved(loop):
    async def main():
        target, tp = await loop.create_datagram_endpoint(recorder, local_addr=("127.0.0.1", 0))
        port = target.get_extra_info("sockname")[1]
        client, cp = await loop.create_datagram_endpoint(
            recorder, remote_addr=("localhost", port), family=socket.AF_INET
        )
        assert client.get_extra_info("peername") == ("127.0.0.1", port)
        client.sendto(b"by name")
        assert [data for data, _ in await tp.received()] == [b"by name"]
        await close_endpoint(client, cp)
        await close_endpoint(target, tp)

    run(loop, main())


def test_family_only_makes_an_unbound_socket(loop):
    async def main():
        transport, protocol = await loop.create_datagram_endpoint(recorder, family=socket.AF_INET)
        sock = transport.get_extra_info("socket")
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
        assert transport.get_extra_info("peername") is None
        await close_endpoint(transport, protocol)

    run(loop, main())


# ---- sock=, allow_broadcast, reuse_port --------------------------------------------------


def test_sock_is_used_as_given(loop):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()

    async def main():
        # Falsy modifiers are no modifiers.
        transport, protocol = await loop.create_datagram_endpoint(
            recorder, sock=sock, family=0, proto=0, flags=0, reuse_port=False, local_addr=None
        )
        assert sock.gettimeout() == 0  # made non-blocking
        wrapped = transport.get_extra_info("socket")
        assert isinstance(wrapped, asyncio.trsock.TransportSocket)
        assert wrapped.fileno() == sock.fileno()
        assert transport.get_extra_info("sockname") == address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"to the given socket", address)
            assert [data for data, _ in await protocol.received()] == [b"to the given socket"]
        await close_endpoint(transport, protocol)

    run(loop, main())
    assert sock.fileno() == -1  # the transport owned it


def test_allow_broadcast_sets_so_broadcast_and_does_not_connect(loop):
    async def main():
        target, tp = await loop.create_datagram_endpoint(recorder, local_addr=("127.0.0.1", 0))
        target_address = target.get_extra_info("sockname")
        transport, protocol = await loop.create_datagram_endpoint(
            recorder, local_addr=("127.0.0.1", 0), remote_addr=target_address, allow_broadcast=True
        )
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
        assert transport.get_extra_info("peername") is None
        # remote_addr is still the default (and only) destination.
        transport.sendto(b"broadcast-capable")
        assert protocol.errors == []
        received = await asyncio.wait_for(tp.received(), 2)
        assert [data for data, _ in received] == [b"broadcast-capable"]
        with pytest.raises(ValueError, match="Invalid address"):
            transport.sendto(b"elsewhere", ("127.0.0.1", 9))
        await close_endpoint(transport, protocol)
        await close_endpoint(target, tp)

    run(loop, main())


def test_without_allow_broadcast_so_broadcast_is_off(loop):
    async def main():
        transport, protocol = await loop.create_datagram_endpoint(recorder, local_addr=LOCAL)
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 0
        await close_endpoint(transport, protocol)

    run(loop, main())


@needs_reuse_port
def test_reuse_port_lets_two_endpoints_share_a_port(loop):
    async def main():
        first, fp = await loop.create_datagram_endpoint(recorder, local_addr=LOCAL, reuse_port=True)
        address = first.get_extra_info("sockname")
        second, sp = await loop.create_datagram_endpoint(
            recorder, local_addr=address, reuse_port=True
        )
        assert second.get_extra_info("sockname") == address
        for transport in (first, second):
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        await close_endpoint(first, fp)
        await close_endpoint(second, sp)

    run(loop, main())


# ---- the transport -----------------------------------------------------------------------


def test_transport_identity_and_extra_info(loop):
    async def main():
        server, sp = await loop.create_datagram_endpoint(recorder, local_addr=LOCAL)
        server_address = server.get_extra_info("sockname")
        client, cp = await loop.create_datagram_endpoint(recorder, remote_addr=server_address)
        for transport, protocol in ((server, sp), (client, cp)):
            # The stdlib's own datagram transport is one only from 3.12 on.
            if loop_name(loop) == "ferroloop" or sys.version_info >= (3, 12):
                assert isinstance(transport, asyncio.DatagramTransport)
            assert isinstance(transport, asyncio.BaseTransport)
            assert await protocol.made is transport
            assert transport.get_protocol() is protocol
            assert transport.get_write_buffer_size() == 0
            assert not transport.is_closing()
            sock = transport.get_extra_info("socket")
            assert isinstance(sock, asyncio.trsock.TransportSocket)
            assert sock.type == socket.SOCK_DGRAM
            assert transport.get_extra_info("sockname") == sock.getsockname()
            assert transport.get_extra_info("no such key", "default") == "default"
        assert server.get_extra_info("peername") is None
        assert client.get_extra_info("peername") == server_address
        assert client.get_extra_info("sockname")[0] == "127.0.0.1"
        await close_endpoint(client, cp)
        await close_endpoint(server, sp)

    run(loop, main())


def test_connection_made_runs_before_the_endpoint_is_returned(loop):
    async def main():
        transport, protocol = await loop.create_datagram_endpoint(recorder, local_addr=LOCAL)
        assert protocol.made.done() and protocol.events == ["made"]
        await close_endpoint(transport, protocol)

    run(loop, main())


def test_close_calls_connection_lost_none_once(loop):
    async def main():
        transport, protocol = await loop.create_datagram_endpoint(recorder, local_addr=LOCAL)
        sock = transport.get_extra_info("socket")
        transport.close()
        assert transport.is_closing()
        transport.close()  # a second close is harmless
        assert await protocol.lost is None
        await asyncio.sleep(0.01)
        assert protocol.events == ["made", "lost"]
        assert sock.fileno() == -1

    run(loop, main())


def test_abort_calls_connection_lost_none(loop):
    async def main():
        server, sp = await loop.create_datagram_endpoint(recorder, local_addr=LOCAL)
        transport, protocol = await loop.create_datagram_endpoint(
            recorder, remote_addr=server.get_extra_info("sockname")
        )
        transport.abort()
        assert transport.is_closing()
        assert await protocol.lost is None
        assert protocol.events == ["made", "lost"]
        await close_endpoint(server, sp)

    run(loop, main())


def test_closed_endpoint_receives_nothing_more(loop):
    async def main():
        server, sp = await loop.create_datagram_endpoint(recorder, local_addr=LOCAL)
        address = server.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"before", address)
            await sp.received(1)
            server.close()
            peer.sendto(b"after close", address)
            await sp.lost
            await asyncio.sleep(0.05)
        assert [data for data, _ in sp.datagrams] == [b"before"]

    run(loop, main())


def test_writes_after_close_are_dropped(loop, caplog):
    async def main():
        server, sp = await loop.create_datagram_endpoint(recorder, local_addr=LOCAL)
        client, cp = await loop.create_datagram_endpoint(
            recorder, remote_addr=server.get_extra_info("sockname")
        )
        client.close()
        await cp.lost
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(10):
                client.sendto(b"too late")  # neither raises nor sends
        await asyncio.sleep(0.05)
        assert sp.datagrams == []
        assert cp.errors == []
        await close_endpoint(server, sp)

    run(loop, main())
    # After a few dropped writes the stdlib starts warning, once per write.
    assert any("raised exception" in r.getMessage() for r in caplog.records)


def test_sendto_checks_its_arguments_like_the_stdlib(loop, stdlib_error):
    def action_with(call):
        def action(lp):
            async def main():
                server, _ = await lp.create_datagram_endpoint(P, local_addr=LOCAL)
                client, _ = await lp.create_datagram_endpoint(
                    P, remote_addr=server.get_extra_info("sockname")
                )
                try:
                    call(client)
                finally:
                    client.close()
                    server.close()
                    await asyncio.sleep(0)

            lp.run_until_complete(main())

        return action

    for call in (
        lambda t: t.sendto("text"),
        lambda t: t.sendto(None),
        lambda t: t.sendto(b"x", ("127.0.0.1", 9)),
    ):
        action = action_with(call)
        expected = stdlib_error(action)
        with pytest.raises(type(expected)) as info:
            action(loop)
        assert type(info.value) is type(expected)
        # The stdlib names the port it is bound to; it differs between the two runs.
        assert re.sub(r"\d+\)", "N)", str(info.value)) == re.sub(r"\d+\)", "N)", str(expected))


def test_cancelled_while_waiting_closes_the_transport(loop):
    async def main():
        made = []

        def factory():
            made.append(Datagrams())
            return made[-1]

        task = loop.create_task(loop.create_datagram_endpoint(factory, local_addr=LOCAL))
        await asyncio.sleep(0)  # the task is now waiting for connection_made
        assert made, "the endpoint was not created in the task's first step"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        protocol = made[0]
        assert await protocol.lost is None
        assert protocol.transport.is_closing()
        assert protocol.transport.get_extra_info("socket").fileno() == -1

    run(loop, main())


def test_no_fd_left_after_endpoints_close(loop, tmp_path):
    async def scenario():
        endpoints = []
        server = await loop.create_datagram_endpoint(echoer, local_addr=LOCAL)
        endpoints.append(server)
        for _ in range(10):
            client = await loop.create_datagram_endpoint(
                recorder, remote_addr=server[0].get_extra_info("sockname")
            )
            client[0].sendto(b"x")
            await client[1].received()
            endpoints.append(client)
        if hasattr(socket, "AF_UNIX"):
            path = str(tmp_path / "fds.sock")
            endpoints.append(
                await loop.create_datagram_endpoint(
                    recorder, local_addr=path, family=socket.AF_UNIX
                )
            )
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        endpoints.append(await loop.create_datagram_endpoint(recorder, sock=sock))
        aborted, protocol = endpoints.pop()
        aborted.abort()
        await protocol.lost
        for transport, protocol in endpoints:
            await close_endpoint(transport, protocol)

    run(loop, scenario())
    gc.collect()  # sockets that earlier tests dropped unclosed must not close mid-scenario
    before = open_fds()
    run(loop, scenario())
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    assert open_fds() - before == set()


def test_debug_mode_logs_the_new_endpoint(loop, caplog):
    loop.set_debug(True)

    async def main():
        transport, protocol = await loop.create_datagram_endpoint(recorder, local_addr=LOCAL)
        await close_endpoint(transport, protocol)

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        run(loop, main())
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(
        m.startswith(f"Datagram endpoint local_addr={LOCAL!r} remote_addr=None created")
        for m in messages
    )
