"""Helpers shared by the networking tests (tests/test_net_*.py).

Everything here is loop-agnostic: it takes the loop under test and uses only public asyncio
API, so the same test runs unchanged on ferroloop and on the stdlib loop.
"""

import asyncio
import os
import resource
import socket
import ssl
import subprocess
import sys

# Upper bound for any single networking scenario: a ferroloop bug fails the test instead of
# hanging the run. Each scenario takes well under a second on a healthy loop.
TIMEOUT = 10.0


def run(loop, coro, timeout=TIMEOUT):
    """Run `coro` to completion on `loop`, failing with TimeoutError after `timeout` seconds."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def loop_name(loop):
    """'asyncio' for the stdlib loop, 'ferroloop' otherwise (to rebuild the loop elsewhere)."""
    return "asyncio" if type(loop).__module__.startswith("asyncio") else "ferroloop"


def open_fds():
    """The set of file descriptors open in this process."""
    return set(os.listdir("/proc/self/fd"))


def raise_fd_limit(needed):
    """Raise the soft RLIMIT_NOFILE to the hard limit if `needed` fds would not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise AssertionError(f"need {needed} fds, hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


def ipv6_loopback_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def raw_tcp_pair():
    """Two connected blocking TCP sockets on loopback (client end, server end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    server.settimeout(TIMEOUT)
    return client, server


def reset(sock):
    """Close `sock` so that the peer sees a connection reset (RST) instead of an EOF."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def recv_exactly(sock, nbytes):
    """Blocking: read exactly `nbytes` from `sock` (for a peer driven in an executor thread)."""
    chunks = bytearray()
    while len(chunks) < nbytes:
        chunk = sock.recv(min(1 << 20, nbytes - len(chunks)))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def recv_all(sock):
    """Blocking: read `sock` until EOF."""
    chunks = bytearray()
    while chunk := sock.recv(1 << 20):
        chunks += chunk
    return bytes(chunks)


def payload(nbytes):
    """`nbytes` of non-repeating-looking data, so a reordering or a lost chunk shows."""
    block = bytes(range(251)) * (1 + 65536 // 251)
    out = bytearray()
    salt = 0
    while len(out) < nbytes:
        out += block[salt % 251 : salt % 251 + 65000]
        salt += 1
    return bytes(out[:nbytes])


class Recorder(asyncio.Protocol):
    """A protocol that records what the transport calls, with futures to await each stage."""

    def __init__(self, loop, *, eof_result=None):
        self.loop = loop
        self.transport = None
        self.events = []  # "made", "data", "eof", "lost" in call order (repeated data once)
        self.flow = []  # ("pause" | "resume", write buffer size at the call)
        self.data = bytearray()
        self.eof_result = eof_result
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self._waiters = []

    def _note(self, event):
        if not (event == "data" and self.events and self.events[-1] == "data"):
            self.events.append(event)

    def connection_made(self, transport):
        self._note("made")
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        assert isinstance(data, bytes), type(data)
        assert data, "data_received with no data"
        self._note("data")
        self.data += data
        self._wake()

    def eof_received(self):
        self._note("eof")
        self.eof.set_result(None)
        self._wake()
        return self.eof_result

    def connection_lost(self, exc):
        self._note("lost")
        self.lost.set_result(exc)
        self._wake()

    def pause_writing(self):
        self.flow.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self):
        self.flow.append(("resume", self.transport.get_write_buffer_size()))

    def _wake(self):
        for nbytes, fut in list(self._waiters):
            if not fut.done() and (len(self.data) >= nbytes or self.eof.done() or self.lost.done()):
                fut.set_result(None)

    async def received(self, nbytes):
        """Wait until at least `nbytes` arrived (or the stream ended) and return them all."""
        if len(self.data) < nbytes and not self.eof.done() and not self.lost.done():
            fut = self.loop.create_future()
            self._waiters.append((nbytes, fut))
            await fut
        return bytes(self.data)


class Echo(asyncio.Protocol):
    """Writes back whatever it receives; closes after the peer's EOF (close flushes)."""

    def __init__(self):
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return None


class Capturing:
    """A protocol factory that remembers the protocols it made (e.g. the server side)."""

    def __init__(self, loop, factory):
        self.loop = loop
        self.factory = factory
        self.protocols = []
        self._first = loop.create_future()

    def __call__(self):
        protocol = self.factory()
        self.protocols.append(protocol)
        if not self._first.done():
            self._first.set_result(protocol)
        return protocol

    async def first(self):
        return await self._first


async def tcp_connection(loop, server_protocol=None, client_protocol=None, **server_kwargs):
    """A server on 127.0.0.1 and one client connected to it.

    Returns (server, client transport, client protocol, server protocol); the server side's
    connection_made has run by then.
    """
    capture = Capturing(loop, server_protocol or (lambda: Recorder(loop)))
    server = await loop.create_server(capture, "127.0.0.1", 0, **server_kwargs)
    port = server.sockets[0].getsockname()[1]
    transport, protocol = await loop.create_connection(
        client_protocol or (lambda: Recorder(loop)), "127.0.0.1", port
    )
    peer = await capture.first()
    if isinstance(peer, Recorder):
        await peer.made
    return server, transport, protocol, peer


async def close_transport(transport, protocol):
    """Close a transport and wait for its protocol's connection_lost."""
    transport.close()
    if isinstance(protocol, Recorder):
        await protocol.lost


def openssl_certificate(directory):
    """A self-signed certificate for localhost / 127.0.0.1 / ::1: (certfile, keyfile)."""
    certfile = os.path.join(directory, "cert.pem")
    keyfile = os.path.join(directory, "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
            "-keyout",
            keyfile,
            "-out",
            certfile,
        ],
        check=True,
        capture_output=True,
    )
    return certfile, keyfile


class TLS:
    """Server and client SSL contexts trusting one self-signed localhost certificate."""

    def __init__(self, directory):
        self.certfile, self.keyfile = openssl_certificate(directory)

    def server(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.certfile, self.keyfile)
        return ctx

    def client(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.certfile)
        return ctx


def loop_script(template, loop):
    """``template`` with ``{setup}`` and ``{run}`` filled in so that, in a fresh interpreter,
    it runs its ``main()`` on a loop of the kind of ``loop``."""
    if loop_name(loop) == "asyncio":
        return template.format(setup="", run="asyncio.run(main())")
    return template.format(setup="import ferroloop", run="ferroloop.run(main())")


def peername_on_accept(loop):
    """A protocol class, and a future it sets to the "peername" of the first connection
    made with it (which it then closes)."""
    accepted = loop.create_future()

    class Accepting(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.set_result(transport.get_extra_info("peername"))
            transport.close()

    return Accepting, accepted


def run_script(source, *args, timeout=30):
    """Run Python `source` in a fresh interpreter and return its stdout; fail on a bad exit."""
    proc = subprocess.run(
        [sys.executable, "-c", source, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def assert_bytes(actual, expected):
    """assert actual == expected, reporting sizes and the first difference, not a huge diff."""
    actual, expected = bytes(actual), bytes(expected)
    if actual == expected:
        return
    first = next(
        (i for i, (x, y) in enumerate(zip(actual, expected, strict=False)) if x != y),
        min(len(actual), len(expected)),
    )
    raise AssertionError(
        f"got {len(actual)} bytes, expected {len(expected)}; they differ from offset {first}: "
        f"{actual[first : first + 16]!r} != {expected[first : first + 16]!r}"
    )
