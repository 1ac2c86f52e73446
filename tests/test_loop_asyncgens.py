"""Async generator hooks and shutdown_asyncgens()."""

import asyncio
import gc
import sys

import pytest


def make_agen(log, name="agen"):
    async def agen():
        try:
            for i in range(10):
                yield i
                await asyncio.sleep(0)
        finally:
            log.append(f"{name} finalized")

    return agen()


def test_shutdown_asyncgens_finalizes_unexhausted_generators(loop):
    log = []
    gens = [make_agen(log, "one"), make_agen(log, "two")]

    async def start():
        for gen in gens:
            assert await gen.__anext__() == 0

    loop.run_until_complete(start())
    assert log == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert sorted(log) == ["one finalized", "two finalized"]


def test_garbage_collected_generator_is_finalized_by_the_loop(loop):
    log = []

    async def main():
        gen = make_agen(log)
        await gen.__anext__()
        del gen
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert log == ["agen finalized"]


def test_asyncgen_hooks_are_installed_while_running_and_restored(loop):
    def firstiter(agen):
        pass

    def finalizer(agen):
        pass

    async def read_hooks():
        return sys.get_asyncgen_hooks()

    saved = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)
    try:
        inside = loop.run_until_complete(read_hooks())
        after = sys.get_asyncgen_hooks()
    finally:
        sys.set_asyncgen_hooks(*saved)
    assert callable(inside.firstiter)
    assert callable(inside.finalizer)
    assert inside.firstiter is not firstiter
    assert inside.finalizer is not finalizer
    assert after.firstiter is firstiter
    assert after.finalizer is finalizer


def test_asyncgen_hooks_are_restored_when_run_forever_raises(loop):
    saved = sys.get_asyncgen_hooks()

    def fail():
        raise KeyboardInterrupt

    loop.call_soon(fail)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert sys.get_asyncgen_hooks() == saved


def test_generator_started_after_shutdown_asyncgens_warns(loop):
    log = []
    loop.run_until_complete(loop.shutdown_asyncgens())
    gen = make_agen(log)

    async def start():
        return await gen.__anext__()

    with pytest.warns(ResourceWarning, match="shutdown_asyncgens"):
        loop.run_until_complete(start())
    loop.run_until_complete(gen.aclose())


def test_failing_generator_close_is_reported_like_the_stdlib(loop):
    def scenario(lp):
        """Return (message with the generator's repr masked, exception type) per report."""
        contexts = []
        lp.set_exception_handler(lambda _, ctx: contexts.append(ctx))

        async def agen():
            try:
                yield 1
            finally:
                raise ValueError("close failed")

        gen = agen()

        async def start():
            await gen.__anext__()

        lp.run_until_complete(start())
        lp.run_until_complete(lp.shutdown_asyncgens())
        assert all(ctx["asyncgen"] is gen for ctx in contexts)
        return [
            (ctx["message"].replace(repr(gen), "<gen>"), type(ctx["exception"])) for ctx in contexts
        ]

    stdlib_loop = asyncio.new_event_loop()
    try:
        expected = scenario(stdlib_loop)
    finally:
        stdlib_loop.close()
    observed = scenario(loop)
    assert observed == expected
    assert len(observed) == 1
    assert "<gen>" in observed[0][0]
    assert observed[0][1] is ValueError
