"""Network benchmarks: servers on the loop under test, driven over loopback by one fixed client.

The echo server runs in the benchmark's process, on the loop under test, in one of three
styles: ``asyncio.Protocol`` (``transport.write`` in ``data_received``), streams
(``asyncio.start_server``: read, write, drain) or ``loop.sock_recv``/``loop.sock_sendall`` on
sockets from ``loop.sock_accept``. The bulk rows use Protocol servers that send or discard a
GiB, the UDP row a ``DatagramProtocol`` that echoes. The client is echo_client.c, one native
program for every loop, run as a separate process (see peers.py), so only the server's loop
varies and the client never competes for the server's GIL. The client opens its connections,
does a warm-up on them, closes them, opens fresh ones for the timed phase and reports how
long the timed phase took. The server counts connections: ``getrusage(RUSAGE_SELF)`` from
the moment it sees the first timed connection to the moment the last one closes gives its
CPU time (user + system, every thread) per operation.

Some rows also measure the native ceiling: native_echo (Rust on mio, see peers.py) serving
the same client in the same way.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from time import perf_counter

from harness import Measurement, Metric, benchmark
from peers import c_program, native_server

READ_SIZE = 64 * 1024  # what the streams and sock_* servers ask for per read
CLIENT_TIMEOUT = 100.0  # seconds; the client's own alarm ends it after 110 s anyway
BACKLOG = 1024  # the 1000-client rows connect faster than a server accepts
KIB = 1024
GIB = 1024**3

CPU_PER_ROUND_TRIP = Metric("cpu_us", "server CPU per round trip", "µs")
CPU_PER_REQUEST = Metric("cpu_us", "server CPU per request", "µs")
PEAK_RSS = Metric("rss_mib", "server peak RSS (ru_maxrss)", "MiB")


def client_binary() -> Path:
    return c_program("echo_client")


def raise_fd_limit() -> None:
    """1000 concurrent connections need more fds than a default soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------- the server side


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB  # KiB on Linux


class Meter:
    """Counts the server's connections and stops the loop when the client's phases are over.

    The client opens ``conns`` connections for its warm-up (``warmup_conns`` if given),
    closes them, then opens ``conns`` more for the timed phase: the CPU clock runs from the
    open of the first timed connection to the close of the last.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, conns: int, warmup_conns: int | None = None
    ) -> None:
        self.loop = loop
        self.warmup_conns = conns if warmup_conns is None else warmup_conns
        self.total = self.warmup_conns + conns
        self.opens = self.closes = 0
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None

    def opened(self) -> None:
        self.opens += 1
        if self.opens == self.warmup_conns + 1:
            self.cpu_start = cpu_seconds()

    def closed(self) -> None:
        self.closes += 1
        if self.closes == self.total:
            self.cpu_end = cpu_seconds()
            self.loop.stop()

    def cpu(self) -> float:
        if self.cpu_start is None or self.cpu_end is None:
            raise RuntimeError(
                f"the server saw {self.opens} connections open and {self.closes} close, "
                f"expected {self.total} of each"
            )
        return self.cpu_end - self.cpu_start

    def done(self) -> bool:
        return self.cpu_end is not None


class EchoProtocol(asyncio.Protocol):
    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.meter.opened()

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.meter.closed()


# A server style starts an echo server on the loop and returns the address for the client's
# command line and a coroutine function that shuts the server down.
Address = list[str]
Closer = Callable[[], Awaitable[None]]


def tcp_address(server: asyncio.AbstractServer) -> Address:
    return ["tcp", "127.0.0.1", str(server.sockets[0].getsockname()[1])]  # type: ignore[attr-defined]


def server_closer(server: asyncio.AbstractServer) -> Closer:
    async def close() -> None:
        server.close()
        await server.wait_closed()

    return close


async def protocol_server(
    loop: asyncio.AbstractEventLoop, meter: Meter, unix_path: str | None
) -> tuple[Address, Closer]:
    if unix_path:
        server = await loop.create_unix_server(lambda: EchoProtocol(meter), unix_path)
        return ["unix", unix_path], server_closer(server)
    server = await loop.create_server(lambda: EchoProtocol(meter), "127.0.0.1", 0, backlog=BACKLOG)
    return tcp_address(server), server_closer(server)


async def streams_server(
    loop: asyncio.AbstractEventLoop, meter: Meter, unix_path: str | None
) -> tuple[Address, Closer]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        meter.opened()
        try:
            while data := await reader.read(READ_SIZE):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            meter.closed()

    assert unix_path is None
    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=BACKLOG)
    return tcp_address(server), server_closer(server)


async def sock_server(
    loop: asyncio.AbstractEventLoop, meter: Meter, unix_path: str | None
) -> tuple[Address, Closer]:
    async def echo(conn: socket.socket) -> None:
        try:
            while data := await loop.sock_recv(conn, READ_SIZE):
                await loop.sock_sendall(conn, data)
        finally:
            conn.close()
            meter.closed()

    async def accept(listener: socket.socket) -> None:
        handlers: set[asyncio.Task[None]] = set()
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            meter.opened()
            task = loop.create_task(echo(conn))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

    assert unix_path is None
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(BACKLOG)
    listener.setblocking(False)
    acceptor = loop.create_task(accept(listener))
    address = ["tcp", "127.0.0.1", str(listener.getsockname()[1])]

    async def close() -> None:
        acceptor.cancel()
        try:
            await acceptor
        except asyncio.CancelledError:
            pass
        listener.close()

    return address, close


ServerStyle = Callable[
    [asyncio.AbstractEventLoop, Meter, "str | None"], Awaitable[tuple[Address, Closer]]
]


def serve_client(loop: asyncio.AbstractEventLoop, cmd: list[str], done: Callable[[], bool]) -> str:
    """Run the client ``cmd`` while the loop serves it; returns the client's output.

    The loop runs until the server's side stops it (``done()`` is then true) or, failing
    that, until 2 s after the client exited or CLIENT_TIMEOUT passed.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + CLIENT_TIMEOUT
    exited_at: list[float] = []

    def watchdog() -> None:
        nonlocal timer
        now = time.monotonic()
        if proc.poll() is not None and not exited_at:
            exited_at.append(now)
        if now > deadline or (exited_at and now - exited_at[0] > 2.0):
            loop.stop()
        else:
            timer = loop.call_later(0.1, watchdog)

    timer = loop.call_later(0.1, watchdog)
    try:
        loop.run_forever()
    finally:
        timer.cancel()
        if proc.poll() is None and not done():
            proc.kill()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    if proc.returncode != 0:
        detail = err.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise RuntimeError(f"{Path(cmd[0]).name.partition('-')[0]} failed: {detail[0]}")
    return out


def echo(
    loop: asyncio.AbstractEventLoop,
    n: int,
    style: ServerStyle,
    size: int,
    *,
    conns: int = 1,
    unix: bool = False,
) -> Measurement:
    """Serve ``n`` timed echo round trips of ``size`` bytes to the client on ``conns``
    connections; the seconds are the client's, the CPU time per round trip the server's."""
    client = client_binary()
    meter = Meter(loop, conns)
    with tempfile.TemporaryDirectory(prefix="ferroloop-bench-") as tmp:
        unix_path = os.path.join(tmp, "echo.sock") if unix else None
        address, close = loop.run_until_complete(style(loop, meter, unix_path))
        cmd = [str(client), *address, *echo_args(n, size, conns)]
        try:
            out = serve_client(loop, cmd, meter.done)
        finally:
            loop.run_until_complete(close())
    return Measurement(float(out), {"cpu_us": meter.cpu() / n * 1e6, "rss_mib": peak_rss_mib()})


def echo_args(n: int, size: int, conns: int) -> list[str]:
    """The client's SIZE CONNS WARMUP N: a warm-up of a tenth, and at least a few per
    connection (one per connection from 1000 up, where connecting dominates)."""
    warmup = max((1 if conns >= 1000 else 5) * conns, n // 10)
    return [str(size), str(conns), str(warmup), str(n)]


# ---------------------------------------------------------------- the native ceiling


def serve_native(mode: str, conns: int, client_args: list[str]) -> tuple[str, float, float]:
    """Run the client against native_echo in ``mode``; returns the client's output, the
    server's CPU seconds over the timed connections and its peak RSS in MiB."""
    server = subprocess.Popen(
        [str(native_server()), mode, str(conns)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = server.stdout.readline().strip()  # type: ignore[union-attr]
        if not port:
            raise RuntimeError(f"native_echo did not start: {server.stderr.read().strip()}")  # type: ignore[union-attr]
        client = subprocess.run(
            [str(client_binary()), *client_args[:1], "127.0.0.1", port, *client_args[1:]],
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT + 15,
        )
        if client.returncode != 0:
            raise RuntimeError(f"echo_client failed: {client.stderr.strip()}")
        report, err = server.communicate(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    cpu, rss_kib = report.split()
    return client.stdout, float(cpu), float(rss_kib) / KIB


def native_echo(n: int, size: int, conns: int) -> Measurement:
    out, cpu, rss = serve_native("echo", conns, ["tcp", *echo_args(n, size, conns)])
    return Measurement(float(out), {"cpu_us": cpu / n * 1e6, "rss_mib": rss})


# ---------------------------------------------------------------- echo rows

STYLES = [
    ("proto", "Protocol", protocol_server),
    ("streams", "streams", streams_server),
    ("sock", "sock_recv/sock_sendall", sock_server),
]
# Round trips per timed run, sized for ~0.2-0.5 s on the stdlib loop.
SIZES = [(1, 12_000), (10, 10_000), (100, 3_000)]


def register_echo(key: str, label: str, style: ServerStyle, kib: int, work: int) -> None:
    native = None
    if key == "proto" and kib == 1:

        def native(n: int) -> Measurement:
            return native_echo(n, kib * KIB, 1)

    @benchmark(
        f"echo_{key}_{kib}k",
        title=f"TCP echo, {label}, {kib} KiB, 1 client",
        unit="round trips/s",
        work=work,
        # Half under --quick: one-client rows wait on wake-ups, which a busy VM slows 2-3x.
        quick_work=work // 2,
        metrics=(CPU_PER_ROUND_TRIP,),
        native=native,
    )
    def body(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
        return echo(loop, n, style, kib * KIB)


for _key, _label, _style in STYLES:
    for _kib, _work in SIZES:
        register_echo(_key, _label, _style, _kib, _work)


@benchmark(
    "echo_unix_1k",
    title="Unix echo, Protocol, 1 KiB, 1 client",
    unit="round trips/s",
    work=12_000,
    quick_work=6_000,
    metrics=(CPU_PER_ROUND_TRIP,),
)
def echo_unix(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    return echo(loop, n, protocol_server, KIB, unix=True)


# (name, style label, server style, concurrent clients, requests per run, under --quick)
CONCURRENT_ROWS = [
    ("echo_concurrent", "Protocol", protocol_server, 100, 20_000, None),
    ("echo_concurrent_streams", "streams", streams_server, 100, 20_000, 10_000),
    ("echo_1000_proto", "Protocol", protocol_server, 1000, 20_000, 10_000),
    ("echo_1000_streams", "streams", streams_server, 1000, 20_000, 10_000),
]


def register_concurrent(
    name: str, label: str, style: ServerStyle, conns: int, work: int, quick: int | None
) -> None:
    native = None
    if style is protocol_server:

        def native(n: int) -> Measurement:
            return native_echo(n, KIB, conns)

    @benchmark(
        name,
        title=f"TCP echo, {label}, 1 KiB, {conns:,} concurrent clients",
        unit="requests/s",
        work=work,
        quick_work=quick,
        # From 1000 clients on, the client's own warm-up phase (a request on each of 1000
        # connections, then a tenth of the work) is warm-up enough.
        warmup=conns < 1000,
        metrics=(CPU_PER_REQUEST, PEAK_RSS),
        native=native,
    )
    def body(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
        raise_fd_limit()
        return echo(loop, n, style, KIB, conns=conns)


for _row in CONCURRENT_ROWS:
    register_concurrent(*_row)


# ---------------------------------------------------------------- connection churn

CHURN_BATCH = 100  # connections the client holds open at once
CHURN_WARMUP = 100  # fixed, so that n and 2n runs differ by exactly n connections
CHURN_MESSAGE = 64  # bytes echoed once per connection
CPU_PER_CONNECTION = Metric("cpu_us", "server CPU per connection", "µs")


@benchmark(
    "connections",
    title=f"TCP connections: accept, {CHURN_MESSAGE} B echo, close ({CHURN_BATCH} at a time)",
    unit="connections/s",
    work=1_500,
    quick_work=800,
    warmup=False,  # the client's own warm-up phase
    metrics=(CPU_PER_CONNECTION,),
)
def connection_churn(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """What the 1,000-client rows pay per connection, alone: the server accepts it, builds
    its transport and protocol, echoes one message and tears it all down."""
    meter = Meter(loop, n, warmup_conns=CHURN_WARMUP)
    address, close = loop.run_until_complete(protocol_server(loop, meter, None))
    churn = [str(CHURN_MESSAGE), str(CHURN_BATCH), str(CHURN_WARMUP), str(n)]
    try:
        out = serve_client(loop, [str(client_binary()), "churn", *address, *churn], meter.done)
    finally:
        loop.run_until_complete(close())
    return Measurement(float(out), {"cpu_us": meter.cpu() / n * 1e6})


# ---------------------------------------------------------------- bulk transfer

CHUNK = b"x" * (256 * KIB)  # what the sending server writes per call
CPU_PER_GIB = Metric("cpu_ms", "server CPU per GiB", "ms")


class BulkSendProtocol(asyncio.Protocol):
    """Reads the 8-byte count the client asks for, then sends that many bytes, CHUNK by CHUNK
    while the transport is below its high-water mark (pause_writing/resume_writing)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.header = b""
        self.remaining = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.meter.opened()

    def data_received(self, data: bytes) -> None:
        if len(self.header) < 8:
            self.header += data[: 8 - len(self.header)]
            if len(self.header) == 8:
                self.remaining = int.from_bytes(self.header, "little")
                self.send()

    def send(self) -> None:
        write = self.transport.write
        while self.remaining and not self.paused:
            chunk = CHUNK if self.remaining >= len(CHUNK) else CHUNK[: self.remaining]
            self.remaining -= len(chunk)
            write(chunk)  # may call pause_writing

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.meter.closed()


class DiscardProtocol(asyncio.Protocol):
    """Drops what it receives; answers EOF with one byte, then the transport closes.

    The byte tells the client everything was consumed: rloop 0.5 does not close the socket
    after EOF (connection_lost runs, the client never sees the close)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.meter.opened()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:
        self.transport.write(b".")  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.meter.closed()


def bulk_args(n: int) -> list[str]:
    return [str(max(1, n // 10)), str(n)]  # WARMUP_BYTES BYTES


def bulk(loop: asyncio.AbstractEventLoop, n: int, protocol: type[asyncio.Protocol]) -> Measurement:
    meter = Meter(loop, 1)
    server = loop.run_until_complete(loop.create_server(lambda: protocol(meter), "127.0.0.1", 0))
    mode = "sink" if protocol is BulkSendProtocol else "source"
    port = str(server.sockets[0].getsockname()[1])
    cmd = [str(client_binary()), mode, "127.0.0.1", port, *bulk_args(n)]
    try:
        out = serve_client(loop, cmd, meter.done)
    finally:
        loop.run_until_complete(server_closer(server)())
    return Measurement(float(out), {"cpu_ms": meter.cpu() / (n / GIB) * 1e3})


def native_bulk(n: int, mode: str) -> Measurement:
    client_mode = "sink" if mode == "send" else "source"
    out, cpu, _ = serve_native(mode, 1, [client_mode, *bulk_args(n)])
    return Measurement(float(out), {"cpu_ms": cpu / (n / GIB) * 1e3})


@benchmark(
    "bulk_send",
    title="TCP bulk, Protocol server sends 1 GiB (256 MiB with --quick)",
    unit="GiB/s",
    work=GIB,
    quick_work=GIB // 4,
    scale=GIB,
    work_unit="bytes",
    metrics=(CPU_PER_GIB,),
    native=lambda n: native_bulk(n, "send"),
)
def bulk_send(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    return bulk(loop, n, BulkSendProtocol)


@benchmark(
    "bulk_recv",
    title="TCP bulk, Protocol server receives 1 GiB (256 MiB with --quick)",
    unit="GiB/s",
    work=GIB,
    quick_work=GIB // 4,
    scale=GIB,
    work_unit="bytes",
    metrics=(CPU_PER_GIB,),
    native=lambda n: native_bulk(n, "recv"),
)
def bulk_recv(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    return bulk(loop, n, DiscardProtocol)


# ---------------------------------------------------------------- UDP

UDP_SIZE = 64
UDP_WINDOW = 64  # datagrams in flight: well within loopback's default socket buffers


class UdpEcho(asyncio.DatagramProtocol):
    """Echoes every datagram; the client's 1-byte markers start ("S") and stop ("E") the
    server's CPU clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)
        if len(data) == 1:
            self.marker(data)

    def marker(self, data: bytes) -> None:
        if data == b"S":
            self.cpu_start = cpu_seconds()
        elif data == b"E" and self.cpu_start is not None and self.cpu_end is None:
            self.cpu_end = cpu_seconds()
            self.loop.stop()


@benchmark(
    "udp_echo",
    title=f"UDP echo, DatagramProtocol, {UDP_SIZE} B, {UDP_WINDOW} in flight",
    unit="datagrams/s",
    work=20_000,
    quick_work=10_000,
    metrics=(Metric("cpu_us", "server CPU per datagram", "µs"),),
)
def udp_echo(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    transport, server = loop.run_until_complete(
        loop.create_datagram_endpoint(lambda: UdpEcho(loop), local_addr=("127.0.0.1", 0))
    )
    port = str(transport.get_extra_info("sockname")[1])
    cmd = [str(client_binary()), "udp", "127.0.0.1", port]
    cmd += [str(UDP_SIZE), str(UDP_WINDOW), str(max(UDP_WINDOW, n // 10)), str(n)]
    try:
        out = serve_client(loop, cmd, lambda: server.cpu_end is not None)
    finally:
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))  # let connection_lost run
    seconds, echoed = out.split()
    if server.cpu_start is None or server.cpu_end is None:
        raise RuntimeError("the server never saw the client's start and end markers")
    cpu = server.cpu_end - server.cpu_start
    return Measurement(float(seconds), {"cpu_us": cpu / int(echoed) * 1e6}, ops=int(echoed))


# ---------------------------------------------------------------- name resolution


@benchmark(
    "getaddrinfo",
    title='await loop.getaddrinfo("127.0.0.1", 80, type=SOCK_STREAM), sequential',
    unit="calls/s",
    work=5_000,
    metrics=(Metric("cpu_us", "CPU per call (all threads)", "µs"),),
)
def getaddrinfo_numeric(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    async def resolve() -> None:
        getaddrinfo = loop.getaddrinfo
        for _ in range(n):
            await getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)

    cpu = cpu_seconds()
    start = perf_counter()
    loop.run_until_complete(resolve())
    seconds = perf_counter() - start
    return Measurement(seconds, {"cpu_us": (cpu_seconds() - cpu) / n * 1e6})
