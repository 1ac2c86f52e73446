"""asyncio streams (open_connection, start_server, the Unix variants) on the loop under test."""

import asyncio
import socket

import pytest
from net_support import assert_bytes, payload, run


async def echo_handler(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    finally:
        writer.close()
        await writer.wait_closed()


def test_open_connection_and_start_server_echo(loop):
    data = payload(4 * 1024 * 1024)

    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
        assert server.get_loop() is loop
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert writer.transport.get_extra_info("peername") == ("127.0.0.1", port)
        assert writer.get_extra_info("peername") == ("127.0.0.1", port)
        writer.write(b"hello\n")
        await writer.drain()
        assert await reader.readline() == b"hello\n"
        writer.write(data)
        await writer.drain()
        assert_bytes(await reader.readexactly(len(data)), data)
        assert writer.can_write_eof()
        writer.write_eof()
        assert await reader.read() == b""
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_stream_protocol_lines_and_separators(loop):
    async def handler(reader, writer):
        name = await reader.readuntil(b"\r\n")
        writer.write(b"hi " + name)
        writer.writelines([b"a", b"b", b"c\n"])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        async with await asyncio.start_server(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"bob\r\n")
            assert await reader.readuntil(b"\r\n") == b"hi bob\r\n"
            assert await reader.readline() == b"abc\n"
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(1)
            assert info.value.partial == b""
            writer.close()
            await writer.wait_closed()
        assert not server.is_serving()

    run(loop, main())


def test_drain_waits_for_a_slow_reader(loop):
    async def main():
        proceed = asyncio.Event()
        got = loop.create_future()

        async def slow_handler(reader, writer):
            await proceed.wait()
            total = 0
            while data := await reader.read(1 << 20):
                total += len(data)
            got.set_result(total)
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(slow_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.set_write_buffer_limits(high=64 * 1024)
        block = payload(1024 * 1024)
        sent = 0
        blocked = False
        for _ in range(256):
            writer.write(block)
            sent += len(block)
            drain = asyncio.ensure_future(writer.drain())
            await asyncio.sleep(0)
            if not drain.done():
                blocked = True
                break
            await drain
        assert blocked, "drain never waited although the reader read nothing"
        assert writer.transport.get_write_buffer_size() > 64 * 1024
        proceed.set()
        await drain
        assert writer.transport.get_write_buffer_size() <= 16 * 1024
        writer.write_eof()
        assert await got == sent
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_open_connection_refused(loop):
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, not listening: connecting is refused
        port = reserved.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            run(loop, asyncio.open_connection("127.0.0.1", port))


def test_reader_sees_a_peer_reset(loop):
    async def main():
        accepted = loop.create_future()

        async def handler(reader, writer):
            accepted.set_result(writer)

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = await accepted
        sock = peer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.transport.abort()
        with pytest.raises(ConnectionResetError):
            await reader.read(100)
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_streams_echo(loop, tmp_path):
    path = str(tmp_path / "echo.sock")
    data = payload(1024 * 1024)

    async def main():
        server = await asyncio.start_unix_server(echo_handler, path)
        assert server.sockets[0].getsockname() == path
        reader, writer = await asyncio.open_unix_connection(path)
        assert writer.get_extra_info("peername") == path
        writer.write(data)
        writer.write_eof()
        assert_bytes(await reader.read(), data)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_many_stream_clients_in_parallel(loop):
    async def client(port, i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        message = f"client {i}\n".encode() * (i + 1)
        writer.write(message)
        writer.write_eof()
        echoed = await reader.read()
        writer.close()
        await writer.wait_closed()
        return echoed == message

    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        results = await asyncio.gather(*(client(port, i) for i in range(50)))
        server.close()
        await server.wait_closed()
        return results

    assert all(run(loop, main()))
