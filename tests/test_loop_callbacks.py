"""call_soon, call_soon_threadsafe, handles, iteration boundaries and contextvars."""

import asyncio
import contextvars
import functools
import gc
import socket
import sys
import threading
import time
import weakref

import pytest

var = contextvars.ContextVar("var", default="unset")


def test_call_soon_runs_in_fifo_order_with_args(loop):
    calls = []
    for i in range(100):
        loop.call_soon(calls.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == list(range(100))


def test_call_soon_passes_several_args(loop):
    calls = []
    loop.call_soon(lambda *args: calls.append(args), 1, "two", None)
    loop.call_soon(lambda: calls.append(()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [(1, "two", None), ()]


def schedule(loop, method, callback, *args, **kwargs):
    if method in ("call_soon", "call_soon_threadsafe"):
        return getattr(loop, method)(callback, *args, **kwargs)
    if method == "call_later":
        return loop.call_later(0, callback, *args, **kwargs)
    return loop.call_at(loop.time(), callback, *args, **kwargs)


@pytest.mark.parametrize("nargs", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_callbacks_get_their_arguments_and_handles_show_them(loop, method, nargs):
    # ferroloop keeps up to two arguments without a tuple; `_args` is still the tuple.
    args = tuple(f"arg{i}" for i in range(nargs))
    calls = []
    handle = schedule(loop, method, lambda *got: calls.append(got), *args)
    assert handle._args == args
    cancelled = schedule(loop, method, calls.append, *args)
    cancelled.cancel()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert calls == [args]
    assert handle._args == args
    assert cancelled._args is None


@pytest.mark.parametrize("nargs", [1, 2, 3])
def test_timers_with_equal_deadlines_compare_equal_by_callback_and_arguments(loop, nargs):
    when = loop.time() + 3600
    args = tuple(range(nargs))
    first = loop.call_at(when, print, *args)
    same = loop.call_at(when, print, *args)
    other = loop.call_at(when, print, *args[:-1], "other")
    assert first == same and first <= same and first >= same
    assert first != other
    for timer in (first, same, other):
        timer.cancel()


def test_call_soon_returns_a_cancellable_handle(loop):
    calls = []
    handle = loop.call_soon(calls.append, "cancelled")
    loop.call_soon(calls.append, "kept")
    assert not handle.cancelled()
    handle.cancel()
    assert handle.cancelled()
    handle.cancel()  # a second cancel is harmless
    assert handle.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["kept"]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_handles_are_stdlib_handle_instances(loop, method):
    handle = getattr(loop, method)(print)
    assert isinstance(handle, asyncio.Handle)
    handle.cancel()


def test_handle_cancelled_by_an_earlier_callback_of_the_same_iteration_never_runs(loop):
    calls = []
    second = None

    def first():
        calls.append("first")
        second.cancel()

    loop.call_soon(first)
    second = loop.call_soon(calls.append, "second")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["first"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Handle.get_context() is new in 3.12")
def test_handle_get_context_returns_the_given_context(loop):
    ctx = contextvars.copy_context()
    handle = loop.call_soon(print, context=ctx)
    assert handle.get_context() is ctx
    handle.cancel()
    default = loop.call_soon(print)
    assert isinstance(default.get_context(), contextvars.Context)
    default.cancel()


def test_callbacks_scheduled_during_an_iteration_run_in_the_next_one(loop):
    calls = []

    def first():
        calls.append("first")
        loop.call_soon(calls.append, "scheduled by first")
        loop.stop()

    loop.call_soon(first)
    loop.call_soon(calls.append, "already ready")
    loop.run_forever()
    # stop() ends the loop after the current iteration: only what was ready at its start ran.
    assert calls == ["first", "already ready"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["first", "already ready", "scheduled by first"]


def test_stop_before_run_forever_runs_exactly_one_iteration(loop):
    calls = []

    def first():
        calls.append("first")
        loop.call_soon(calls.append, "next iteration")

    loop.stop()
    loop.call_soon(first)
    loop.run_forever()
    assert calls == ["first"]
    assert not loop.is_running()


def test_stop_called_twice_stops_only_once(loop):
    calls = []
    loop.call_soon(loop.stop)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(calls.append, "second run")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["second run"]


def test_get_running_loop_inside_a_callback_returns_the_loop(loop):
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    loop.call_soon(lambda: seen.append(asyncio.get_event_loop()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen[0] is loop
    assert seen[1] is loop
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_callback_runs_in_a_copy_of_the_context_at_scheduling_time(loop):
    seen = []
    token = var.set("at scheduling")
    try:
        loop.call_soon(lambda: seen.append(var.get()))
    finally:
        var.reset(token)
    token = var.set("after scheduling")
    try:
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        var.reset(token)
    assert seen == ["at scheduling"]


def test_callback_runs_in_the_given_context(loop):
    seen = []
    ctx = contextvars.Context()
    ctx.run(var.set, "in ctx")
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_later(0, lambda: seen.append(var.get()), context=ctx)
    loop.call_at(loop.time(), lambda: seen.append(var.get()), context=ctx)
    loop.call_soon_threadsafe(lambda: seen.append(var.get()), context=ctx)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert seen == ["in ctx"] * 4


class RunsCallbacks:
    """Not a `contextvars.Context`, but has `run`: the stdlib's handles call only that."""

    def __init__(self, runs):
        self.runs = runs

    def run(self, callback, *args):
        self.runs.append(args)
        return callback(*args)


@pytest.mark.parametrize("nargs", [0, 1, 3])
@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_any_object_with_run_may_be_the_context(loop, method, nargs):
    args = tuple(range(nargs))
    runs, calls = [], []
    schedule(loop, method, lambda *got: calls.append(got), *args, context=RunsCallbacks(runs))
    loop.run_until_complete(asyncio.sleep(0.01))
    gc.collect()
    assert runs == [args]
    assert calls == [args]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
@pytest.mark.parametrize("context", ["a str", 12345678901234567890, (1, 2)])
def test_a_context_without_run_fails_like_any_callback(loop, method, context):
    # The error goes to the exception handler; the loop goes on (and does not crash when
    # it lets go of the handle: such objects may not be collector-tracked at all).
    errors, calls = [], []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    handle = schedule(loop, method, calls.append, 1, context=context)
    if sys.version_info >= (3, 12):
        assert handle.get_context() is context
    loop.call_soon(calls.append, 2)
    loop.run_until_complete(asyncio.sleep(0.01))
    del handle
    gc.collect()
    assert calls == [2]
    [error] = errors
    assert error["message"].startswith("Exception in callback ")
    assert isinstance(error["exception"], AttributeError)
    assert "'run'" in str(error["exception"])


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_context_none_spelled_out_means_a_copy_of_the_current_context(loop, method):
    seen = []
    token = var.set("current")
    try:
        schedule(loop, method, lambda: seen.append(var.get()), context=None)
    finally:
        var.reset(token)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert seen == ["current"]


class RunRaises:
    def run(self, callback, *args):
        raise ValueError("run refused")


class RunNotCallable:
    run = 5


ODD_CONTEXTS = [
    None,
    contextvars.Context(),
    "s",
    7,
    2**70,
    1.5,
    b"x",
    (1,),
    [1],
    {},
    RunsCallbacks([]),
    RunRaises(),
    RunNotCallable(),
    object(),
]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
@pytest.mark.parametrize("context", ODD_CONTEXTS, ids=lambda c: type(c).__name__)
def test_any_context_value_behaves_as_on_the_stdlib_loop(method, context):
    import ferroloop

    def observe(new_loop):
        loop = new_loop()
        errors, calls = [], []
        loop.set_exception_handler(lambda lp, ctx: errors.append(type(ctx["exception"])))
        try:
            schedule(loop, method, calls.append, 1, context=context)
            refused = None
        except Exception as exc:  # noqa: BLE001 - the type is what is compared
            refused = type(exc)
        loop.run_until_complete(asyncio.sleep(0.002))
        loop.close()
        gc.collect()
        return refused, errors, calls

    assert observe(ferroloop.new_event_loop) == observe(asyncio.new_event_loop)


def test_a_task_given_a_context_without_run_fails_like_any_callback(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    async def work():
        return 1

    coro = work()
    task = loop.create_task(coro, context="not a context")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not task.done()
    assert [type(error["exception"]) for error in errors] == [AttributeError]
    coro.close()
    del task
    gc.collect()


def test_context_keyword_spelled_by_a_string_made_at_run_time(loop):
    # Keyword names usually come interned from a call site's constants (or from one tuple
    # in asyncio's C module); one built at run time must be recognised all the same.
    seen = []
    for value in ("first", "second"):
        ctx = contextvars.Context()
        ctx.run(var.set, value)
        name = "".join(["con", "text"])
        loop.call_soon(lambda *args: seen.append((var.get(), args)), value, **{name: ctx})
    with pytest.raises(TypeError, match="unexpected keyword argument 'contexts'"):
        loop.call_soon(print, **{"".join(["con", "texts"]): None})
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [("first", ("first",)), ("second", ("second",))]


def test_context_changes_inside_a_callback_do_not_leak(loop):
    seen = []
    ctx = contextvars.Context()

    def setter():
        var.set("inside")
        seen.append(var.get())

    loop.call_soon(setter)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(setter, context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["inside", "unset", "inside", "unset"]
    assert var.get() == "unset"
    # The explicit context keeps what the callback set in it.
    assert ctx[var] == "inside"


def test_call_soon_threadsafe_wakes_a_loop_with_nothing_scheduled(loop):
    def from_thread():
        time.sleep(0.1)
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=from_thread)
    start = time.monotonic()
    thread.start()
    loop.run_forever()
    elapsed = time.monotonic() - start
    thread.join()
    assert 0.09 <= elapsed < 2


def test_call_soon_threadsafe_wakes_a_loop_waiting_for_a_far_timer(loop):
    calls = []
    far = loop.call_later(3600, calls.append, "far")

    def from_thread():
        time.sleep(0.05)
        loop.call_soon_threadsafe(calls.append, "from thread")
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=from_thread)
    start = time.monotonic()
    thread.start()
    loop.run_forever()
    thread.join()
    assert time.monotonic() - start < 2
    assert calls == ["from thread"]
    far.cancel()


def test_call_soon_threadsafe_from_many_threads_delivers_every_callback(loop):
    calls = []
    n_threads, per_thread = 8, 200

    def producer(t):
        for i in range(per_thread):
            loop.call_soon_threadsafe(calls.append, (t, i))

    def start_producers():
        threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=start_producers).start()
    loop.run_forever()
    assert len(calls) == n_threads * per_thread
    for t in range(n_threads):
        # Each thread's callbacks keep their order.
        assert [i for (u, i) in calls if u == t] == list(range(per_thread))


def test_call_soon_threadsafe_returns_a_cancellable_handle(loop):
    calls = []
    handle = loop.call_soon_threadsafe(calls.append, "cancelled")
    handle.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == []


def test_handles_run_the_callback_object_itself(loop):
    calls = []

    class Callable:
        def __call__(self, arg):
            calls.append(arg)

    loop.call_soon(Callable(), "object")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["object"]


def reprs_of_handles(lp):
    """Reprs of plain, timer and cancelled handles, with timer deadlines masked."""

    def target(x):
        pass

    def masked(handle):
        text = repr(handle)
        return text.replace(f"when={handle.when()}", "when=W") if hasattr(handle, "when") else text

    reprs = []
    for debug in (False, True):
        lp.set_debug(debug)
        handles = [
            lp.call_soon(target, 1),
            lp.call_soon(functools.partial(target, 2)),
            lp.call_soon(print, "builtin"),
            lp.call_later(10, target, 3),
        ]
        reprs += [masked(h) for h in handles]
        for handle in handles:
            handle.cancel()
        reprs += [masked(h) for h in handles]
    lp.set_debug(False)
    return reprs


def test_handle_reprs_match_the_stdlib(loop):
    stdlib_loop = asyncio.new_event_loop()
    try:
        expected = reprs_of_handles(stdlib_loop)
    finally:
        stdlib_loop.close()
    assert reprs_of_handles(loop) == expected


def test_cancel_after_the_callback_ran_marks_the_handle_cancelled(loop):
    calls = []
    handle = loop.call_soon(calls.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1]
    handle.cancel()
    assert handle.cancelled()


def test_call_soon_rejects_keyword_arguments_like_the_stdlib(loop, stdlib_error):
    expected = stdlib_error(lambda lp: lp.call_soon(print, end=""))
    assert isinstance(expected, TypeError)
    with pytest.raises(TypeError):
        loop.call_soon(print, end="")


class Payload:
    pass


def test_loop_releases_callback_args_after_running(loop):
    payload = Payload()
    ref = weakref.ref(payload)
    loop.call_soon(lambda p: None, payload)
    loop.call_soon(loop.stop)
    del payload
    loop.run_forever()
    gc.collect()
    assert ref() is None


def test_cancelled_timer_releases_its_callback_and_args_at_once(loop):
    # The stdlib drops a cancelled handle's callback and args at cancel(), even though
    # the handle itself stays in the timer heap until its deadline.
    payload = Payload()
    ref = weakref.ref(payload)
    handle = loop.call_later(3600, lambda p: None, payload)
    del payload
    handle.cancel()
    gc.collect()
    assert ref() is None


class HoldsItsHandles:
    def tick(self, *args):
        pass


@pytest.mark.parametrize("context_holds_it", [False, True])
def test_object_and_the_handles_it_holds_are_collected_as_a_cycle(loop, context_holds_it):
    # `self._timer = loop.call_later(t, self.tick)` makes a cycle through the handle; so
    # does a context variable whose value holds the handle.
    holder = HoldsItsHandles()
    ref = weakref.ref(holder)
    var = contextvars.ContextVar("holder")
    context = contextvars.copy_context()
    if context_holds_it:
        context.run(var.set, holder)
    holder.soon = loop.call_soon(holder.tick, holder, context=context)
    holder.later = loop.call_later(0, holder.tick, context=context)
    holder.cancelled = loop.call_later(3600, holder.tick)
    holder.cancelled.cancel()
    loop.run_until_complete(asyncio.sleep(0.01))
    del holder, context
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("nargs", [1, 2, 3])
@pytest.mark.parametrize("method", ["call_soon", "call_later"])
def test_a_cycle_through_any_argument_of_a_handle_is_collected(loop, method, nargs):
    holder = HoldsItsHandles()
    ref = weakref.ref(holder)
    args = (*range(nargs - 1), holder)
    if method == "call_soon":
        holder.handle = loop.call_soon(HoldsItsHandles.tick, *args)
    else:
        holder.handle = loop.call_later(0, HoldsItsHandles.tick, *args)
    loop.run_until_complete(asyncio.sleep(0.01))
    del holder, args
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("method", ["call_soon", "call_later", "cancelled timer"])
@pytest.mark.parametrize("handle_kept", [False, True])
def test_cycle_through_the_context_copied_for_a_handle_is_collected(loop, method, handle_kept):
    # A value set in the handle's own context copy that holds the context (or the handle).
    holder = HoldsItsHandles()
    ref = weakref.ref(holder)
    var = contextvars.ContextVar("holder")
    if method == "call_soon":
        handle = loop.call_soon(holder.tick)
    else:
        handle = loop.call_later(0 if method == "call_later" else 3600, holder.tick)
        if method == "cancelled timer":
            handle.cancel()
    handle._context.run(var.set, holder)
    holder.context = handle._context
    if handle_kept:
        holder.handle = handle
    del handle
    loop.run_until_complete(asyncio.sleep(0.01))
    del holder
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_soon_threadsafe"])
@pytest.mark.parametrize("handle_kept", [False, True])
def test_a_handles_context_taken_while_queued_stays_in_the_collectors_view(
    loop, method, handle_kept
):
    # ferroloop hides a queued handle's own context copy from the collector; whoever takes
    # the context out must get an ordinary, tracked object back once the handle is done.
    seen = []
    delay = (0,) if method == "call_later" else ()
    handle = getattr(loop, method)(*delay, lambda: seen.append(var.get()))
    context = handle._context  # get_context() is new in 3.12
    context.run(var.set, "set in the handle's context")
    if not handle_kept:
        del handle
    loop.run_until_complete(asyncio.sleep(0.01))
    assert seen == ["set in the handle's context"]
    assert gc.is_tracked(context)
    assert context.run(var.get) == "set in the handle's context"
    # The context still collects cycles through it.
    ref = weakref.ref(holder := HoldsItsHandles())
    context.run(var.set, holder)
    holder.context = context
    del context, holder
    if handle_kept:
        del handle
    gc.collect()
    assert ref() is None


def test_collections_while_handles_wait_and_run_keep_their_contexts_intact(loop):
    # Garbage collections from inside callbacks, while thousands of handles (and their
    # contexts) wait in the ready queue and the timer heap, break nothing.
    order = []

    def step(i):
        order.append((i, var.get()))
        if i % 500 == 0:
            gc.collect()

    for i in range(2000):
        context = contextvars.copy_context()
        context.run(var.set, f"v{i}")
        if i % 2:
            loop.call_soon(step, i, context=context)
        else:
            loop.call_later(0, step, i, context=context)
        del context
    for i in range(2000, 3000):
        var_token = var.set(f"v{i}")
        loop.call_soon(step, i)  # runs in a copy of the current context
        var.reset(var_token)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert sorted(order) == sorted((i, f"v{i}") for i in range(3000))
    gc.collect()


@pytest.mark.parametrize("scheduled", ["call_soon", "call_later", "cancelled timer"])
def test_a_loop_closed_with_handles_still_queued_frees_them_and_their_contexts(
    loop_factory, scheduled
):
    lp = loop_factory()
    refs = []
    for _ in range(100):
        payload = Payload()
        refs.append(weakref.ref(payload))
        if scheduled == "call_soon":
            handle = lp.call_soon(lambda p: None, payload)
        else:
            handle = lp.call_later(3600, lambda p: None, payload)
        handle._context.run(var.set, payload)
        if scheduled == "cancelled timer":
            handle.cancel()
        del handle, payload
    gc.collect()
    lp.close()
    del lp
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []


def run_a_burst_of_handles(loop, n=3000):
    """Makes and frees many handles and timers (ferroloop keeps freed ones for reuse)."""
    for _ in range(n):
        loop.call_soon(int)
    for _ in range(n // 10):
        loop.call_later(0, int)
    loop.run_until_complete(asyncio.sleep(0.01))


def test_weak_references_to_finished_handles_stay_dead_while_new_ones_are_made(loop):
    refs = [weakref.ref(loop.call_soon(int)) for _ in range(100)]
    refs += [weakref.ref(loop.call_later(0, int)) for _ in range(100)]
    loop.run_until_complete(asyncio.sleep(0.01))
    assert all(ref() is None for ref in refs)
    fresh = [loop.call_soon(int) for _ in range(300)]
    fresh += [loop.call_later(0, int) for _ in range(300)]
    assert all(ref() is None for ref in refs)
    assert all(not handle.cancelled() for handle in fresh)
    assert all(weakref.ref(handle)() is handle for handle in fresh)
    loop.run_until_complete(asyncio.sleep(0.01))


@pytest.mark.parametrize("method", ["call_soon", "call_later"])
def test_handles_made_after_a_burst_still_collect_the_cycles_they_are_in(loop, method):
    run_a_burst_of_handles(loop)
    holder = HoldsItsHandles()
    ref = weakref.ref(holder)
    delay = (0,) if method == "call_later" else ()
    holder.handle = getattr(loop, method)(*delay, holder.tick)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert gc.is_tracked(holder.handle)
    del holder
    gc.collect()
    assert ref() is None


def test_a_reader_made_after_a_burst_is_in_the_collectors_view(loop):
    run_a_burst_of_handles(loop)
    rsock, wsock = socket.socketpair()
    try:
        got = []

        def on_readable():
            got.append(rsock.recv(10))

        def handles_referring_to_the_callback():
            # Only objects in the collector's view are referrers.
            referrers = gc.get_referrers(on_readable)
            return [type(obj).__name__ for obj in referrers if hasattr(obj, "cancel")]

        # The loop holds the reader's handle; the collector must see it (and what it holds)
        # from the start, and after it ran.
        loop.add_reader(rsock, on_readable)
        assert handles_referring_to_the_callback() == ["Handle"]
        wsock.send(b"ping")
        loop.run_until_complete(asyncio.sleep(0.05))
        assert got == [b"ping"]
        assert handles_referring_to_the_callback() == ["Handle"]
        assert loop.remove_reader(rsock)
    finally:
        rsock.close()
        wsock.close()


def test_closed_loop_can_be_garbage_collected(loop_factory):
    lp = loop_factory()
    lp.call_soon(lp.stop)
    lp.run_forever()
    lp.run_until_complete(asyncio.sleep(0))
    lp.close()
    ref = weakref.ref(lp)
    del lp
    gc.collect()
    assert ref() is None


def test_unclosed_loop_warns_when_collected(loop_factory):
    lp = loop_factory()
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del lp
        gc.collect()


def test_loops_are_weakly_referenceable_and_hashable(loop):
    per_loop = weakref.WeakKeyDictionary()
    per_loop[loop] = "state"
    assert per_loop[loop] == "state"
    assert weakref.ref(loop)() is loop


# ferroloop keeps the plain handles it finished with and refills them for later callbacks;
# nothing a program can still reach may be refilled.


def test_a_handle_the_program_keeps_is_never_refilled(loop):
    def first(*args):
        pass

    kept = [loop.call_soon(first, i) for i in range(50)]
    cancelled = loop.call_soon(first, "cancelled")
    cancelled.cancel()
    reprs = [repr(handle) for handle in kept]
    cancelled_repr = repr(cancelled)
    loop.run_until_complete(asyncio.sleep(0.01))
    run_a_burst_of_handles(loop)
    fresh = [loop.call_soon(int) for _ in range(300)]
    assert not {id(handle) for handle in fresh} & {id(handle) for handle in kept + [cancelled]}
    assert [repr(handle) for handle in kept] == reprs
    assert [handle._args for handle in kept] == [(i,) for i in range(50)]
    assert all(handle._callback is first and not handle.cancelled() for handle in kept)
    assert repr(cancelled) == cancelled_repr and cancelled.cancelled()
    loop.run_until_complete(asyncio.sleep(0.01))


def test_a_handle_the_exception_handler_kept_is_never_refilled(loop):
    reported = []
    loop.set_exception_handler(lambda lp, context: reported.append(context["handle"]))

    def fails():
        raise ValueError("boom")

    loop.call_soon(fails)
    loop.run_until_complete(asyncio.sleep(0.01))
    run_a_burst_of_handles(loop)
    [handle] = reported
    assert handle._callback is fails
    assert "fails" in repr(handle)


def test_a_handle_only_weakly_referenced_dies_instead_of_being_refilled(loop):
    ref = weakref.ref(loop.call_soon(int))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert ref() is None
    run_a_burst_of_handles(loop)
    assert ref() is None


class SchedulesWhenFreed:
    """An argument whose finaliser schedules another callback (run while the loop lets go
    of the handle that held it)."""

    def __init__(self, loop, log, depth, method="call_soon"):
        self.loop, self.log, self.depth, self.method = loop, log, depth, method

    def __del__(self):
        self.log.append(self.depth)
        if self.depth:
            nested = SchedulesWhenFreed(self.loop, self.log, self.depth - 1, self.method)
            schedule(self.loop, self.method, lambda arg: None, nested)


@pytest.mark.parametrize("method", ["call_soon", "call_later"])
@pytest.mark.parametrize("cancelled", [False, True])
def test_an_argument_freed_with_its_handle_can_schedule_callbacks(loop, method, cancelled):
    # The loop lets go of a handle or timer (and so of its arguments) while it keeps or
    # refills spare ones; a finaliser scheduling more must find the loop's state usable.
    log = []
    run_a_burst_of_handles(loop)
    for _ in range(10):
        handle = schedule(loop, method, lambda arg: None, SchedulesWhenFreed(loop, log, 5, method))
        if cancelled:
            handle.cancel()
        del handle
    loop.run_until_complete(asyncio.sleep(0.05))
    assert sorted(log) == sorted(list(range(6)) * 10)


@pytest.mark.parametrize("method", ["call_soon", "call_later"])
def test_handles_made_one_after_another_each_run_in_their_own_context(loop, method):
    # Handles and timers made after a burst are refilled spares (on ferroloop).
    run_a_burst_of_handles(loop)
    seen = []

    def set_and_read(value):
        seen.append(var.get())
        var.set(value)

    for round_ in range(3):
        for i in range(5):
            schedule(loop, method, set_and_read, f"{round_}.{i}")
        loop.run_until_complete(asyncio.sleep(0.001))
    given = contextvars.copy_context()
    given.run(var.set, "given")
    schedule(loop, method, set_and_read, "changed", context=given)
    schedule(loop, method, set_and_read, "after")
    loop.run_until_complete(asyncio.sleep(0.001))
    assert seen == ["unset"] * 15 + ["given", "unset"]
    assert given.run(var.get) == "changed"
    assert var.get() == "unset"


def test_a_handle_made_after_cancelled_ones_were_freed_is_not_cancelled(loop):
    ran = []
    # The stop callback is queued before the cancelled handles are freed, so
    # a pool that forgot to reset the flag fails the assertion below rather
    # than swallowing the loop's own callbacks and hanging.
    loop.call_soon(loop.stop)
    for i in range(100):
        loop.call_soon(ran.append, ("cancelled", i)).cancel()
    loop.run_forever()
    fresh = [loop.call_soon(ran.append, i) for i in range(100)]
    assert not any(handle.cancelled() for handle in fresh)
    assert all("cancelled" not in repr(handle) for handle in fresh)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert ran == list(range(100))
