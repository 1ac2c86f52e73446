"""HTTP benchmarks: a real server and a real client framework on the loop under test.

- uvicorn (HTTP parsing by httptools) serves a plaintext ASGI app on the loop under test, in
  the benchmark's process; wrk, one fixed native load generator for every loop, loads it
  from its own process. Requests/s are wrk's; the server measures its own CPU time.
- an aiohttp client session runs on the loop under test against http_server.c, one fixed
  native server for every loop (see peers.py).

uvicorn, httptools and aiohttp come from benchmarks/requirements.txt, wrk from the system's
packages; a row whose dependency is missing reports "missing".
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
from time import perf_counter
from typing import Any

from bench_net import cpu_seconds, peak_rss_mib
from harness import Measurement, Metric, Missing, benchmark
from peers import c_program

PIP_HINT = "pip install -r benchmarks/requirements.txt"
WRK_HINT = "apt-get install wrk (Debian/Ubuntu), or build it from https://github.com/wg/wrk"
WRK_CONNECTIONS = 50
WARMUP_REQUESTS = 300  # through one keep-alive connection before wrk starts
HELLO = b"Hello, world!"


def require(module: str) -> Any:
    try:
        return __import__(module)
    except ModuleNotFoundError as exc:
        raise Missing(f"{exc.name} is not installed; {PIP_HINT}") from None


# ---------------------------------------------------------------- uvicorn, loaded by wrk


async def hello_app(scope: dict, receive: Any, send: Any) -> None:
    """The plaintext ASGI app: the same 13 bytes for every request."""
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": HELLO})


def warm_up(port: int) -> None:
    """A few hundred requests before the timed load: imports, caches, the allocator."""
    import http.client  # here: every benchmark process imports this module

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        for _ in range(WARMUP_REQUESTS):
            conn.request("GET", "/")
            if conn.getresponse().read() != HELLO:
                raise RuntimeError("uvicorn answered something else than the app's body")
    finally:
        conn.close()


def in_thread(loop: asyncio.AbstractEventLoop, work: Any) -> asyncio.Future[None]:
    """Run the blocking ``work()`` in a thread; the future completes when it has returned."""
    done: asyncio.Future[None] = loop.create_future()

    def finish(error: BaseException | None) -> None:
        if error:
            done.set_exception(error)
        else:
            done.set_result(None)

    def run() -> None:
        error = None
        try:
            work()
        except BaseException as exc:
            error = exc
        loop.call_soon_threadsafe(finish, error)

    threading.Thread(target=run, daemon=True).start()
    return done


def parse_wrk(output: str) -> tuple[int, float]:
    """(requests, seconds) from wrk's report; raises on errors or non-2xx answers."""
    requests = re.search(r"(\d+) requests in ", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not (requests and rate) or not float(rate.group(1)):
        raise RuntimeError(f"cannot read wrk's report: {output.strip()!r}")
    count = int(requests.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad:
        raise RuntimeError(f"wrk got {bad.group(1)} non-2xx answers")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors and sum(map(int, errors.groups())) > count // 100:
        raise RuntimeError(f"wrk: {errors.group(0)}")
    return count, count / float(rate.group(1))


async def run_wrk(
    loop: asyncio.AbstractEventLoop, wrk: str, port: int, seconds: int
) -> tuple[str, float]:
    """Load the server with wrk for ``seconds``; returns wrk's report and the CPU seconds
    this process used meanwhile. wrk runs in its own process; a thread waits for it."""
    cmd = [wrk, "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
    cpu = cpu_seconds()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[bytes] = []
    try:
        await in_thread(loop, lambda: output.append(proc.communicate(timeout=seconds + 30)[0]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cpu = cpu_seconds() - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {output[0].decode().strip()}")
    return output[0].decode(), cpu


@benchmark(
    "http_uvicorn",
    title=f"HTTP, uvicorn + httptools plaintext server, wrk -t1 -c{WRK_CONNECTIONS}",
    unit="requests/s",
    work=2,
    quick_work=1,
    warmup=False,  # the body warms the server up itself, then wrk runs for n seconds
    work_unit="s of wrk load",
    metrics=(
        Metric("cpu_us", "server CPU per request", "µs"),
        Metric("rss_mib", "server peak RSS (ru_maxrss)", "MiB"),
    ),
)
def http_uvicorn(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    uvicorn = require("uvicorn")
    require("httptools")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise Missing(f"wrk is not installed; {WRK_HINT}")
    config = uvicorn.Config(
        hello_app,
        host="127.0.0.1",
        port=0,  # uvicorn's own create_server, as in production; the port is read back
        loop="none",  # the loop is ours: the one under test
        http="httptools",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)

    async def load() -> tuple[str, float]:
        serving = asyncio.ensure_future(server.serve())
        try:
            while not server.started:
                if serving.done():
                    serving.result()  # raises what failed
                    raise RuntimeError("uvicorn stopped before serving")
                await asyncio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            await in_thread(loop, lambda: warm_up(port))
            return await run_wrk(loop, wrk, port, n)
        finally:
            server.should_exit = True
            await serving

    output, cpu = loop.run_until_complete(load())
    requests, seconds = parse_wrk(output)
    metrics = {"cpu_us": cpu / requests * 1e6, "rss_mib": peak_rss_mib()}
    return Measurement(seconds, metrics, ops=requests)


# ---------------------------------------------------------------- aiohttp client

CLIENT_CONCURRENCY = 10


@benchmark(
    "http_aiohttp_client",
    title=f"HTTP, aiohttp client, {CLIENT_CONCURRENCY} concurrent keep-alive GETs",
    unit="requests/s",
    work=3_000,
    quick_work=1_500,
    metrics=(Metric("cpu_us", "client CPU per request", "µs"),),
)
def http_aiohttp_client(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    aiohttp = require("aiohttp")
    server = subprocess.Popen(
        [str(c_program("http_server"))],
        stdin=subprocess.PIPE,  # the server exits when this closes
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = server.stdout.readline().strip()  # type: ignore[union-attr]
        if not port:
            raise RuntimeError("http_server did not start")
        url = f"http://127.0.0.1:{port}/"

        async def get(session: Any) -> None:
            async with session.get(url) as response:
                if response.status != 200 or await response.read() != HELLO:
                    raise RuntimeError(f"unexpected answer: {response.status}")

        async def requests() -> tuple[float, float]:
            connector = aiohttp.TCPConnector(limit=CLIENT_CONCURRENCY)
            async with aiohttp.ClientSession(connector=connector) as session:
                # Open the pool's connections before the clock starts.
                await asyncio.gather(*(get(session) for _ in range(CLIENT_CONCURRENCY)))
                remaining = n

                async def worker() -> None:
                    nonlocal remaining
                    while remaining > 0:
                        remaining -= 1
                        await get(session)

                cpu, start = cpu_seconds(), perf_counter()
                await asyncio.gather(*(worker() for _ in range(CLIENT_CONCURRENCY)))
                return perf_counter() - start, cpu_seconds() - cpu

        seconds, cpu = loop.run_until_complete(requests())
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return Measurement(seconds, {"cpu_us": cpu / n * 1e6})
