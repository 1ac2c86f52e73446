"""Writes a callback makes to a stream transport leave together when it returns.

ferroloop holds a callback's small writes and sends them in one `sendmsg` as the callback
returns; everything else a program can observe stays as on the stdlib loop: what the
transport reports, the order of its callbacks, what the peer receives and when a write
that is not held goes out. Each test runs on both loops unless it is about the holding.
"""

import asyncio
import select
import socket

import pytest
from net_support import Recorder, loop_name, payload, raw_tcp_pair, recv_all, run


async def transport_and_peer(loop, protocol_factory=None):
    """A transport on one end of a loopback TCP pair, and the other end (blocking)."""
    ours, peer = raw_tcp_pair()
    ours.setblocking(False)
    factory = protocol_factory or (lambda: Recorder(loop))
    transport, protocol = await loop.create_connection(factory, sock=ours)
    return transport, protocol, peer


async def close_both(transport, protocol, peer):
    transport.close()
    await protocol.lost
    peer.close()


def arrived_now(peer):
    """What the peer can read without waiting (its timeout would make recv wait)."""
    if not select.select([peer], [], [], 0)[0]:
        return b""
    return peer.recv(1 << 20)


def arrives_soon(peer, seconds=5.0):
    """Whether the peer has data to read within `seconds` (blocking the caller)."""
    return bool(select.select([peer], [], [], seconds)[0])


def in_a_callback(loop, action):
    """Run `action()` as a plain callback of the running loop; return what it returned."""
    done = loop.create_future()

    def callback():
        try:
            done.set_result(action())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting test
            done.set_exception(exc)

    loop.call_soon(callback)
    return done


def test_small_writes_of_one_callback_leave_together_when_it_returns(loop):
    if loop_name(loop) != "ferroloop":
        pytest.skip("the stdlib loop sends each write at once")

    async def main():
        transport, protocol, peer = await transport_and_peer(loop)

        def two_writes():
            transport.write(b"head ")
            transport.write(b"body")
            return arrived_now(peer)

        during = await in_a_callback(loop, two_writes)
        assert arrives_soon(peer)
        after = peer.recv(100)
        await close_both(transport, protocol, peer)
        return during, after

    assert run(loop, main()) == (b"", b"head body")


def test_get_write_buffer_size_sends_what_the_callback_wrote(loop):
    async def main():
        transport, protocol, peer = await transport_and_peer(loop)

        def write_and_ask():
            transport.write(b"x" * 100)
            size = transport.get_write_buffer_size()
            # On both loops the bytes are in the socket once the size is known.
            return size, arrives_soon(peer), arrived_now(peer)

        outcome = await in_a_callback(loop, write_and_ask)
        await close_both(transport, protocol, peer)
        return outcome

    assert run(loop, main()) == (0, True, b"x" * 100)


def test_close_right_after_a_write_keeps_the_stdlib_order(loop):
    order = []

    class Lost(Recorder):
        def connection_lost(self, exc):
            order.append("connection_lost")
            super().connection_lost(exc)

    async def main():
        transport, protocol, peer = await transport_and_peer(loop, lambda: Lost(loop))

        def write_then_close():
            transport.write(b"bye")
            transport.close()
            order.append(("closing", transport.is_closing()))
            loop.call_soon(order.append, "scheduled after close")

        await in_a_callback(loop, write_then_close)
        await protocol.lost
        await asyncio.sleep(0)
        received = await loop.run_in_executor(None, recv_all, peer)
        peer.close()
        return received

    assert run(loop, main()) == b"bye"
    assert order == [("closing", True), "connection_lost", "scheduled after close"]


def test_abort_right_after_a_write_still_delivers_it(loop):
    # On the stdlib loop the bytes were in the socket before abort() closed it.
    async def main():
        transport, protocol, peer = await transport_and_peer(loop)

        def write_then_abort():
            transport.write(b"last words")
            transport.abort()

        await in_a_callback(loop, write_then_abort)
        await protocol.lost
        received = await loop.run_in_executor(None, recv_all, peer)
        peer.close()
        return received

    assert run(loop, main()) == b"last words"


def test_write_eof_right_after_a_write_sends_it_first(loop):
    async def main():
        transport, protocol, peer = await transport_and_peer(loop)

        def write_then_eof():
            transport.write(b"half")
            transport.write_eof()

        await in_a_callback(loop, write_then_eof)
        received = await loop.run_in_executor(None, recv_all, peer)
        peer.sendall(b"reply")
        peer.shutdown(socket.SHUT_WR)
        reply = await protocol.received(5)
        await close_both(transport, protocol, peer)
        return received, reply

    assert run(loop, main()) == (b"half", b"reply")


@pytest.mark.parametrize("sizes", [[256 * 1024], [1024] * 100], ids=["one-large", "many-small"])
def test_more_than_a_callback_may_hold_goes_out_during_it(loop, sizes):
    data = payload(sum(sizes))

    async def main():
        transport, protocol, peer = await transport_and_peer(loop)

        def write_a_lot():
            offset = 0
            for size in sizes:
                transport.write(data[offset : offset + size])
                offset += size
            return arrives_soon(peer)

        went_out = await in_a_callback(loop, write_a_lot)
        received = await loop.run_in_executor(None, recv_exactly, peer, len(data))
        await close_both(transport, protocol, peer)
        return went_out, received

    went_out, received = run(loop, main())
    assert went_out
    assert received == data


def recv_exactly(sock, nbytes):
    chunks = bytearray()
    while len(chunks) < nbytes:
        chunk = sock.recv(nbytes - len(chunks))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def test_a_write_while_the_loop_is_not_running_goes_out_at_once(loop):
    transport, protocol, peer = run(loop, transport_and_peer(loop))
    transport.write(b"now")
    assert arrives_soon(peer)
    assert peer.recv(10) == b"now"
    transport.close()
    run(loop, protocol.lost)
    peer.close()


def test_a_write_in_connection_made_and_then_reading(loop):
    # The write is held before reading has started; reading must start all the same.
    class Greeter(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b"hello")

    async def main():
        transport, protocol, peer = await transport_and_peer(loop, lambda: Greeter(loop))
        greeting = await loop.run_in_executor(None, recv_exactly, peer, 5)
        peer.sendall(b"hi back")
        reply = await protocol.received(7)
        await close_both(transport, protocol, peer)
        return greeting, reply

    assert run(loop, main()) == (b"hello", b"hi back")


def test_flow_control_and_buffer_size_after_held_writes(loop):
    # The peer does not read: the socket fills, the rest is queued, the protocol is
    # paused, and get_write_buffer_size() counts what the socket did not take.
    async def main():
        transport, protocol, peer = await transport_and_peer(loop)

        def flood():
            for _ in range(20_000):
                transport.write(b"y" * 1000)
            return transport.get_write_buffer_size()

        queued = await in_a_callback(loop, flood)
        paused = [event for event, _ in protocol.flow]
        received = await loop.run_in_executor(None, recv_exactly, peer, 20_000_000)
        await close_both(transport, protocol, peer)
        return queued, paused, len(received)

    queued, paused, received = run(loop, main())
    assert queued > 64 * 1024
    assert paused[:1] == ["pause"]
    assert received == 20_000_000
