"""Flow control on stream transports: write buffer limits, pause/resume writing and reading."""

import asyncio

import pytest
from net_support import Recorder, assert_bytes, payload, raw_tcp_pair, run, tcp_connection


async def shutdown(server, *pairs):
    for transport, protocol in pairs:
        transport.close()
        await protocol.lost
    server.close()
    await server.wait_closed()


def on_transport(lp, action):
    """Run `action(transport)` on a fresh TCP transport of loop `lp` and return its result."""
    client, server_end = raw_tcp_pair()

    async def main():
        transport, _ = await lp.create_connection(asyncio.Protocol, sock=client)
        try:
            return action(transport)
        finally:
            transport.close()
            await asyncio.sleep(0)

    try:
        return lp.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        server_end.close()


def test_default_write_buffer_limits(loop):
    assert on_transport(loop, lambda t: t.get_write_buffer_limits()) == (16 * 1024, 64 * 1024)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"high": 1000}, (250, 1000)),
        ({"low": 100}, (100, 400)),
        ({"high": 1000, "low": 10}, (10, 1000)),
        ({"high": 0}, (0, 0)),
        ({"high": 5, "low": 5}, (5, 5)),
        ({}, (16 * 1024, 64 * 1024)),
    ],
)
def test_set_write_buffer_limits(loop, kwargs, expected):
    def action(transport):
        transport.set_write_buffer_limits(high=123456, low=12)
        transport.set_write_buffer_limits(**kwargs)
        return transport.get_write_buffer_limits()

    assert on_transport(loop, action) == expected


@pytest.mark.parametrize("kwargs", [{"high": 10, "low": 20}, {"high": -1}, {"low": -4}])
def test_set_write_buffer_limits_rejects_bad_marks(assert_same_error, kwargs):
    exc = assert_same_error(
        lambda lp: on_transport(lp, lambda t: t.set_write_buffer_limits(**kwargs))
    )
    assert isinstance(exc, ValueError)


def test_write_past_high_water_pauses_at_once_and_drain_resumes(loop):
    high, low = 64 * 1024, 16 * 1024
    chunk = payload(1024 * 1024)

    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        peer.transport.pause_reading()
        transport.set_write_buffer_limits(high=high, low=low)
        assert transport.get_write_buffer_limits() == (low, high)
        written = 0
        for _ in range(512):
            transport.write(chunk)
            written += len(chunk)
            if transport.get_write_buffer_size() > high:
                break
        # pause_writing ran inside the write() that crossed the high-water mark.
        assert [kind for kind, _ in protocol.flow] == ["pause"]
        assert protocol.flow[0][1] > high
        assert transport.get_write_buffer_size() <= written
        peer.transport.resume_reading()
        await peer.received(written)
        while transport.get_write_buffer_size():
            await asyncio.sleep(0)
        await shutdown(server, (transport, protocol), (peer.transport, peer))
        return protocol.flow, bytes(peer.data), written

    flow, received, written = run(loop, main())
    assert [kind for kind, _ in flow] == ["pause", "resume"]
    assert flow[1][1] <= low
    assert_bytes(received, chunk * (written // len(chunk)))


def test_lowering_the_high_mark_below_the_buffer_pauses_at_once(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        peer.transport.pause_reading()
        transport.set_write_buffer_limits(high=1 << 30)
        block = payload(256 * 1024)
        for _ in range(512):
            transport.write(block)
            if transport.get_write_buffer_size():
                break
        assert protocol.flow == []
        transport.set_write_buffer_limits(high=0)
        assert [kind for kind, _ in protocol.flow] == ["pause"]
        peer.transport.resume_reading()
        while not protocol.flow[-1][0] == "resume":
            await asyncio.sleep(0.001)
        assert transport.get_write_buffer_size() == 0
        await shutdown(server, (transport, protocol), (peer.transport, peer))
        return protocol.flow

    flow = run(loop, main())
    assert flow[-1] == ("resume", 0)


class Producer(asyncio.Protocol):
    """Writes `data` in chunks, but only while the transport has not paused it."""

    def __init__(self, loop, data, chunk, high, low):
        self.loop = loop
        self.data = data
        self.chunk = chunk
        self.high = high
        self.low = low
        self.offset = 0
        self.paused = False
        self.flow = []  # ("pause" | "resume", buffer size, was already paused)
        self.max_buffer = 0
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=self.high, low=self.low)
        self.produce()

    def produce(self):
        while not self.paused and self.offset < len(self.data):
            self.transport.write(self.data[self.offset : self.offset + self.chunk])
            self.offset += self.chunk
            self.max_buffer = max(self.max_buffer, self.transport.get_write_buffer_size())
        if self.offset >= len(self.data) and not self.transport.is_closing():
            self.transport.close()

    def pause_writing(self):
        self.flow.append(("pause", self.transport.get_write_buffer_size(), self.paused))
        self.paused = True

    def resume_writing(self):
        self.flow.append(("resume", self.transport.get_write_buffer_size(), not self.paused))
        self.paused = False
        self.loop.call_soon(self.produce)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class SlowReader(Recorder):
    """Stops reading after every `burst` bytes and resumes a little later."""

    def __init__(self, loop, burst):
        super().__init__(loop)
        self.burst = burst
        self.since_pause = 0
        self.pauses = 0

    def data_received(self, data):
        super().data_received(data)
        self.since_pause += len(data)
        if self.since_pause >= self.burst:
            self.since_pause = 0
            self.pauses += 1
            self.transport.pause_reading()
            self.loop.call_later(0.002, self.transport.resume_reading)


def test_slow_reader_forces_pause_and_resume_with_a_bounded_buffer(loop):
    data = payload(16 * 1024 * 1024)
    high, low, chunk = 256 * 1024, 64 * 1024, 64 * 1024

    async def main():
        producers = []

        def make_producer():
            producers.append(Producer(loop, data, chunk, high, low))
            return producers[-1]

        server, transport, reader, _ = await tcp_connection(
            loop, make_producer, lambda: SlowReader(loop, 512 * 1024)
        )
        await reader.eof
        assert await reader.lost is None
        assert await producers[0].lost is None
        server.close()
        await server.wait_closed()
        return producers[0], reader

    producer, reader = run(loop, main())
    assert_bytes(bytes(reader.data), data)
    assert reader.pauses > 3
    kinds = [kind for kind, _, _ in producer.flow]
    assert kinds.count("pause") >= 1, "the slow reader never made the writer pause"
    assert kinds.count("resume") >= 1
    # Pause and resume alternate, starting with a pause, each at the right mark.
    assert kinds == ["pause", "resume"] * (len(kinds) // 2) + ["pause"] * (len(kinds) % 2)
    assert not any(repeated for _, _, repeated in producer.flow)
    assert all(size > high for kind, size, _ in producer.flow if kind == "pause")
    assert all(size <= low for kind, size, _ in producer.flow if kind == "resume")
    # Memory stays bounded: the writer never holds more than one chunk above the mark.
    assert producer.max_buffer <= high + chunk


def test_pause_reading_holds_data_and_eof_until_resumed(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        assert transport.is_reading() is True
        transport.pause_reading()
        assert transport.is_reading() is False
        transport.pause_reading()  # pausing twice is allowed
        assert transport.is_reading() is False
        peer.transport.write(b"held back")
        peer.transport.write_eof()
        # Nothing to await: give a healthy loop ample chance to deliver by mistake.
        for _ in range(20):
            await asyncio.sleep(0.002)
        assert protocol.data == b""
        assert protocol.events == ["made"]
        transport.resume_reading()
        assert transport.is_reading() is True
        transport.resume_reading()  # resuming twice is allowed
        await protocol.eof
        assert bytes(protocol.data) == b"held back"
        await protocol.lost
        assert transport.is_reading() is False
        await peer.lost
        server.close()
        await server.wait_closed()
        return protocol

    protocol = run(loop, main())
    assert protocol.events == ["made", "data", "eof", "lost"]


def test_paused_reading_applies_backpressure_to_the_peer(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.pause_reading()
        peer.transport.set_write_buffer_limits(high=64 * 1024)
        block = payload(1024 * 1024)
        sent = 0
        while not peer.flow and sent < 512 * len(block):
            peer.transport.write(block)
            sent += len(block)
        assert [kind for kind, _ in peer.flow] == ["pause"]
        transport.resume_reading()
        received = await protocol.received(sent)
        while not peer.flow[-1][0] == "resume":
            await asyncio.sleep(0.001)
        await shutdown(server, (transport, protocol), (peer.transport, peer))
        return received, block, sent

    received, block, sent = run(loop, main())
    assert_bytes(received, block * (sent // len(block)))


def test_pause_and_resume_reading_on_a_closed_transport(loop):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.close()
        assert transport.is_reading() is False
        transport.pause_reading()  # no-ops on a closing transport
        transport.resume_reading()
        assert transport.is_reading() is False
        await protocol.lost
        await peer.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


class PausesWithin(Recorder):
    """Pauses reading from inside `where` ("connection_made" or "data_received")."""

    def __init__(self, loop, where):
        super().__init__(loop)
        self.where = where
        self.calls_while_paused = 0

    def connection_made(self, transport):
        super().connection_made(transport)
        if self.where == "connection_made":
            transport.pause_reading()

    def data_received(self, data):
        if not self.transport.is_reading():
            self.calls_while_paused += 1
        super().data_received(data)
        if self.where == "data_received":
            self.transport.pause_reading()


@pytest.mark.parametrize("where", ["connection_made", "data_received"])
def test_pause_reading_from_a_protocol_callback_takes_effect_at_once(loop, where):
    data = payload(2 * 1024 * 1024)

    async def main():
        server, transport, protocol, peer = await tcp_connection(
            loop, client_protocol=lambda: PausesWithin(loop, where)
        )
        peer.transport.write(data)
        if where == "data_received":
            await protocol.received(1)
        for _ in range(20):
            await asyncio.sleep(0.002)
        delivered = len(protocol.data)
        assert transport.is_reading() is False
        # Resume one chunk at a time: each resume delivers, each delivery pauses again.
        while len(protocol.data) < len(data):
            before = len(protocol.data)
            transport.resume_reading()
            await protocol.received(before + 1)
            if where == "connection_made":
                break
        received = await protocol.received(len(data))
        await shutdown(server, (transport, protocol), (peer.transport, peer))
        return delivered, received, protocol

    delivered, received, protocol = run(loop, main())
    if where == "connection_made":
        assert delivered == 0
    else:
        assert 0 < delivered < len(data)
    assert protocol.calls_while_paused == 0
    assert_bytes(received, data)
