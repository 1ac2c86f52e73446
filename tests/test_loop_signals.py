"""add_signal_handler / remove_signal_handler, and Ctrl-C on a blocked loop."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest


@pytest.fixture(autouse=True)
def harmless_sigusr():
    """Keep a stray SIGUSR1/SIGUSR2 from killing pytest if a loop fails to install a handler."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    for sig in saved:
        signal.signal(sig, lambda *args: None)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_with_guard(loop, seconds=2):
    guard = loop.call_later(seconds, loop.stop)
    loop.run_forever()
    guard.cancel()


def test_signal_handler_runs_in_the_loop_with_its_args(loop):
    calls = []

    def on_signal(arg):
        calls.append((arg, asyncio.get_running_loop()))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, on_signal, "arg")
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    run_with_guard(loop)
    assert calls == [("arg", loop)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True


def test_signal_wakes_a_loop_blocked_with_nothing_to_do(loop):
    calls = []

    def on_signal():
        calls.append(time.monotonic())
        loop.stop()

    def send_later():
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    loop.add_signal_handler(signal.SIGUSR1, on_signal)
    thread = threading.Thread(target=send_later)
    start = time.monotonic()
    thread.start()
    run_with_guard(loop, seconds=5)
    thread.join()
    assert len(calls) == 1
    assert calls[0] - start < 2


def test_signal_handler_runs_while_the_loop_is_busy_with_callbacks(loop):
    # The ready queue never empties, so the loop never blocks; with no fd watched but the
    # signal socket, the handler must still run within a few iterations.
    iterations_after_kill = []
    handled = []

    async def busy():
        os.kill(os.getpid(), signal.SIGUSR1)
        for iteration in range(10_000):
            if handled:
                iterations_after_kill.append(iteration)
                return
            await asyncio.sleep(0)

    loop.add_signal_handler(signal.SIGUSR1, handled.append, "usr1")
    loop.run_until_complete(busy())
    assert handled == ["usr1"]
    assert iterations_after_kill and iterations_after_kill[0] <= 100


def test_two_signals_each_run_their_handler(loop):
    calls = []

    def on_signal(name):
        calls.append(name)
        if len(calls) == 2:
            loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, on_signal, "usr1")
    loop.add_signal_handler(signal.SIGUSR2, on_signal, "usr2")
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR2)
    run_with_guard(loop)
    assert sorted(calls) == ["usr1", "usr2"]


def test_adding_a_handler_again_replaces_it(loop):
    calls = []

    def on_signal(name):
        calls.append(name)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, on_signal, "first")
    loop.add_signal_handler(signal.SIGUSR1, on_signal, "second")
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    run_with_guard(loop)
    assert calls == ["second"]


def test_remove_signal_handler_returns_true_then_false_and_restores_the_default(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert loop.remove_signal_handler(signal.SIGUSR2) is False


def test_removing_a_sigint_handler_restores_the_keyboard_interrupt_handler(loop):
    saved = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, print)
        assert loop.remove_signal_handler(signal.SIGINT) is True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, saved)


def test_close_removes_signal_handlers_and_the_wakeup_fd(loop):
    previous_wakeup_fd = signal.set_wakeup_fd(-1)
    assert previous_wakeup_fd == -1
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1


async def coroutine_function():
    pass


BAD_ADDS = {
    "invalid number": lambda lp: lp.add_signal_handler(100000, print),
    "zero": lambda lp: lp.add_signal_handler(0, print),
    "not an int": lambda lp: lp.add_signal_handler("SIGUSR1", print),
    "float": lambda lp: lp.add_signal_handler(10.0, print),
    "coroutine function": lambda lp: lp.add_signal_handler(signal.SIGUSR1, coroutine_function),
    "SIGKILL": lambda lp: lp.add_signal_handler(signal.SIGKILL, print),
    "SIGSTOP": lambda lp: lp.add_signal_handler(signal.SIGSTOP, print),
    "remove invalid number": lambda lp: lp.remove_signal_handler(100000),
    "remove not an int": lambda lp: lp.remove_signal_handler("SIGUSR1"),
}


@pytest.mark.parametrize("name", sorted(BAD_ADDS))
def test_bad_signal_handler_calls_raise_like_the_stdlib(assert_same_error, name):
    exc = assert_same_error(BAD_ADDS[name])
    assert isinstance(exc, (ValueError, TypeError, RuntimeError))


def test_coroutine_object_as_signal_handler(assert_same_error):
    def action(lp):
        coro = coroutine_function()
        try:
            lp.add_signal_handler(signal.SIGUSR1, coro)
        finally:
            coro.close()

    exc = assert_same_error(action)
    assert isinstance(exc, TypeError)


def test_add_signal_handler_outside_the_main_thread(assert_same_error):
    def action(lp):
        caught = []

        def in_thread():
            try:
                lp.add_signal_handler(signal.SIGUSR1, print)
            except Exception as exc:  # noqa: BLE001 - re-raised in the main thread
                caught.append(exc)

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        if caught:
            raise caught[0]

    exc = assert_same_error(action)
    assert isinstance(exc, RuntimeError)
    assert signal.getsignal(signal.SIGUSR1) != signal.SIG_DFL  # still the fixture's handler


CTRL_C_PRELUDE = """\
import asyncio
from {module} import new_event_loop

def ready():
    print("ready", flush=True)
"""

CTRL_C_SCRIPTS = {
    "run_forever idle": """
        loop = new_event_loop()
        loop.call_soon(ready)
        loop.run_forever()
    """,
    "run_forever waiting for a far timer": """
        loop = new_event_loop()
        loop.call_later(30, print, "timer fired")
        loop.call_soon(ready)
        loop.run_forever()
    """,
    "Runner sleeping": """
        async def main():
            ready()
            await asyncio.sleep(30)

        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(main())
    """,
}


@pytest.mark.parametrize("scenario", sorted(CTRL_C_SCRIPTS))
def test_ctrl_c_interrupts_a_blocked_loop(loop_factory, scenario):
    module = loop_factory.__module__.split(".")[0]
    script = CTRL_C_PRELUDE.format(module=module) + textwrap.dedent(CTRL_C_SCRIPTS[scenario])
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.05)  # let the loop reach its blocking poll
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    assert "KeyboardInterrupt" in stderr
    assert proc.returncode == -signal.SIGINT
    assert elapsed < 2
