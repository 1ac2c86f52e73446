"""ferroloop: a drop-in replacement for the asyncio event loop, with a Rust core.

Use it with one line and change nothing else::

    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # Python 3.12+
    ferroloop.run(main())                                         # any supported Python
    ferroloop.install(); asyncio.run(main())                      # via the event loop policy
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._loop import Loop

__all__ = ["Loop", "EventLoopPolicy", "new_event_loop", "install", "run"]
__version__ = "0.1.0"

_T = TypeVar("_T")


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose loops are ferroloop loops.

    ``asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())`` makes ``asyncio.run``,
    ``asyncio.new_event_loop`` and ``asyncio.get_event_loop`` use ferroloop. It is the
    platform's default policy otherwise (so ``get_child_watcher``/``set_child_watcher``
    keep working for code that calls them; ferroloop itself watches children by pidfd).
    """

    _loop_factory = Loop


def install() -> None:
    """Make ferroloop the event loop of every later ``asyncio.run`` / ``new_event_loop``."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run a coroutine on a new ferroloop loop, like ``asyncio.run``, and close the loop."""
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
