"""Unix stream sockets: create_unix_connection, create_unix_server and their path handling."""

import asyncio
import errno
import os
import socket
import stat
import sys

import pytest
from net_support import Capturing, Echo, Recorder, assert_bytes, payload, peername_on_accept, run


async def unix_pair(loop, path, server_protocol=None, client_protocol=None):
    capture = Capturing(loop, server_protocol or (lambda: Recorder(loop)))
    server = await loop.create_unix_server(capture, path)
    transport, protocol = await loop.create_unix_connection(
        client_protocol or (lambda: Recorder(loop)), path
    )
    peer = await capture.first()
    if isinstance(peer, Recorder):
        await peer.made
    return server, transport, protocol, peer


def is_socket(path):
    return os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode)


@pytest.mark.parametrize("size", [1, 64 * 1024, 4 * 1024 * 1024])
def test_echo(loop, tmp_path, size):
    path = str(tmp_path / "echo.sock")
    data = payload(size)

    async def main():
        server, transport, protocol, _ = await unix_pair(loop, path, Echo)
        transport.write(data)
        received = await protocol.received(size)
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()
        return received

    assert_bytes(run(loop, main()), data)


def test_transport_and_extra_info(loop, tmp_path):
    path = str(tmp_path / "info.sock")

    async def main():
        server, transport, protocol, peer = await unix_pair(loop, path)
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert sock.family == socket.AF_UNIX
        assert transport.get_extra_info("peername") == path
        assert transport.get_extra_info("sockname") == ""
        assert peer.transport.get_extra_info("sockname") == path
        assert server.sockets[0].family == socket.AF_UNIX
        assert server.sockets[0].getsockname() == path
        assert transport.can_write_eof()
        transport.close()
        await protocol.lost
        await peer.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_half_close_both_ways(loop, tmp_path):
    path = str(tmp_path / "half.sock")

    async def main():
        server, transport, protocol, peer = await unix_pair(
            loop,
            path,
            lambda: Recorder(loop, eof_result=True),
            lambda: Recorder(loop, eof_result=True),
        )
        transport.write(b"question")
        transport.write_eof()
        await peer.eof
        peer.transport.write(b"answer")
        peer.transport.write_eof()
        await protocol.eof
        assert (bytes(peer.data), bytes(protocol.data)) == (b"question", b"answer")
        transport.close()
        peer.transport.close()
        await protocol.lost
        await peer.lost
        server.close()
        await server.wait_closed()
        return protocol, peer

    protocol, peer = run(loop, main())
    assert protocol.events == peer.events == ["made", "data", "eof", "lost"]


def test_path_like_and_bytes_paths(loop, tmp_path):
    async def main():
        for path in (tmp_path / "pathlike.sock", os.fsencode(tmp_path / "bytes.sock")):
            server, transport, protocol, _ = await unix_pair(loop, path, Echo)
            assert is_socket(path)
            transport.write(b"x")
            assert await protocol.received(1) == b"x"
            transport.close()
            await protocol.lost
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_abstract_namespace(loop):
    name = f"\0ferroloop-test-{os.getpid()}-{id(loop)}"

    async def main():
        server, transport, protocol, _ = await unix_pair(loop, name, Echo)
        assert server.sockets[0].getsockname() == name.encode()
        transport.write(b"abstract")
        assert await protocol.received(8) == b"abstract"
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


@pytest.mark.parametrize("client_name", ["unnamed", "path", "abstract"])
def test_server_side_peername_is_the_clients_name(loop, tmp_path, client_name):
    """What the accepting side's transport reports as "peername": the client socket's own
    name, as ``socket.accept()`` gives it ("" for an unnamed one, ``bytes`` for an abstract
    one)."""
    path = str(tmp_path / "server.sock")
    name = {
        "unnamed": None,
        "path": str(tmp_path / "client.sock"),
        "abstract": f"\0ferroloop-client-{os.getpid()}-{id(loop)}".encode(),
    }[client_name]

    async def main():
        Accepting, accepted = peername_on_accept(loop)
        server = await loop.create_unix_server(Accepting, path)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if name is not None:
            client.bind(name)
        client.connect(path)
        peername = await asyncio.wait_for(accepted, 5)
        client.close()
        server.close()
        await server.wait_closed()
        return peername

    peername = run(loop, main())
    assert peername == ("" if name is None else name)
    assert type(peername) is (bytes if client_name == "abstract" else str)


def test_stale_socket_file_is_replaced(loop, tmp_path):
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(path)  # closed without unlinking: a stale socket file remains
    assert is_socket(path)

    async def main():
        server, transport, protocol, _ = await unix_pair(loop, path, Echo)
        transport.write(b"fresh")
        assert await protocol.received(5) == b"fresh"
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_a_regular_file_in_the_way_is_kept(assert_same_error, tmp_path):
    path = tmp_path / "regular"
    path.write_text("not a socket")
    exc = assert_same_error(
        lambda lp: lp.run_until_complete(lp.create_unix_server(Echo, str(path)))
    )
    assert exc.errno == errno.EADDRINUSE
    assert path.read_text() == "not a socket"


def test_a_live_socket_file_is_replaced_too(loop, tmp_path):
    path = str(tmp_path / "busy.sock")
    with socket.socket(socket.AF_UNIX) as busy:
        busy.bind(path)
        busy.listen()
        inode = os.stat(path).st_ino
        # Like the stdlib, any socket file at the path is removed first, live or not.
        server = run(loop, loop.create_unix_server(Echo, path))
        assert os.stat(path).st_ino != inode
        server.close()
        run(loop, server.wait_closed())


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="3.13 removes the socket file on close")
def test_close_leaves_the_socket_file_before_3_13(loop, tmp_path):
    path = str(tmp_path / "kept.sock")

    async def main():
        server = await loop.create_unix_server(Echo, path)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert is_socket(path)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="cleanup_socket is new in 3.13")
def test_close_removes_the_socket_file(loop, tmp_path):
    path = str(tmp_path / "cleaned.sock")
    kept = str(tmp_path / "kept.sock")
    replaced = str(tmp_path / "replaced.sock")

    async def main():
        server = await loop.create_unix_server(Echo, path)
        assert is_socket(path)
        server.close()
        await server.wait_closed()
        assert not os.path.exists(path)

        server = await loop.create_unix_server(Echo, kept, cleanup_socket=False)
        server.close()
        await server.wait_closed()
        assert is_socket(kept)

        server = await loop.create_unix_server(Echo, replaced)
        os.unlink(replaced)
        with open(replaced, "w") as f:
            f.write("someone else's file")
        server.close()
        await server.wait_closed()
        assert os.path.isfile(replaced)  # not our socket any more: left alone

    run(loop, main())


@pytest.mark.skipif(sys.version_info < (3, 13), reason="cleanup_socket is new in 3.13")
def test_close_removes_the_socket_file_of_a_given_sock(loop, tmp_path):
    path = str(tmp_path / "given.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)

    async def main():
        server = await loop.create_unix_server(Echo, sock=sock)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert not os.path.exists(path)


def test_connection_and_server_from_sockets(loop, tmp_path):
    path = str(tmp_path / "sock.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)

    async def main():
        server = await loop.create_unix_server(Echo, sock=listener)
        assert server.sockets[0].fileno() == listener.fileno()
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        transport, protocol = await loop.create_unix_connection(lambda: Recorder(loop), sock=client)
        transport.write(b"sockets")
        assert await protocol.received(7) == b"sockets"
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_socketpair_through_create_unix_connection(loop):
    a, b = socket.socketpair()

    async def main():
        server_side, _ = await loop.create_unix_connection(Echo, sock=b)
        transport, protocol = await loop.create_unix_connection(lambda: Recorder(loop), sock=a)
        transport.write(b"pair")
        assert await protocol.received(4) == b"pair"
        transport.close()
        await protocol.lost
        server_side.close()

    run(loop, main())


def test_connect_to_a_missing_path(loop, tmp_path, assert_same_error):
    path = str(tmp_path / "missing.sock")
    exc = assert_same_error(
        lambda lp: lp.run_until_complete(lp.create_unix_connection(asyncio.Protocol, path))
    )
    assert isinstance(exc, FileNotFoundError)


def test_connect_to_a_stale_socket_is_refused(loop, tmp_path, assert_same_error):
    path = str(tmp_path / "dead.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)
    exc = assert_same_error(
        lambda lp: lp.run_until_complete(lp.create_unix_connection(asyncio.Protocol, path))
    )
    assert isinstance(exc, ConnectionRefusedError)


def test_argument_errors(loop, tmp_path, assert_same_error):
    path = str(tmp_path / "args.sock")

    def connect(**kwargs):
        return lambda lp: lp.run_until_complete(
            lp.create_unix_connection(asyncio.Protocol, **kwargs)
        )

    def serve(**kwargs):
        return lambda lp: lp.run_until_complete(lp.create_unix_server(Echo, **kwargs))

    with socket.socket(socket.AF_UNIX) as sock:
        for action in [
            connect(),
            connect(path=path, sock=sock),
            connect(path=path, server_hostname="x"),
            connect(path=path, ssl_handshake_timeout=1),
            serve(),
            serve(path=path, sock=sock),
            serve(path=path, ssl_handshake_timeout=1),
        ]:
            assert isinstance(assert_same_error(action), ValueError)
        assert isinstance(assert_same_error(serve(path=path, ssl=True)), TypeError)
    with socket.socket(socket.AF_INET) as tcp:
        for action in [connect(sock=tcp), serve(sock=tcp)]:
            with pytest.raises(ValueError, match="^A UNIX Domain Stream Socket was expected"):
                action(loop)
