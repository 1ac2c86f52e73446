"""Instructions per operation of the loop-internal benchmarks (and of one connection's
life, ``connections``), counted by callgrind.

Wall-clock rates on a shared 2-core machine swing with the load; instruction counts do
not, so this is the figure to optimise against (cycles still decide the real speed: cache
misses and branch mispredictions are not counted here).

    python benchmarks/instructions.py [--bench NAME ...] [--loop NAME=MODULE:FACTORY ...]

Each (benchmark, loop) pair runs under ``valgrind --tool=callgrind`` twice, with n and 2n
operations; the difference over n is the cost of one operation, setup excluded.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import DEFAULT_LOOPS, LoopSpec  # noqa: E402

# Small enough for callgrind's ~50x slowdown; large enough to dwarf the noise of setup.
DEFAULT_WORK = {
    "call_soon": 20_000,
    "call_soon_args": 20_000,
    "call_later_cancel": 20_000,
    "timers": 20_000,
    "sleep0": 10_000,
    "gather": 10_000,
    "future": 10_000,
    # The server process only (the client is a child callgrind does not follow); the
    # kernel's share of a connection is not counted.
    "connections": 500,
}

CHILD = """
import sys
sys.path.insert(0, {here!r})
import bench_loop, bench_net
from harness import BENCHMARKS, LoopSpec
loop = LoopSpec.parse({spec!r}).new_loop()
BENCHMARKS[{bench!r}].body(loop, 1000)  # warm-up: imports, caches, allocator pools
BENCHMARKS[{bench!r}].body(loop, {n})
loop.close()
"""


def count(spec: LoopSpec, bench: str, n: int) -> int:
    """Total instructions of a child process that runs ``bench`` with n operations."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        code = CHILD.format(here=str(HERE), spec=str(spec), bench=bench, n=n)
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        subprocess.run(
            [*valgrind, sys.executable, "-c", code],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        summary = re.search(r"^summary: (\d+)", out.read_text(), re.M)
        assert summary, "callgrind wrote no summary"
        return int(summary.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="append", choices=sorted(DEFAULT_WORK))
    parser.add_argument("--loop", action="append", type=LoopSpec.parse)
    args = parser.parse_args()
    loops = args.loop or DEFAULT_LOOPS
    benches = args.bench or list(DEFAULT_WORK)
    print("| benchmark | " + " | ".join(spec.name for spec in loops) + " |")
    print("|---|" + "---:|" * len(loops))
    for bench in benches:
        n = DEFAULT_WORK[bench]
        cells = []
        for spec in loops:
            try:
                per_op = (count(spec, bench, 2 * n) - count(spec, bench, n)) / n
                cells.append(f"{per_op:,.0f}")
            except subprocess.CalledProcessError as exc:
                cells.append("error")
                print(exc.stderr.decode(errors="replace")[-500:], file=sys.stderr)
        print(f"| {bench} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
