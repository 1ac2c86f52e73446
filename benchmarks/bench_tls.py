"""TLS benchmark: a Protocol echo server with ``ssl=`` on the loop under test.

The client is tls_client.py, one blocking-socket Python program for every loop, run as a
separate process: it opens connections a batch at a time, each doing its handshake and one
echo, holds the batch open, then closes it. The server reports its CPU time per connection
and its peak RSS, which with a batch of connections open at once shows what each TLS
connection keeps. The certificate is an ECDSA P-256 one made with the openssl command, so
that the handshakes' public-key work does not drown the loop's share.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_net import (
    CPU_PER_CONNECTION,
    PEAK_RSS,
    EchoProtocol,
    Meter,
    peak_rss_mib,
    serve_client,
    server_closer,
)
from harness import Measurement, Missing, benchmark

HERE = Path(__file__).resolve().parent
TLS_HELD = 200  # connections the client holds open at once
TLS_WARMUP = 200


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed ECDSA certificate for localhost and 127.0.0.1: (certfile, keyfile)."""
    if shutil.which("openssl") is None:
        raise Missing("the openssl command (Debian package openssl)")
    certfile, keyfile = f"{directory}/cert.pem", f"{directory}/key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", keyfile, "-out", certfile, "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return certfile, keyfile


@benchmark(
    "tls_connections",
    title=f"TLS connections: handshake, 1 KiB echo, close ({TLS_HELD} held open at a time)",
    unit="connections/s",
    work=600,
    quick_work=400,
    warmup=False,  # the client's own warm-up phase
    metrics=(CPU_PER_CONNECTION, PEAK_RSS),
)
def tls_connections(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="ferroloop-bench-tls-") as tmp:
        certfile, keyfile = make_certificate(tmp)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        meter = Meter(loop, n, warmup_conns=TLS_WARMUP)
        server = loop.run_until_complete(
            loop.create_server(lambda: EchoProtocol(meter), "127.0.0.1", 0, ssl=context)
        )
        port = str(server.sockets[0].getsockname()[1])
        client = [sys.executable, str(HERE / "tls_client.py"), "127.0.0.1", port, certfile]
        try:
            out = serve_client(loop, [*client, str(TLS_HELD), str(TLS_WARMUP), str(n)], meter.done)
        finally:
            loop.run_until_complete(server_closer(server)())
    return Measurement(float(out), {"cpu_us": meter.cpu() / n * 1e6, "rss_mib": peak_rss_mib()})
