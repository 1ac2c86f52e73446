"""The loop's exception handler: ``set_exception_handler`` and friends.

Output matches the stdlib's, line for line, so logs and tests that read them don't notice
the loop changed.
"""

from __future__ import annotations

import sys
import traceback
from asyncio import base_events, tasks
from collections.abc import Callable
from typing import Any

from . import _format

# Logging goes through `asyncio.base_events.logger`, looked up at each call, as the stdlib
# loop's code does: tests and tools that patch that name see ferroloop's messages too.

# 3.12 started running a custom handler in the context of the failing task/handle.
_HANDLER_RUNS_IN_CONTEXT = sys.version_info >= (3, 12)


class ExceptionHandlerMixin:
    _exception_handler: Callable[..., Any] | None = None
    # The stdlib's default handler reads it in debug mode; ferroloop's core runs callbacks
    # without recording it, so it stays None.
    _current_handle: Any = None

    def get_exception_handler(self) -> Callable[..., Any] | None:
        """Return the current exception handler, or None for the default one."""
        return self._exception_handler

    def set_exception_handler(self, handler: Callable[..., Any] | None) -> None:
        """Set ``handler(loop, context)`` as the exception handler (None: the default)."""
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Log ``context`` to the ``asyncio`` logger, as the stdlib loop does."""
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = (
            (type(exception), exception, exception.__traceback__)
            if exception is not None
            else False
        )
        current = self._current_handle
        if "source_traceback" not in context and current is not None and current._source_traceback:
            context["handle_traceback"] = current._source_traceback
        lines = [message]
        for key in sorted(context):
            if key in {"message", "exception"}:
                continue
            value = context[key]
            if key == "source_traceback":
                stack = "".join(traceback.format_list(value)).rstrip()
                value = "Object created at (most recent call last):\n" + stack
            elif key == "handle_traceback":
                stack = "".join(traceback.format_list(value)).rstrip()
                value = "Handle created at (most recent call last):\n" + stack
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        base_events.logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Pass ``context`` to the exception handler; errors in it are logged, not raised."""
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                base_events.logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            self._run_custom_handler(context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                base_events.logger.error(
                    "Exception in default exception handler while handling an "
                    "unexpected error in custom exception handler",
                    exc_info=True,
                )

    def _run_custom_handler(self, context: dict[str, Any]) -> None:
        handler = self._exception_handler
        assert handler is not None
        if _HANDLER_RUNS_IN_CONTEXT:
            thing = context.get("task") or context.get("future") or context.get("handle")
            run = getattr(getattr(thing, "get_context", lambda: None)(), "run", None)
            if run is not None:
                run(handler, self, context)
                return
        handler(self, context)

    # Called by the Rust core.

    def _report_callback_error(self, handle: Any, exc: BaseException) -> None:
        source = _format.callback_source(handle._callback, handle._args, self.get_debug())
        context = {"message": f"Exception in callback {source}", "exception": exc, "handle": handle}
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    def _warn_slow_callback(self, handle: Any, seconds: float) -> None:
        callback = handle._callback
        owner = getattr(callback, "__self__", None)
        described = repr(owner) if isinstance(owner, tasks.Task) else str(handle)
        base_events.logger.warning("Executing %s took %.3f seconds", described, seconds)
