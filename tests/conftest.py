"""Fixtures shared by the behaviour tests: every test runs once on ferroloop, once on asyncio.

A test that fails on the stdlib loop is a wrong test; one that fails only on ferroloop is a
ferroloop bug.
"""

import asyncio

import pytest


@pytest.fixture(params=["ferroloop", "asyncio"])
def loop_factory(request):
    """The new_event_loop function of the loop under test."""
    if request.param == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop
    return asyncio.new_event_loop


@pytest.fixture
def loop(loop_factory):
    """A new loop of the kind under test, set as the current loop and closed afterwards."""
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture
def stdlib_error():
    """Return a function running ``action(stdlib_loop)`` and returning what it raised.

    Lets a test check that ferroloop raises the same exception type and message as the
    stdlib loop of the running Python version, whose messages vary between versions.
    """

    def run(action):
        stdlib_loop = asyncio.new_event_loop()
        try:
            action(stdlib_loop)
        except BaseException as exc:  # noqa: BLE001 - any outcome is the expectation
            return exc
        finally:
            stdlib_loop.close()
        raise AssertionError(f"the stdlib loop raised nothing for {action}")

    return run


@pytest.fixture
def assert_same_error(loop, stdlib_error):
    """Return a function checking ``action(loop)`` raises exactly what the stdlib loop raises."""

    def check(action):
        expected = stdlib_error(action)
        with pytest.raises(type(expected)) as info:
            action(loop)
        assert type(info.value) is type(expected)
        assert str(info.value) == str(expected)
        return info.value

    return check
