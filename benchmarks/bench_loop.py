"""Loop-internal benchmarks: callbacks, timers, tasks and futures, no I/O.

Each body does ``n`` operations and returns the seconds they took; see harness.py.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from time import perf_counter

from harness import benchmark

# Callbacks are scheduled this many at a time, from one callback per loop iteration, so the
# ready queue stays at a realistic size and every iteration does the same work.
BATCH = 1_000


def run_in_batches(loop: asyncio.AbstractEventLoop, n: int, batch: Callable[[], None]) -> float:
    """Call ``batch`` (which does BATCH operations) n // BATCH times, once per iteration."""
    remaining = n // BATCH

    def next_batch() -> None:
        nonlocal remaining
        batch()
        remaining -= 1
        loop.call_soon(next_batch if remaining else loop.stop)

    start = perf_counter()
    loop.call_soon(next_batch)
    loop.run_forever()
    return perf_counter() - start


@benchmark("call_soon", title="call_soon, 0 args", unit="callbacks/s", work=200_000)
def call_soon_no_args(loop: asyncio.AbstractEventLoop, n: int) -> float:
    def callback() -> None:
        pass

    def batch() -> None:
        call_soon = loop.call_soon
        for _ in range(BATCH):
            call_soon(callback)

    return run_in_batches(loop, n, batch)


@benchmark("call_soon_args", title="call_soon, 2 args", unit="callbacks/s", work=200_000)
def call_soon_two_args(loop: asyncio.AbstractEventLoop, n: int) -> float:
    def callback(a: int, b: str) -> None:
        pass

    def batch() -> None:
        call_soon = loop.call_soon
        for i in range(BATCH):
            call_soon(callback, i, "x")

    return run_in_batches(loop, n, batch)


@benchmark(
    "call_soon_threadsafe",
    title="call_soon_threadsafe from another thread",
    unit="callbacks/s",
    work=40_000,
)
def call_soon_threadsafe(loop: asyncio.AbstractEventLoop, n: int) -> float:
    remaining = n

    def callback() -> None:
        nonlocal remaining
        remaining -= 1
        if not remaining:
            loop.stop()

    def producer() -> None:
        threadsafe = loop.call_soon_threadsafe
        for _ in range(n):
            threadsafe(callback)

    thread = threading.Thread(target=producer)
    start = perf_counter()
    thread.start()
    loop.run_forever()
    elapsed = perf_counter() - start
    thread.join()
    return elapsed


@benchmark(
    "call_later_cancel",
    title="call_later + cancel",
    unit="timers/s",
    work=150_000,
)
def call_later_cancel(loop: asyncio.AbstractEventLoop, n: int) -> float:
    def callback() -> None:
        pass

    def batch() -> None:
        call_later = loop.call_later
        for _ in range(BATCH):
            call_later(3600.0, callback).cancel()

    return run_in_batches(loop, n, batch)


# Deadlines are spread over this window, short enough that the clock never bounds the result
# (100,000 timers in 10 ms would be 10M timers/s).
TIMER_SPREAD = 0.010


@benchmark(
    "timers",
    title="100,000 timers firing, spread delays",
    unit="timers/s",
    work=100_000,
)
def timers_firing(loop: asyncio.AbstractEventLoop, n: int) -> float:
    rng = random.Random(n)
    delays = [rng.random() * TIMER_SPREAD for _ in range(n)]
    remaining = n

    def fire() -> None:
        nonlocal remaining
        remaining -= 1
        if not remaining:
            loop.stop()

    def schedule_all() -> None:
        call_later = loop.call_later
        for delay in delays:
            call_later(delay, fire)

    start = perf_counter()
    loop.call_soon(schedule_all)
    loop.run_forever()
    return perf_counter() - start


@benchmark("sleep0", title="await asyncio.sleep(0)", unit="iterations/s", work=80_000)
def sleep_zero(loop: asyncio.AbstractEventLoop, n: int) -> float:
    async def sleeper() -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    start = perf_counter()
    loop.run_until_complete(sleeper())
    return perf_counter() - start


GATHER_SIZE = 10_000


@benchmark(
    "gather",
    title="create_task + gather of 10,000 coroutines",
    unit="tasks/s",
    work=30_000,
)
def create_task_gather(loop: asyncio.AbstractEventLoop, n: int) -> float:
    async def nothing() -> None:
        pass

    async def spawn_and_gather() -> None:
        create_task = loop.create_task
        for _ in range(max(1, n // GATHER_SIZE)):
            await asyncio.gather(*[create_task(nothing()) for _ in range(GATHER_SIZE)])

    start = perf_counter()
    loop.run_until_complete(spawn_and_gather())
    return perf_counter() - start


@benchmark(
    "future",
    title="Future create + set_result (next iteration) + await",
    unit="round trips/s",
    work=40_000,
)
def future_round_trip(loop: asyncio.AbstractEventLoop, n: int) -> float:
    async def round_trips() -> None:
        create_future = loop.create_future
        call_soon = loop.call_soon
        for i in range(n):
            future = create_future()
            call_soon(future.set_result, i)
            await future

    start = perf_counter()
    loop.run_until_complete(round_trips())
    return perf_counter() - start
