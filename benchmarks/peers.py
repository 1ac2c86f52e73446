"""The fixed peers of the network benchmarks: programs that are the same for every loop.

- echo_client.c: the client of the echo, bulk and UDP rows.
- http_server.c: the HTTP/1.1 server the aiohttp client row talks to.
- native_echo/: the native ceiling, a Rust server on mio measured with the same client.

Each is built on first use into a per-user cache directory under $TMPDIR, keyed by a hash of
its source (and compiler), and never committed. A missing compiler raises ``Missing``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import Missing

HERE = Path(__file__).resolve().parent
NATIVE_CRATE = HERE / "native_echo"
NATIVE_SOURCES = ("Cargo.toml", "Cargo.lock", "src/main.rs")


def cache_dir() -> Path:
    cache = Path(tempfile.gettempdir()) / f"ferroloop-bench-{os.getuid()}"
    cache.mkdir(mode=0o700, exist_ok=True)
    return cache


def c_program(name: str) -> Path:
    """benchmarks/NAME.c, compiled with $CC (default cc) -O2 if this source has no build yet."""
    source_path = HERE / f"{name}.c"
    cc = os.environ.get("CC", "cc")
    digest = hashlib.sha256(source_path.read_bytes() + cc.encode()).hexdigest()[:16]
    binary = cache_dir() / f"{name}-{digest}"
    if binary.exists():
        return binary
    if shutil.which(cc.split()[0]) is None:
        raise Missing(f"no C compiler ({cc}) to build {source_path.name}; install one or set CC")
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    build = subprocess.run(
        [*cc.split(), "-O2", "-o", str(partial), str(source_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if build.returncode != 0:
        raise RuntimeError(f"building {source_path.name} failed: {build.stderr.strip()}")
    partial.replace(binary)  # atomic: a concurrent build of the same source is harmless
    return binary


def native_server() -> Path:
    """The native_echo binary, built with `cargo build --release --locked` if needed."""
    digest = hashlib.sha256()
    for name in NATIVE_SOURCES:
        digest.update((NATIVE_CRATE / name).read_bytes())
    target = cache_dir() / f"native_echo-{digest.hexdigest()[:16]}"
    binary = target / "release" / "native_echo"
    if binary.exists():
        return binary
    cargo = shutil.which("cargo")
    if cargo is None:
        raise Missing("no cargo to build benchmarks/native_echo; install Rust (rustup.rs)")
    build = subprocess.run(
        [
            cargo,
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--manifest-path",
            str(NATIVE_CRATE / "Cargo.toml"),
            "--target-dir",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if build.returncode != 0:
        tail = build.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"building native_echo failed: {' / '.join(tail)}")
    return binary
