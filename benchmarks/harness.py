"""What every benchmark module shares: the registry of benchmarks and the loop specs.

A benchmark is a function ``body(loop, n) -> seconds`` that does ``n`` operations on ``loop``
and returns the wall time they took (``time.perf_counter``), excluding its own setup.
Register it with ``@benchmark(...)`` in any ``benchmarks/bench_*.py`` module: run.py finds
the module, runs the body in a fresh subprocess per loop and reports ``n / seconds``.

A body that measures more than the time returns a ``Measurement``: the seconds plus the
values of the ``Metric``s its benchmark declares (e.g. CPU time per operation), which the
table shows as extra rows under the benchmark's row. A loop that does not implement what a
body needs raises ``NotImplementedError`` (rloop does for Unix sockets): the table shows
"unsupported" rather than an error; a body whose optional dependency (a module, a program
such as wrk or cargo) is not installed raises ``Missing``: the table shows "missing".
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Metric:
    """A figure a benchmark reports besides its rate, e.g. server CPU µs per operation."""

    key: str  # the key in Measurement.metrics and in JSON
    title: str  # the extra row of the table, under the benchmark's row
    unit: str
    lower_is_better: bool = True


@dataclass(frozen=True)
class Measurement:
    seconds: float  # the wall time of the n operations
    metrics: dict[str, float] = field(default_factory=dict)  # Metric.key -> value
    ops: float | None = None  # operations done, when not n (a run of fixed duration, losses)


class Missing(Exception):
    """An optional dependency of a benchmark is not installed; the message says which."""


Body = Callable[[asyncio.AbstractEventLoop, int], "float | Measurement"]
# The same work without any event loop, e.g. a native server driven by the same client.
NativeBody = Callable[[int], Measurement]


@dataclass(frozen=True)
class Benchmark:
    name: str  # the id on the command line and in JSON
    title: str  # the row of the table
    unit: str  # what is counted per second, e.g. "callbacks/s"
    work: int  # operations in one measurement, sized for ~0.2-0.5 s on the stdlib loop
    body: Body
    metrics: tuple[Metric, ...] = ()  # what the body's Measurement reports besides the time
    quick_work: int | None = None  # the work under --quick, if less
    scale: float = 1.0  # operations per unit of the rate, e.g. 2**30 bytes for GiB/s
    warmup: bool = True  # run the body with a tenth of the work first (else it warms up itself)
    work_unit: str = ""  # what work counts, if not operations, e.g. "s of load"
    native: NativeBody | None = None  # the native ceiling of the same work

    def work_for(self, quick: bool) -> int:
        return self.quick_work if quick and self.quick_work else self.work


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(
    name: str,
    *,
    title: str,
    unit: str,
    work: int,
    metrics: tuple[Metric, ...] = (),
    quick_work: int | None = None,
    scale: float = 1.0,
    warmup: bool = True,
    work_unit: str = "",
    native: NativeBody | None = None,
) -> Callable[[Body], Body]:
    """Register ``body`` as the benchmark ``name``."""

    def register(body: Body) -> Body:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice")
        BENCHMARKS[name] = Benchmark(
            name, title, unit, work, body, metrics, quick_work, scale, warmup, work_unit, native
        )
        return body

    return register


@dataclass(frozen=True)
class LoopSpec:
    """An event loop under test: ``name=module:factory``."""

    name: str
    module: str
    factory: str

    @classmethod
    def parse(cls, text: str) -> LoopSpec:
        name, sep, target = text.partition("=")
        module, sep2, factory = target.partition(":")
        if not (sep and sep2 and name and module and factory):
            raise ValueError(f"expected name=module:factory, got {text!r}")
        return cls(name, module, factory)

    def __str__(self) -> str:
        return f"{self.name}={self.module}:{self.factory}"

    def new_loop(self) -> asyncio.AbstractEventLoop:
        factory = importlib.import_module(self.module)
        for attr in self.factory.split("."):
            factory = getattr(factory, attr)
        return factory()


DEFAULT_LOOPS = [
    LoopSpec("ferroloop", "ferroloop", "new_event_loop"),
    LoopSpec("asyncio", "asyncio", "new_event_loop"),
    LoopSpec("uvloop", "uvloop", "new_event_loop"),
    LoopSpec("rloop", "rloop", "new_event_loop"),
]
