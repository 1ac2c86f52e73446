"""loop.sendfile(transport, file, offset, count) on TCP, Unix and TLS transports."""

import asyncio

import pytest
from net_support import TLS, Capturing, Recorder, assert_bytes, payload, run, tcp_connection

DATA = payload(4 * 1024 * 1024 + 123)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    with open(path, "rb") as f:
        yield f


async def finish(server, *pairs):
    for transport, protocol in pairs:
        transport.close()
        await protocol.lost
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize(
    "offset, count",
    [(0, None), (0, 1), (1000, 64 * 1024), (4 * 1024 * 1024, None), (17, 10 * 1024 * 1024)],
    ids=["whole", "one-byte", "slice", "tail", "count-past-eof"],
)
def test_sendfile_over_tcp(loop, data_file, offset, count):
    expected = DATA[offset : offset + count] if count else DATA[offset:]

    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        sent = await loop.sendfile(transport, data_file, offset, count)
        received = await peer.received(len(expected))
        position = data_file.tell()
        await finish(server, (transport, protocol))
        return sent, received, position

    sent, received, position = run(loop, main())
    assert sent == len(expected)
    assert_bytes(received, expected)
    assert position == offset + len(expected)  # the file position follows what was sent


def test_sendfile_keeps_order_with_writes_and_reading_goes_on(loop, data_file):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        transport.write(b"<header>")
        sent = await loop.sendfile(transport, data_file)
        transport.write(b"<trailer>")
        received = await peer.received(len(DATA) + 17)
        assert transport.is_reading()
        peer.transport.write(b"thanks")
        assert await protocol.received(6) == b"thanks"
        await finish(server, (transport, protocol))
        return sent, received

    sent, received = run(loop, main())
    assert sent == len(DATA)
    assert received == b"<header>" + DATA + b"<trailer>"


def test_sendfile_without_fallback_over_tcp(loop, data_file):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        sent = await loop.sendfile(transport, data_file, fallback=False)
        received = await peer.received(len(DATA))
        await finish(server, (transport, protocol))
        return sent, received

    assert run(loop, main()) == (len(DATA), DATA)


def test_write_during_sendfile_is_refused(loop, data_file):
    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        peer.transport.pause_reading()  # so the sendfile cannot finish at once
        task = asyncio.ensure_future(loop.sendfile(transport, data_file))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not task.done()
        with pytest.raises(RuntimeError, match="^unable to write; sendfile is in progress$"):
            transport.write(b"interleaved")
        peer.transport.resume_reading()
        assert await task == len(DATA)
        assert_bytes(await peer.received(len(DATA)), DATA)
        await finish(server, (transport, protocol))

    run(loop, main())


def test_sendfile_on_a_closing_transport(loop, data_file):
    async def main():
        server, transport, protocol, _ = await tcp_connection(loop)
        transport.close()
        with pytest.raises(RuntimeError, match="^Transport is closing$"):
            await loop.sendfile(transport, data_file)
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_sendfile_of_an_empty_file(loop, tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")

    async def main():
        server, transport, protocol, peer = await tcp_connection(loop)
        with open(path, "rb") as f:
            assert await loop.sendfile(transport, f) == 0
        transport.write(b"end")
        assert await peer.received(3) == b"end"
        await finish(server, (transport, protocol))

    run(loop, main())


def test_sendfile_text_file_is_rejected(loop, tmp_path, stdlib_error):
    path = tmp_path / "text.txt"
    path.write_text("text")

    def action(lp):
        async def main():
            server, transport, protocol, _ = await tcp_connection(lp)
            try:
                with open(path) as f:
                    await lp.sendfile(transport, f)
            finally:
                await finish(server, (transport, protocol))

        lp.run_until_complete(asyncio.wait_for(main(), 10))

    expected = stdlib_error(action)
    with pytest.raises(type(expected)) as info:
        action(loop)
    assert str(info.value) == str(expected)
    assert isinstance(expected, ValueError)


def test_sendfile_over_unix(loop, data_file, tmp_path):
    path = str(tmp_path / "sendfile.sock")

    async def main():
        capture = Capturing(loop, lambda: Recorder(loop))
        server = await loop.create_unix_server(capture, path)
        transport, protocol = await loop.create_unix_connection(lambda: Recorder(loop), path)
        peer = await capture.first()
        sent = await loop.sendfile(transport, data_file, 5, 100_000)
        received = await peer.received(100_000)
        await finish(server, (transport, protocol))
        return sent, received

    assert run(loop, main()) == (100_000, DATA[5:100_005])


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return TLS(str(tmp_path_factory.mktemp("tls")))


def test_sendfile_over_tls_falls_back(loop, data_file, tls):
    async def main():
        capture = Capturing(loop, lambda: Recorder(loop))
        server = await loop.create_server(capture, "127.0.0.1", 0, ssl=tls.server())
        transport, protocol = await loop.create_connection(
            lambda: Recorder(loop),
            "127.0.0.1",
            server.sockets[0].getsockname()[1],
            ssl=tls.client(),
            server_hostname="localhost",
        )
        peer = await capture.first()
        with pytest.raises(RuntimeError, match="^fallback is disabled and native sendfile"):
            await loop.sendfile(transport, data_file, fallback=False)
        sent = await loop.sendfile(transport, data_file, 10, 1024 * 1024)
        position = data_file.tell()
        received = await peer.received(1024 * 1024)
        await finish(server, (transport, protocol))
        return sent, received, position

    sent, received, position = run(loop, main())
    assert sent == 1024 * 1024
    assert_bytes(received, DATA[10 : 10 + 1024 * 1024])
    assert position == 10 + 1024 * 1024
