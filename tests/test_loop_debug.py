"""Debug mode: argument checks, thread checks, slow callback warnings, origin tracking."""

import asyncio
import logging
import re
import sys
import threading
import time

import pytest


def on_stdlib(scenario):
    stdlib_loop = asyncio.new_event_loop()
    try:
        return scenario(stdlib_loop)
    finally:
        stdlib_loop.close()


def test_set_debug_and_get_debug(loop):
    assert loop.get_debug() == on_stdlib(lambda lp: lp.get_debug())
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_slow_callback_duration_defaults_to_the_stdlib_value(loop):
    assert loop.slow_callback_duration == on_stdlib(lambda lp: lp.slow_callback_duration)
    loop.slow_callback_duration = 0.5
    assert loop.slow_callback_duration == 0.5


async def coroutine_function():
    pass


SCHEDULERS = {
    "call_soon": lambda lp, cb: lp.call_soon(cb),
    "call_soon_threadsafe": lambda lp, cb: lp.call_soon_threadsafe(cb),
    "call_later": lambda lp, cb: lp.call_later(1, cb),
    "call_at": lambda lp, cb: lp.call_at(lp.time() + 1, cb),
}


@pytest.mark.parametrize("method", sorted(SCHEDULERS))
@pytest.mark.parametrize("kind", ["coroutine function", "coroutine", "non-callable"])
def test_debug_mode_rejects_bad_callbacks(assert_same_error, method, kind):
    schedule = SCHEDULERS[method]
    bad_callback = 42  # one object for both loops: its repr is in the message

    def action(lp):
        lp.set_debug(True)
        if kind == "coroutine function":
            schedule(lp, coroutine_function)
        elif kind == "coroutine":
            coro = coroutine_function()
            try:
                schedule(lp, coro)
            finally:
                coro.close()
        else:
            schedule(lp, bad_callback)

    exc = assert_same_error(action)
    assert isinstance(exc, TypeError)


def call_from_thread(lp, call):
    """While `lp` runs in this thread, run `call(lp)` in another thread; re-raise its error."""
    caught = []

    def in_thread():
        try:
            call(lp)
        except Exception as exc:  # noqa: BLE001 - re-raised in the loop's thread
            caught.append(exc)
        lp.call_soon_threadsafe(lp.stop)

    lp.set_debug(True)
    lp.call_soon(lambda: threading.Thread(target=in_thread).start())
    lp.run_forever()
    if caught:
        raise caught[0]


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_debug_mode_rejects_non_threadsafe_calls_from_another_thread(assert_same_error, method):
    schedule = SCHEDULERS[method]
    exc = assert_same_error(lambda lp: call_from_thread(lp, lambda inner: schedule(inner, print)))
    assert isinstance(exc, RuntimeError)
    assert "Non-thread-safe operation" in str(exc)


def test_debug_mode_allows_call_soon_threadsafe_from_another_thread(loop):
    calls = []
    call_from_thread(loop, lambda lp: lp.call_soon_threadsafe(calls.append, "ok"))
    assert calls == ["ok"]


def test_debug_mode_allows_other_threads_while_the_loop_is_not_running(loop):
    loop.set_debug(True)
    handles = []
    thread = threading.Thread(target=lambda: handles.append(loop.call_soon(print)))
    thread.start()
    thread.join()
    assert len(handles) == 1
    handles[0].cancel()


def slow_callback():
    time.sleep(0.03)


def test_slow_callback_is_logged_like_the_stdlib(loop, caplog):
    def scenario(lp):
        caplog.clear()
        lp.set_debug(True)
        lp.slow_callback_duration = 0.01
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            lp.call_soon(slow_callback)
            lp.call_soon(lp.stop)
            lp.run_forever()
        return [
            (r.levelno, re.sub(r"took \d+\.\d{3} seconds", "took N seconds", r.getMessage()))
            for r in caplog.records
            if r.name == "asyncio"
        ]

    observed = scenario(loop)
    assert len(observed) == 1
    level, text = observed[0]
    assert level == logging.WARNING
    assert text.startswith("Executing <Handle slow_callback() at ")
    assert text.endswith(" took N seconds")
    assert observed == on_stdlib(scenario)


def test_fast_callbacks_are_not_logged_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 10
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_slow_callbacks_are_not_logged_without_debug_mode(loop, caplog):
    loop.set_debug(False)
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_debug_mode_exception_context_has_the_same_keys_as_the_stdlib(loop):
    def failing():
        raise ValueError

    def scenario(lp):
        contexts = []
        lp.set_debug(True)
        lp.set_exception_handler(lambda _, ctx: contexts.append(sorted(ctx)))
        lp.call_soon(failing)
        lp.call_soon(lp.stop)
        lp.run_forever()
        return contexts

    observed = scenario(loop)
    assert observed == on_stdlib(scenario)
    assert "source_traceback" in observed[0]


def test_debug_mode_tracks_coroutine_origins_while_running(loop):
    def scenario(lp):
        depths = []
        before = sys.get_coroutine_origin_tracking_depth()
        lp.set_debug(True)
        lp.call_soon(lambda: depths.append(sys.get_coroutine_origin_tracking_depth()))
        lp.call_soon(lp.stop)
        lp.run_forever()
        depths.append(sys.get_coroutine_origin_tracking_depth() - before)
        return depths

    observed = scenario(loop)
    assert observed[0] > 0
    assert observed[1] == 0
    assert observed == on_stdlib(scenario)
