"""The fixed client of the ``tls_connections`` row: the same program for every loop.

    python tls_client.py HOST PORT CAFILE HELD WARMUP N

Blocking sockets and the stdlib's ssl module, so nothing in it depends on a loop. It opens
connections HELD at a time: each does its TLS handshake and echoes one KiB, and once HELD
are open they are all closed. WARMUP connections go first (untimed), then N timed ones.
Prints the seconds the timed connections took.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time

MESSAGE = b"t" * 1024


def open_one(context: ssl.SSLContext, address: tuple[str, int]) -> ssl.SSLSocket:
    raw = socket.create_connection(address)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    sock.sendall(MESSAGE)
    received = 0
    while received < len(MESSAGE):
        chunk = sock.recv(len(MESSAGE) - received)
        if not chunk:
            raise ConnectionError("the server closed before echoing")
        received += len(chunk)
    return sock


def phase(context: ssl.SSLContext, address: tuple[str, int], held: int, count: int) -> None:
    for start in range(0, count, held):
        batch = [open_one(context, address) for _ in range(min(held, count - start))]
        for sock in batch:
            sock.close()


def main(argv: list[str]) -> int:
    host, port, cafile, held, warmup, n = argv
    context = ssl.create_default_context(cafile=cafile)
    address = (host, int(port))
    phase(context, address, int(held), int(warmup))
    start = time.perf_counter()
    phase(context, address, int(held), int(n))
    print(time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
