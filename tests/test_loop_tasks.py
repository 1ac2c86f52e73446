"""Futures and tasks on the loop: create_future/create_task, task factories, asyncio APIs."""

import asyncio
import contextvars
import gc
import sys
import weakref
from unittest import mock

import pytest

var = contextvars.ContextVar("var", default="unset")


def test_create_future_returns_a_future_bound_to_the_loop(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, 1)
    assert loop.run_until_complete(fut) == 1


def test_futures_and_tasks_belong_to_their_loop_whichever_loop_runs(loop, loop_factory):
    async def nothing():
        return None

    def made():
        fut = loop.create_future()
        task = loop.create_task(nothing())
        return fut, task

    async def inside():
        return made()

    # Made while the loop itself runs, while another loop runs, and while no loop runs
    # but another is the current loop.
    pairs = [loop.run_until_complete(inside())]
    other = loop_factory()
    try:
        pairs.append(other.run_until_complete(inside()))
        asyncio.set_event_loop(other)
        pairs.append(made())
    finally:
        asyncio.set_event_loop(loop)
        other.close()
    for fut, task in pairs:
        assert fut.get_loop() is loop
        assert task.get_loop() is loop
        fut.cancel()
    loop.run_until_complete(asyncio.gather(*(task for _, task in pairs)))


def test_create_task_returns_a_real_task_with_name(loop):
    async def work():
        return asyncio.current_task().get_name()

    task = loop.create_task(work(), name="worker")
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert task.get_name() == "worker"
    assert loop.run_until_complete(task) == "worker"


@pytest.mark.parametrize("name", [None, "named"])
@pytest.mark.parametrize("given_context", [False, True])
def test_create_task_with_any_of_its_keywords(loop, name, given_context):
    async def work():
        return asyncio.current_task().get_name(), var.get()

    ctx = contextvars.Context()
    ctx.run(var.set, "given")
    kwargs = {"context": ctx} if given_context else {}
    if name is not None:
        kwargs["name"] = name
    task = loop.create_task(work(), **kwargs)
    assert task.get_loop() is loop
    got_name, seen = loop.run_until_complete(task)
    assert got_name == name if name else got_name.startswith("Task-")
    assert seen == ("given" if given_context else "unset")


def test_create_task_with_its_defaults_spelled_out(loop):
    async def work():
        return asyncio.current_task().get_name(), var.get()

    token = var.set("current")
    try:
        task = loop.create_task(work(), name=None, context=None)
    finally:
        var.reset(token)
    name, seen = loop.run_until_complete(task)
    assert name.startswith("Task-")
    assert seen == "current"


def test_create_task_runs_in_the_given_context(loop):
    async def work():
        seen = var.get()
        var.set("set by the task")
        return seen

    ctx = contextvars.Context()
    ctx.run(var.set, "given")
    task = loop.create_task(work(), context=ctx)
    assert loop.run_until_complete(task) == "given"
    assert ctx[var] == "set by the task"
    assert var.get() == "unset"


def test_create_task_copies_the_current_context(loop):
    async def work():
        seen = var.get()
        var.set("changed in task")
        return seen

    token = var.set("outer")
    try:
        assert loop.run_until_complete(loop.create_task(work())) == "outer"
        assert var.get() == "outer"
    finally:
        var.reset(token)


def test_task_factory_is_called_for_create_task(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def work():
        return "made"

    task = loop.create_task(work(), name="named")
    assert loop.run_until_complete(task) == "made"
    assert task.get_name() == "named"
    assert len(calls) == 1
    assert calls[0][0] is loop
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_set_task_factory_with_a_non_callable(assert_same_error):
    exc = assert_same_error(lambda lp: lp.set_task_factory(42))
    assert isinstance(exc, TypeError)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in 3.12")
def test_eager_task_factory_runs_the_task_synchronously(loop):
    steps = []

    async def child():
        steps.append("child started")
        await asyncio.sleep(0)
        steps.append("child resumed")
        return "child"

    async def main():
        task = asyncio.create_task(child())
        steps.append("after create_task")
        return await task

    loop.set_task_factory(asyncio.eager_task_factory)
    assert loop.run_until_complete(main()) == "child"
    assert steps == ["child started", "after create_task", "child resumed"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in 3.12")
def test_eager_task_that_finishes_without_suspending(loop):
    async def quick():
        return asyncio.current_task() is not None

    async def main():
        task = asyncio.create_task(quick())
        assert task.done()
        return task.result()

    loop.set_task_factory(asyncio.eager_task_factory)
    assert loop.run_until_complete(main()) is True


def test_current_task_and_all_tasks(loop):
    async def sleeper():
        await asyncio.sleep(10)

    async def main():
        me = asyncio.current_task()
        others = [asyncio.create_task(sleeper()) for _ in range(3)]
        await asyncio.sleep(0)
        tasks = asyncio.all_tasks()
        assert asyncio.all_tasks(loop) == tasks
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        return me, tasks, set(others)

    me, tasks, others = loop.run_until_complete(main())
    assert isinstance(me, asyncio.Task)
    assert tasks == others | {me}
    assert asyncio.current_task(loop) is None
    assert asyncio.all_tasks(loop) == set()


def test_tasks_alternate_at_each_sleep_zero(loop):
    steps = []

    async def worker(name):
        for i in range(3):
            steps.append(f"{name}{i}")
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(worker("a"), worker("b"))

    loop.run_until_complete(main())
    assert steps == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_gather_collects_results_and_exceptions(loop):
    async def value(x, delay):
        await asyncio.sleep(delay)
        return x

    async def fail():
        raise KeyError("k")

    async def main():
        ok = await asyncio.gather(value(1, 0.002), value(2, 0), value(3, 0.001))
        mixed = await asyncio.gather(value(4, 0), fail(), return_exceptions=True)
        return ok, mixed

    ok, mixed = loop.run_until_complete(main())
    assert ok == [1, 2, 3]
    assert mixed[0] == 4
    assert isinstance(mixed[1], KeyError)


def test_wait_for_times_out_and_cancels(loop):
    cancelled = []

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow(), 0.01)
        return await asyncio.wait_for(asyncio.sleep(0, "in time"), 1)

    assert loop.run_until_complete(main()) == "in time"
    assert cancelled == [True]


def test_timeout_context_manager(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        async with asyncio.timeout(1) as cm:
            await asyncio.sleep(0)
        return cm.expired()

    assert loop.run_until_complete(main()) is False


def test_task_group_runs_children_and_propagates_errors(loop):
    async def child(x):
        await asyncio.sleep(0.001 * x)
        return x

    async def bad():
        await asyncio.sleep(0)
        raise ValueError("bad child")

    async def main():
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(child(x)) for x in range(5)]
        results = [t.result() for t in tasks]
        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.TaskGroup() as group:
                group.create_task(bad())
                sibling = group.create_task(asyncio.sleep(10))
        assert sibling.cancelled()
        return results, info.value.exceptions

    results, errors = loop.run_until_complete(main())
    assert results == [0, 1, 2, 3, 4]
    assert [type(e) for e in errors] == [ValueError]


def test_cancelling_a_task_delivers_cancelled_error_with_message(loop):
    seen = []

    async def victim():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError as exc:
            seen.append(exc.args)
            raise

    async def main():
        task = asyncio.create_task(victim())
        await asyncio.sleep(0)
        task.cancel("stop now")
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert loop.run_until_complete(main()) is True
    assert seen == [("stop now",)]


def test_cancelling_the_main_task_from_a_callback(loop):
    async def main():
        await asyncio.sleep(10)

    task = loop.create_task(main())
    loop.call_later(0.001, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


def test_future_done_callbacks_run_through_the_loop(loop):
    calls = []
    fut = loop.create_future()
    fut.add_done_callback(lambda f: calls.append(("first", f.result())))
    fut.add_done_callback(lambda f: calls.append(("second", f.result())))
    fut.set_result("r")
    assert calls == []  # scheduled with call_soon, not run inline
    loop.run_until_complete(fut)
    loop.run_until_complete(asyncio.sleep(0))
    assert calls == [("first", "r"), ("second", "r")]


def test_queue_event_and_lock_work_across_tasks(loop):
    async def main():
        queue = asyncio.Queue()
        event = asyncio.Event()
        lock = asyncio.Lock()
        received = []

        async def consumer():
            while (item := await queue.get()) is not None:
                async with lock:
                    received.append(item)
            event.set()

        task = asyncio.create_task(consumer())
        for i in range(10):
            await queue.put(i)
        await queue.put(None)
        await asyncio.wait_for(event.wait(), 1)
        await task
        return received

    assert loop.run_until_complete(main()) == list(range(10))


def test_unretrieved_task_exception_is_reported_to_the_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def fail():
        raise RuntimeError("never retrieved")

    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.sleep(0.001))
    assert task.done()
    del task
    gc.collect()
    assert [ctx["message"] for ctx in contexts] == ["Task exception was never retrieved"]
    assert isinstance(contexts[0]["exception"], RuntimeError)


# Task steps and done callbacks go through the loop's `call_soon` attribute (ferroloop keeps
# it bound while running on 3.11): overrides, instance attributes and patches still apply.


async def steps(count):
    for _ in range(count):
        await asyncio.sleep(0)


def test_task_steps_go_through_a_subclass_call_soon(loop_factory):
    class Counting(type(loop_factory())):
        calls = 0

        def call_soon(self, *args, **kwargs):
            Counting.calls += 1
            return super().call_soon(*args, **kwargs)

    loop = Counting()
    try:
        loop.run_until_complete(steps(5))
    finally:
        loop.close()
    assert Counting.calls >= 5
    assert "call_soon" not in vars(loop)


def test_task_steps_go_through_call_soon_set_on_the_loop_while_running(loop):
    calls = []
    original = loop.call_soon

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    async def main():
        loop.call_soon = counting
        await steps(5)

    loop.run_until_complete(main())
    assert len(calls) >= 5
    assert loop.call_soon is counting  # what the user set stays after the run
    before = len(calls)
    loop.run_until_complete(steps(3))  # and is used by the next run
    assert len(calls) >= before + 3
    assert loop.call_soon is counting
    del loop.call_soon
    assert "call_soon" not in vars(loop)
    loop.run_until_complete(steps(2))
    assert "call_soon" not in vars(loop)


def test_task_steps_go_through_call_soon_patched_while_running(loop):
    async def main():
        with mock.patch.object(loop, "call_soon", wraps=loop.call_soon) as patched:
            await steps(5)
        await steps(2)  # and on, unpatched
        return patched.call_count

    assert loop.run_until_complete(main()) >= 5
    assert "call_soon" not in vars(loop)


def test_a_run_loop_is_freed_by_reference_counting_alone(loop_factory):
    loop = loop_factory()
    loop.run_until_complete(steps(3))
    loop.close()
    freed = weakref.ref(loop)
    gc.disable()
    try:
        del loop
        assert freed() is None
    finally:
        gc.enable()
