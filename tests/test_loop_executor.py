"""run_in_executor, the default executor and its shutdown, asyncio.to_thread."""

import asyncio
import concurrent.futures
import contextvars
import threading

import pytest

var = contextvars.ContextVar("var", default="unset")


def whoami(*args):
    return threading.current_thread().name, args


def test_run_in_default_executor_runs_in_another_thread(loop):
    fut = loop.run_in_executor(None, whoami, 1, "two")
    assert isinstance(fut, asyncio.Future)
    name, args = loop.run_until_complete(fut)
    assert name != threading.current_thread().name
    assert args == (1, "two")


def test_run_in_executor_propagates_exceptions(loop):
    def fail():
        raise LookupError("from thread")

    with pytest.raises(LookupError, match="from thread"):
        loop.run_until_complete(loop.run_in_executor(None, fail))


def test_run_in_a_custom_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom") as executor:
        name, args = loop.run_until_complete(loop.run_in_executor(executor, whoami, 3))
    assert name.startswith("custom")
    assert args == (3,)


def test_many_executor_jobs_complete(loop):
    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(200)))

    assert loop.run_until_complete(main()) == [i * i for i in range(200)]


def test_set_default_executor_is_used_for_none(loop):
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mydefault")
    loop.set_default_executor(executor)
    name, _ = loop.run_until_complete(loop.run_in_executor(None, whoami))
    assert name.startswith("mydefault")
    loop.run_until_complete(loop.shutdown_default_executor())


@pytest.mark.parametrize("executor", [object(), None], ids=["object", "none"])
def test_set_default_executor_rejects_non_thread_pools(assert_same_error, executor):
    exc = assert_same_error(lambda lp: lp.set_default_executor(executor))
    assert isinstance(exc, TypeError)


def test_run_in_default_executor_after_shutdown(assert_same_error):
    def action(lp):
        lp.run_until_complete(lp.run_in_executor(None, sum, [1]))
        lp.run_until_complete(lp.shutdown_default_executor())
        lp.run_in_executor(None, sum, [2])

    exc = assert_same_error(action)
    assert isinstance(exc, RuntimeError)


def test_shutdown_default_executor_waits_for_running_jobs(loop):
    done = threading.Event()
    started = threading.Event()

    def job():
        started.set()
        done.wait(5)

    fut = loop.run_in_executor(None, job)
    started.wait(5)
    loop.call_later(0.02, done.set)
    loop.run_until_complete(loop.shutdown_default_executor())
    assert done.is_set()
    loop.run_until_complete(fut)


def test_shutdown_default_executor_without_an_executor(loop):
    assert loop.run_until_complete(loop.shutdown_default_executor()) is None


def test_close_shuts_down_the_default_executor(loop):
    executor = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(executor)
    loop.run_until_complete(loop.run_in_executor(None, sum, [1]))
    loop.close()
    with pytest.raises(RuntimeError):
        executor.submit(sum, [1])


def test_debug_run_in_executor_rejects_coroutine_functions(assert_same_error):
    async def coroutine_function():
        pass

    def action(lp):
        lp.set_debug(True)
        lp.run_in_executor(None, coroutine_function)

    exc = assert_same_error(action)
    assert isinstance(exc, TypeError)


def test_to_thread_passes_args_and_the_context(loop):
    def in_thread(x, *, y):
        return var.get(), x + y, threading.current_thread() is threading.main_thread()

    async def main():
        var.set("copied")
        return await asyncio.to_thread(in_thread, 1, y=2)

    assert loop.run_until_complete(main()) == ("copied", 3, False)
