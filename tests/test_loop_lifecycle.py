"""run_forever / run_until_complete / stop / close, and what a closed loop refuses."""

import asyncio
import concurrent.futures
import signal
import socket
import threading

import pytest


def test_loop_is_an_abstract_event_loop_that_takes_attributes(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)
    loop.some_library_attribute = 42
    assert loop.some_library_attribute == 42


def test_run_until_complete_with_a_coroutine_returns_its_result(loop):
    async def main(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(main(21)) == 42
    assert loop.run_until_complete(main(1)) == 2  # a loop can be run again


def test_run_until_complete_with_a_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_with_an_awaitable_object(loop):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert loop.run_until_complete(Awaitable()) == "awaited"


def test_run_until_complete_raises_the_coroutine_exception(loop):
    async def main():
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


def test_run_until_complete_with_a_non_awaitable(assert_same_error):
    exc = assert_same_error(lambda lp: lp.run_until_complete(42))
    assert isinstance(exc, TypeError)


def test_run_until_complete_with_a_future_of_another_loop(assert_same_error):
    def action(lp):
        other = asyncio.new_event_loop()
        try:
            lp.run_until_complete(other.create_future())
        finally:
            other.close()

    exc = assert_same_error(action)
    assert isinstance(exc, ValueError)


def test_run_until_complete_stops_when_the_future_is_done_despite_other_work(loop):
    spins = [0]

    def spin():
        spins[0] += 1
        loop.call_soon(spin)

    far = loop.call_later(3600, print)
    loop.call_soon(spin)
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "result")
    assert loop.run_until_complete(fut) == "result"
    assert spins[0] > 0
    far.cancel()


def test_stop_inside_run_until_complete_before_the_future_is_done(assert_same_error):
    def action(lp):
        lp.call_soon(lp.stop)
        lp.run_until_complete(lp.create_future())

    exc = assert_same_error(action)
    assert isinstance(exc, RuntimeError)


def run_reentrant(lp, call):
    """Run `call(lp)` from a callback of the running loop and re-raise what it raised."""
    caught = []

    def callback():
        try:
            call(lp)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            caught.append(exc)
        lp.stop()

    lp.call_soon(callback)
    lp.run_forever()
    assert caught, "the nested call raised nothing"
    raise caught[0]


def test_run_forever_when_already_running(assert_same_error):
    exc = assert_same_error(lambda lp: run_reentrant(lp, lambda inner: inner.run_forever()))
    assert isinstance(exc, RuntimeError)


def test_run_until_complete_when_already_running(assert_same_error):
    def nested(lp):
        fut = lp.create_future()
        fut.set_result(None)
        lp.run_until_complete(fut)

    exc = assert_same_error(lambda lp: run_reentrant(lp, nested))
    assert isinstance(exc, RuntimeError)


def test_run_forever_while_another_loop_of_the_same_kind_runs(assert_same_error):
    def nested(lp):
        other = type(lp)()
        try:
            other.run_forever()
        finally:
            other.close()

    exc = assert_same_error(lambda lp: run_reentrant(lp, nested))
    assert isinstance(exc, RuntimeError)


def test_stdlib_loop_refuses_to_run_inside_the_running_loop(loop):
    def nested(lp):
        other = asyncio.new_event_loop()
        try:
            other.run_forever()
        finally:
            other.close()

    with pytest.raises(RuntimeError, match="another loop is running"):
        run_reentrant(loop, nested)


def test_close_while_running(assert_same_error):
    exc = assert_same_error(lambda lp: run_reentrant(lp, lambda inner: inner.close()))
    assert isinstance(exc, RuntimeError)


def test_is_running_and_is_closed(loop):
    seen = []
    assert not loop.is_running()
    assert not loop.is_closed()
    loop.call_soon(lambda: seen.append((loop.is_running(), loop.is_closed())))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [(True, False)]
    assert not loop.is_running()
    loop.close()
    assert loop.is_closed()
    assert not loop.is_running()


def test_close_twice_is_fine(loop):
    loop.close()
    loop.close()
    assert loop.is_closed()


def test_running_loop_is_cleared_after_run_forever_returns_or_raises(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert asyncio._get_running_loop() is None

    async def fail():
        raise ValueError

    with pytest.raises(ValueError):
        loop.run_until_complete(fail())
    assert asyncio._get_running_loop() is None
    assert not loop.is_running()


def test_close_drops_pending_callbacks_and_timers(loop):
    calls = []
    loop.call_soon(calls.append, "soon")
    loop.call_later(0, calls.append, "later")
    loop.close()
    assert calls == []


async def _never_awaited():
    pass


def _with_coroutine(use):
    def action(lp):
        coro = _never_awaited()
        try:
            use(lp, coro)
        finally:
            coro.close()

    return action


def _with_socketpair(use):
    def action(lp):
        a, b = socket.socketpair()
        try:
            use(lp, a)
        finally:
            a.close()
            b.close()

    return action


CLOSED_LOOP_CALLS = {
    "call_soon": lambda lp: lp.call_soon(print),
    "call_soon_threadsafe": lambda lp: lp.call_soon_threadsafe(print),
    "call_later": lambda lp: lp.call_later(1, print),
    "call_at": lambda lp: lp.call_at(lp.time() + 1, print),
    "run_forever": lambda lp: lp.run_forever(),
    "run_until_complete": _with_coroutine(lambda lp, coro: lp.run_until_complete(coro)),
    "create_task": _with_coroutine(lambda lp, coro: lp.create_task(coro)),
    "run_in_executor": lambda lp: lp.run_in_executor(None, print),
    "run_in_custom_executor": lambda lp: lp.run_in_executor(
        concurrent.futures.ThreadPoolExecutor(1), print
    ),
    "add_reader": _with_socketpair(lambda lp, sock: lp.add_reader(sock, print)),
    "add_writer": _with_socketpair(lambda lp, sock: lp.add_writer(sock, print)),
    "add_signal_handler": lambda lp: lp.add_signal_handler(signal.SIGUSR1, print),
}


@pytest.mark.parametrize("name", sorted(CLOSED_LOOP_CALLS))
def test_closed_loop_refuses(name, assert_same_error):
    call = CLOSED_LOOP_CALLS[name]

    def action(lp):
        lp.close()
        call(lp)

    exc = assert_same_error(action)
    assert type(exc) is RuntimeError
    assert str(exc) == "Event loop is closed"


def test_closed_loop_remove_reader_and_writer_return_false(loop):
    a, b = socket.socketpair()
    with a, b:
        loop.add_reader(a, print)
        loop.add_writer(a, print)
        loop.close()
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(a) is False


def test_interrupted_run_until_complete_does_not_stop_a_later_run(loop):
    def interrupt():
        raise KeyboardInterrupt

    task = loop.create_task(asyncio.sleep(0.01))
    loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(task)
    # The task completing later must not stop the loop: run_until_complete cleaned up.
    calls = []
    loop.call_later(0.05, calls.append, "still running")
    loop.call_later(0.06, loop.stop)
    loop.run_forever()
    assert task.done()
    assert calls == ["still running"]


def test_run_until_complete_with_an_already_done_future(loop):
    fut = loop.create_future()
    fut.set_result("ready")
    assert loop.run_until_complete(fut) == "ready"


def test_loop_runs_in_a_worker_thread(loop):
    results = []

    async def main():
        await asyncio.sleep(0.001)
        return asyncio.get_running_loop(), threading.current_thread()

    def worker():
        results.append(loop.run_until_complete(main()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert results == [(loop, thread)]


def test_two_loops_in_one_thread_keep_their_own_callbacks(loop, loop_factory):
    other = loop_factory()
    calls = []
    try:
        loop.call_soon(calls.append, "first loop")
        other.call_soon(calls.append, "other loop")
        other.call_later(0.001, calls.append, "other timer")
        loop.call_later(0.001, loop.stop)
        loop.run_forever()
        assert calls == ["first loop"]
        other.call_later(0.002, other.stop)
        other.run_forever()
        assert calls == ["first loop", "other loop", "other timer"]
    finally:
        other.close()
