"""ferroloop-only: the ways a program switches to ferroloop all give it a ferroloop loop."""

import asyncio
import sys

import pytest


@pytest.fixture
def ferroloop():
    import ferroloop

    return ferroloop


async def running_loop_type(result="result"):
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()), result


@pytest.fixture
def saved_policy():
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is new in 3.12")
def test_ferroloop_as_run_loop_factory(ferroloop):
    loop_type, result = asyncio.run(running_loop_type(), loop_factory=ferroloop.new_event_loop)
    assert issubclass(loop_type, ferroloop.Loop)
    assert result == "result"


def test_ferroloop_run_uses_ferroloop_and_closes_the_loop(ferroloop):
    loops = []

    async def main():
        loops.append(asyncio.get_running_loop())
        return await running_loop_type("ran")

    loop_type, result = ferroloop.run(main())
    assert issubclass(loop_type, ferroloop.Loop)
    assert result == "ran"
    assert loops[0].is_closed()


def test_ferroloop_run_debug_flag(ferroloop):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert ferroloop.run(main(), debug=True) is True
    assert ferroloop.run(main(), debug=False) is False


def test_ferroloop_run_propagates_exceptions(ferroloop):
    async def main():
        raise ArithmeticError("from main")

    with pytest.raises(ArithmeticError, match="from main"):
        ferroloop.run(main())


def test_ferroloop_install_makes_run_use_ferroloop(ferroloop, saved_policy):
    ferroloop.install()
    assert isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)
    loop_type, _ = asyncio.run(running_loop_type())
    assert issubclass(loop_type, ferroloop.Loop)
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
    finally:
        loop.close()


def test_ferroloop_policy_new_event_loop_returns_a_ferroloop_loop(ferroloop):
    loop = ferroloop.EventLoopPolicy().new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()


def test_ferroloop_loop_can_be_subclassed(ferroloop):
    class MyLoop(ferroloop.Loop):
        def custom(self):
            return "custom"

    loop = MyLoop()
    try:
        assert loop.custom() == "custom"
        assert loop.run_until_complete(running_loop_type()) == (MyLoop, "result")
    finally:
        loop.close()
