"""Network benchmarks: echo servers on the loop under test, driven over loopback by one client.

The server runs in the benchmark's process, on the loop under test, in one of three styles:
``asyncio.Protocol`` (``transport.write`` in ``data_received``), streams
(``asyncio.start_server``: read, write, drain) or ``loop.sock_recv``/``loop.sock_sendall`` on
sockets from ``loop.sock_accept``. The client is echo_client.c, one native program for every
loop, run as a separate process (built with ``cc`` on first use into a per-user cache
directory, keyed by the source's hash), so only the server's loop varies and the client
never competes for the server's GIL. The client opens its connections, does a warm-up on
them, closes them, opens fresh ones for the timed phase and reports how long the timed round
trips took. The server counts connections: ``getrusage(RUSAGE_SELF)`` from the moment it
sees the first timed connection to the moment the last one closes gives its CPU time (user +
system, every thread) per round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from harness import Measurement, Metric, benchmark

HERE = Path(__file__).resolve().parent
CLIENT_SOURCE = HERE / "echo_client.c"
READ_SIZE = 64 * 1024  # what the streams and sock_* servers ask for per read
CLIENT_TIMEOUT = 100.0  # seconds; the client's own alarm ends it after 110 s anyway
KIB = 1024

CPU_PER_ROUND_TRIP = Metric("cpu_us", "server CPU per round trip", "µs")
CPU_PER_REQUEST = Metric("cpu_us", "server CPU per request", "µs")
PEAK_RSS = Metric("rss_mib", "server peak RSS (ru_maxrss)", "MiB")


# ---------------------------------------------------------------- the client program


def client_binary() -> Path:
    """The compiled echo client, built with $CC (default cc) if this source has no build yet."""
    source = CLIENT_SOURCE.read_bytes()
    cc = os.environ.get("CC", "cc")
    digest = hashlib.sha256(source + cc.encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"ferroloop-bench-{os.getuid()}"
    binary = cache / f"echo_client-{digest}"
    if binary.exists():
        return binary
    cache.mkdir(mode=0o700, exist_ok=True)
    if shutil.which(cc.split()[0]) is None:
        raise RuntimeError(f"no C compiler ({cc}) to build {CLIENT_SOURCE.name}; set CC")
    partial = cache / f"{binary.name}.{os.getpid()}.tmp"
    build = subprocess.run(
        [*cc.split(), "-O2", "-o", str(partial), str(CLIENT_SOURCE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if build.returncode != 0:
        raise RuntimeError(f"building {CLIENT_SOURCE.name} failed: {build.stderr.strip()}")
    partial.replace(binary)  # atomic: a concurrent build of the same source is harmless
    return binary


# ---------------------------------------------------------------- the server side


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Counts the server's connections and stops the loop when the client's phases are over.

    The client opens ``conns`` connections for its warm-up, closes them, then opens ``conns``
    more for the timed phase: the CPU clock runs from the open of connection ``conns + 1`` to
    the close of the ``2 * conns``-th connection.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, conns: int) -> None:
        self.loop = loop
        self.conns = conns
        self.opens = self.closes = 0
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None

    def opened(self) -> None:
        self.opens += 1
        if self.opens == self.conns + 1:
            self.cpu_start = cpu_seconds()

    def closed(self) -> None:
        self.closes += 1
        if self.closes == 2 * self.conns:
            self.cpu_end = cpu_seconds()
            self.loop.stop()


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


async def protocol_server(
    loop: asyncio.AbstractEventLoop, meter: Meter, unix_path: str | None
) -> tuple[Address, Closer]:
    if unix_path:
        server = await loop.create_unix_server(lambda: EchoProtocol(meter), unix_path)
        address = ["unix", unix_path]
    else:
        server = await loop.create_server(lambda: EchoProtocol(meter), "127.0.0.1", 0)
        address = ["tcp", "127.0.0.1", str(server.sockets[0].getsockname()[1])]

    async def close() -> None:
        server.close()
        await server.wait_closed()

    return address, close


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
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    address = ["tcp", "127.0.0.1", str(server.sockets[0].getsockname()[1])]

    async def close() -> None:
        server.close()
        await server.wait_closed()

    return address, close


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
    listener.listen(128)
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
        warmup = max(5 * conns, n // 10)
        cmd = [str(client), *address, str(size), str(conns), str(warmup), str(n)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + CLIENT_TIMEOUT
        exited_at: list[float] = []

        def watchdog() -> None:
            """Stop the loop if the client died or hung (normally meter.closed() stops it)."""
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
            if proc.poll() is None and meter.cpu_end is None:
                proc.kill()
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            loop.run_until_complete(close())
    if proc.returncode != 0:
        detail = err.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise RuntimeError(f"echo client failed: {detail[0]}")
    if meter.cpu_start is None or meter.cpu_end is None:
        raise RuntimeError(
            f"the server saw {meter.opens} connections open and {meter.closes} close, "
            f"expected {2 * conns} of each"
        )
    cpu = meter.cpu_end - meter.cpu_start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB  # KiB on Linux
    return Measurement(float(out), {"cpu_us": cpu / n * 1e6, "rss_mib": rss})


# ---------------------------------------------------------------- the rows

STYLES = [
    ("proto", "Protocol", protocol_server),
    ("streams", "streams", streams_server),
    ("sock", "sock_recv/sock_sendall", sock_server),
]
# Round trips per timed run, sized for ~0.2-0.5 s on the stdlib loop.
SIZES = [(1, 12_000), (10, 10_000), (100, 3_000)]


def register_echo(key: str, label: str, style: ServerStyle, kib: int, work: int) -> None:
    @benchmark(
        f"echo_{key}_{kib}k",
        title=f"TCP echo, {label}, {kib} KiB, 1 client",
        unit="round trips/s",
        work=work,
        metrics=(CPU_PER_ROUND_TRIP,),
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
    metrics=(CPU_PER_ROUND_TRIP,),
)
def echo_unix(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    return echo(loop, n, protocol_server, KIB, unix=True)


CONCURRENT = 100


@benchmark(
    "echo_concurrent",
    title=f"TCP echo, Protocol, 1 KiB, {CONCURRENT} concurrent clients",
    unit="requests/s",
    work=20_000,
    metrics=(CPU_PER_REQUEST, PEAK_RSS),
)
def echo_concurrent(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    return echo(loop, n, protocol_server, KIB, conns=CONCURRENT)
