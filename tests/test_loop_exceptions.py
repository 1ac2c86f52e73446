"""Exceptions from callbacks, the exception handler, and BaseExceptions that must escape."""

import asyncio
import contextvars
import logging
import traceback

import pytest

var = contextvars.ContextVar("var", default="unset")


def failing(arg):
    raise ZeroDivisionError(f"failing({arg})")


def run_once(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def on_stdlib(scenario):
    stdlib_loop = asyncio.new_event_loop()
    try:
        return scenario(stdlib_loop)
    finally:
        stdlib_loop.close()


def test_failing_callback_goes_to_the_exception_handler_and_the_loop_continues(loop):
    contexts = []
    calls = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    handle = loop.call_soon(failing, 1)
    loop.call_soon(calls.append, "after")
    run_once(loop)
    assert calls == ["after"]
    assert len(contexts) == 1
    handler_loop, context = contexts[0]
    assert handler_loop is loop
    assert context["message"].startswith("Exception in callback ")
    assert isinstance(context["exception"], ZeroDivisionError)
    assert str(context["exception"]) == "failing(1)"
    assert context["handle"] is handle


def test_failing_timer_goes_to_the_exception_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    handle = loop.call_later(0, failing, 2)
    loop.call_later(0.005, loop.stop)
    loop.run_forever()
    assert [ctx["handle"] for ctx in contexts] == [handle]
    assert contexts[0]["message"].startswith("Exception in callback ")


def test_exception_handler_context_message_matches_the_stdlib(loop):
    def scenario(lp):
        contexts = []
        lp.set_exception_handler(lambda _, ctx: contexts.append(ctx))
        lp.call_soon(failing, "x")
        run_once(lp)
        return [(ctx["message"], sorted(ctx)) for ctx in contexts]

    assert scenario(loop) == on_stdlib(scenario)


def test_default_handler_logs_the_same_text_as_the_stdlib(loop, caplog):
    def scenario(lp):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            lp.call_soon(failing, 3)
            run_once(lp)
        records = [r for r in caplog.records if r.name == "asyncio"]
        return [
            (r.levelno, r.getMessage(), r.exc_info and (r.exc_info[0], str(r.exc_info[1])))
            for r in records
        ]

    expected = on_stdlib(scenario)
    observed = scenario(loop)
    assert len(observed) == 1
    level, text, exc_info = observed[0]
    assert level == logging.ERROR
    assert text.startswith("Exception in callback ")
    assert exc_info == (ZeroDivisionError, "failing(3)")
    assert observed == expected


def test_call_exception_handler_default_logs_context_like_the_stdlib(loop, caplog):
    def scenario(lp):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            lp.call_exception_handler({"message": "something odd", "zeta": 1, "alpha": "a"})
            lp.call_exception_handler({"detail": None})
        return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "asyncio"]

    observed = scenario(loop)
    assert observed[0] == (logging.ERROR, "something odd\nalpha: 'a'\nzeta: 1")
    assert observed == on_stdlib(scenario)


def test_set_exception_handler_with_a_non_callable(assert_same_error):
    exc = assert_same_error(lambda lp: lp.set_exception_handler("not callable"))
    assert isinstance(exc, TypeError)


def test_get_and_reset_exception_handler(loop):
    def handler(lp, ctx):
        pass

    assert loop.get_exception_handler() is None
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_custom_handler_can_defer_to_the_default_handler(loop, caplog):
    seen = []

    def handler(lp, ctx):
        seen.append(ctx["message"])
        lp.default_exception_handler(ctx)

    loop.set_exception_handler(handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(failing, 4)
        run_once(loop)
    assert len(seen) == 1
    assert [r.getMessage().splitlines()[0] for r in caplog.records] == seen


def test_failing_custom_handler_is_reported_by_the_default_handler(loop, caplog):
    def handler(lp, ctx):
        raise ValueError("handler broke")

    loop.set_exception_handler(handler)
    calls = []
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(failing, 5)
        loop.call_soon(calls.append, "after")
        run_once(loop)
    assert calls == ["after"]
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert records[0].getMessage().startswith("Unhandled error in exception handler")
    assert records[0].exc_info[0] is ValueError
    assert "Exception in callback " in records[0].getMessage()


def test_exception_handler_runs_in_the_same_context_as_the_stdlib(loop):
    # 3.13 runs the custom handler in the failing handle's context; earlier versions do not.
    def scenario(lp):
        seen = []
        lp.set_exception_handler(lambda _, ctx: seen.append(var.get()))
        ctx = contextvars.Context()
        ctx.run(var.set, "handle context")
        lp.call_soon(failing, 6, context=ctx)
        run_once(lp)
        return seen

    assert scenario(loop) == on_stdlib(scenario)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


def raise_system_exit():
    raise SystemExit(3)


@pytest.mark.parametrize(
    "raiser, exc_type",
    [(raise_keyboard_interrupt, KeyboardInterrupt), (raise_system_exit, SystemExit)],
)
def test_base_exception_in_a_callback_escapes_run_forever(loop, raiser, exc_type):
    calls = []
    loop.call_soon(raiser)
    loop.call_soon(calls.append, "rest of the iteration")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    assert calls == []
    # The loop is usable again and the callbacks left in the queue still run.
    run_once(loop)
    assert calls == ["rest of the iteration"]
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_a_coroutine_escapes_run_until_complete(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type()

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


def test_keyboard_interrupt_in_a_timer_escapes_run_until_complete(loop):
    task = loop.create_task(asyncio.sleep(10))
    loop.call_later(0.001, raise_keyboard_interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(task)
    assert not loop.is_running()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


def test_keyboard_interrupt_from_the_exception_handler_escapes(loop):
    def handler(lp, ctx):
        raise KeyboardInterrupt

    loop.set_exception_handler(handler)
    loop.call_soon(failing, 7)
    with pytest.raises(KeyboardInterrupt):
        run_once(loop)
    assert not loop.is_running()


def test_logged_callback_exception_keeps_its_traceback(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(failing, 8)
        run_once(loop)
    (record,) = [r for r in caplog.records if r.name == "asyncio"]
    frames = traceback.extract_tb(record.exc_info[2])
    assert frames[-1].name == "failing"
