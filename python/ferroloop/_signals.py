"""Unix signals: ``add_signal_handler`` and prompt Ctrl-C.

Python's C-level signal handler writes each signal's number to the "wakeup fd"; the loop
watches the other end of that socket pair, so a signal wakes a blocking poll even when the
kernel delivers it to another thread, and handlers registered with ``add_signal_handler``
run as ordinary callbacks. Per signal, not per event: Python is the right place.
"""

from __future__ import annotations

import errno
import signal
import socket
import sys
import threading
import warnings
from asyncio import coroutines, events
from asyncio.log import logger
from collections.abc import Callable
from typing import Any


def _ignore_signal(signum: int, frame: Any) -> None:
    """Installed as the Python-level handler: the loop does the real work."""


class SignalsMixin:
    _signal_handlers: dict[int, events.Handle]
    _self_reader: socket.socket | None = None
    _self_writer: socket.socket | None = None

    def add_signal_handler(self, sig: int, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` in the loop whenever signal ``sig`` arrives."""
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            signal.set_wakeup_fd(self._ensure_self_pipe().fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        handle = events.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, _ignore_signal)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._clear_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove the handler of ``sig``; return whether there was one."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, default)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise
        if not self._signal_handlers:
            self._clear_wakeup_fd()
        return True

    def _check_signal(self, sig: Any) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _clear_wakeup_fd(self) -> None:
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(-1) failed: %s", exc)

    def _ensure_self_pipe(self) -> socket.socket:
        """The write end of the signal socket pair, created (and watched) on first use."""
        if self._self_writer is None:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._self_reader, self._self_writer = reader, writer
            self._add_reader(reader.fileno(), self._read_signals)
            self._set_signal_fd(reader.fileno())
        return self._self_writer

    def _close_self_pipe(self) -> None:
        if self._self_reader is not None:
            self._set_signal_fd(-1)
            self._remove_reader(self._self_reader.fileno())
            self._self_reader.close()
            self._self_reader = None
        if self._self_writer is not None:
            self._self_writer.close()
            self._self_writer = None

    def _read_signals(self) -> None:
        reader = self._self_reader
        while reader is not None:
            try:
                data = reader.recv(4096)
            except InterruptedError:
                continue
            except BlockingIOError:
                return
            if not data:
                return
            for signum in data:
                if signum:
                    self._handle_signal(signum)

    def _handle_signal(self, sig: int) -> None:
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return  # a signal with a plain Python handler: it runs on its own
        if handle._cancelled:
            self.remove_signal_handler(sig)
        else:
            self.call_soon(handle._run)

    def _watch_signals_while_running(self) -> int | None:
        """While the loop runs in the main thread, signals wake it (Ctrl-C included).

        Returns the wakeup fd to restore afterwards, or None if nothing was changed.
        """
        if threading.current_thread() is not threading.main_thread():
            return None
        ours = self._ensure_self_pipe().fileno()
        previous = signal.set_wakeup_fd(ours, warn_on_full_buffer=False)
        if previous not in (-1, ours):
            signal.set_wakeup_fd(previous)  # someone else's: leave it alone
            return None
        return previous

    def _unwatch_signals(self, previous: int | None) -> None:
        if previous is not None and not self._signal_handlers:
            signal.set_wakeup_fd(previous)

    def _remove_all_signal_handlers(self) -> None:
        if not self._signal_handlers:
            return
        if sys.is_finalizing():
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, "
                "skipping signal handlers removal",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )
            self._signal_handlers.clear()
            return
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
