"""What every ferroloop transport class shares: it wraps a Rust core (``self._core``), which
owns the protocol, and reports errors the way the stdlib's transports do."""

from __future__ import annotations

import warnings
from asyncio.log import logger
from typing import Any


class CoreTransport:
    """Mixin for a transport whose state lives in ``self._core``; ``self._file`` is the
    socket or pipe it owns, ``self._loop`` its loop."""

    _core: Any
    _file: Any
    _loop: Any

    def get_protocol(self) -> Any:
        return self._core.get_protocol()

    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol)

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        core = getattr(self, "_core", None)
        if core is not None and not core._describe()[1]:  # [1]: closed
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._file.close()

    def _is_quiet_error(self, exc: BaseException) -> bool:
        """Errors that are the peer's doing, not a bug: logged in debug mode only."""
        return isinstance(exc, OSError)

    # Called by the core.

    def _report_fatal_error(self, exc: BaseException, message: str) -> None:
        if not self._is_quiet_error(exc):
            self._report_error(message, exc)
        elif self._loop.get_debug():
            logger.debug("%r: %s", self, message, exc_info=True)

    def _report_error(self, message: str, exc: BaseException) -> None:
        self._loop.call_exception_handler(
            {
                "message": message,
                "exception": exc,
                "transport": self,
                "protocol": self.get_protocol(),
            }
        )
