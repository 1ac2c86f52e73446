"""Slow-path helpers the Rust core calls: handle reprs and debug-mode checks.

They are shaped after the stdlib's output so logs and reprs read the same on ferroloop.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from asyncio import coroutines, format_helpers
from typing import Any

# 3.13 hides callback arguments outside debug mode; earlier versions always show them.
_FORMAT_TAKES_DEBUG = (
    "debug" in inspect.signature(format_helpers._format_callback_source).parameters
)


class Handle(asyncio.Handle):
    """What ``h.__class__`` says a ferroloop handle is: an ``asyncio.Handle``, so that
    ``isinstance(h, asyncio.Handle)`` holds (never instantiated; see docs/compatibility.md)."""

    __slots__ = ()


class TimerHandle(asyncio.TimerHandle):
    """``h.__class__`` of a ferroloop timer handle: an ``asyncio.TimerHandle``."""

    __slots__ = ()


def callback_source(callback: Any, args: Any, debug: bool) -> str:
    """``func(args) at file:line``, as the stdlib formats a callback."""
    if _FORMAT_TAKES_DEBUG:
        return format_helpers._format_callback_source(callback, args, debug=debug)
    return format_helpers._format_callback_source(callback, args)


def handle_repr(handle: Any) -> str:
    """``<Handle cb() at f.py:1>`` / ``<TimerHandle when=… cb() at f.py:1>``."""
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append("cancelled")
    traceback = handle._source_traceback
    callback = handle._callback
    if callback is not None:
        info.append(callback_source(callback, handle._args, traceback is not None))
    if traceback:
        frame = traceback[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    if hasattr(handle, "_when"):
        info.insert(2 if handle._cancelled else 1, f"when={handle._when}")
    return "<{}>".format(" ".join(info))


def check_callback(callback: Any, method: str) -> None:
    """The stdlib's debug-mode check of a callback passed to ``method``."""
    if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
        raise TypeError(f"coroutines cannot be used with {method}()")
    if not callable(callback):
        raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")


def source_traceback() -> Any:
    """The stack of the code that called into the loop (debug mode's ``_source_traceback``)."""
    return format_helpers.extract_stack(sys._getframe(1))
