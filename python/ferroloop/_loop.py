"""``ferroloop.Loop``: the Rust core (per-event work) plus the once-per-loop API.

``LoopCore`` (Rust) owns the ready queue, the timers, the poller and the run step; this
class adds what runs once per loop or per call into a library: lifecycle checks, tasks,
executors, async generator hooks, name resolution, signals and the exception handler.
"""

from __future__ import annotations

import concurrent.futures
import socket
import sys
import threading
import warnings
import weakref
from asyncio import coroutines, events, futures, tasks, timeouts
from asyncio.log import logger
from collections.abc import Callable
from typing import Any

from ._connections import ConnectionsMixin
from ._datagram import DatagramMixin
from ._datagram_transport import DatagramTransport
from ._exception_handler import ExceptionHandlerMixin
from ._ferroloop import LoopCore
from ._format import check_callback
from ._sendfile import SendfileMixin
from ._signals import SignalsMixin
from ._sock import SockMixin
from ._subprocess import SubprocessMixin
from ._transport import SocketTransport

# The stdlib's depth for coroutine origin tracking in debug mode.
_DEBUG_STACK_DEPTH = 10


def _stop_loop_when_done(future: futures.Future) -> None:
    # A task that raised SystemExit/KeyboardInterrupt already stopped the loop by raising.
    if not future.cancelled():
        exc = future.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            return
    futures._get_loop(future).stop()


class Loop(
    LoopCore,
    ConnectionsMixin,
    DatagramMixin,
    SockMixin,
    SendfileMixin,
    SubprocessMixin,
    SignalsMixin,
    ExceptionHandlerMixin,
    events.AbstractEventLoop,
):
    """An asyncio event loop whose hot paths are Rust.

    A drop-in ``asyncio.AbstractEventLoop``: create one with ``ferroloop.new_event_loop()``
    or let ``ferroloop.run`` / ``asyncio.run(..., loop_factory=ferroloop.new_event_loop)``
    manage it.
    """

    def __init__(self) -> None:
        # Callbacks slower than this are logged in debug mode.
        self.slow_callback_duration = 0.1
        self._default_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_shutdown_called = False
        self._task_factory: Callable[..., Any] | None = None
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._old_agen_hooks: Any = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth: int | None = None
        self._signal_handlers = {}
        self._saved_wakeup_fd: int | None = None
        # fd → weak reference to the transport that owns it (sock_* and fd watchers check
        # it, as on the stdlib loop). A plain dict: an entry costs one C-level store per
        # connection; a dead entry is overwritten when its fd number is reused.
        self._transports: dict[int, weakref.ref[Any]] = {}
        # The receive buffer the loop's TLS connections share (`_new_ssl_protocol`).
        self._tls_read_buffer: memoryview | None = None
        self._set_debug_flag(coroutines._is_debug_mode())

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # ---- running and stopping -------------------------------------------------------

    def _check_closed(self) -> None:
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self) -> None:
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def _run_forever_setup(self) -> None:
        """Everything ``run_forever`` does before iterating (a hook for subclasses)."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._saved_wakeup_fd = self._watch_signals_while_running()
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook,
            finalizer=self._asyncgen_finalizer_hook,
        )
        events._set_running_loop(self)

    def _run_forever_cleanup(self) -> None:
        """Everything ``run_forever`` does after iterating (a hook for subclasses)."""
        events._set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None
        saved, self._saved_wakeup_fd = self._saved_wakeup_fd, None
        self._unwatch_signals(saved)

    def run_forever(self) -> None:
        """Run until ``stop()`` is called."""
        self._run_forever_setup()
        bound_call_soon = self._keep_bound_call_soon()
        try:
            self._run_loop()
        finally:
            self._drop_bound_call_soon(bound_call_soon)
            self._run_forever_cleanup()

    # Python 3.11's C Task and Future look up `loop.call_soon` as an attribute for every
    # step and done callback, which builds and frees a bound method each time (about 5%
    # of an `await asyncio.sleep(0)`). While the loop runs, one bound method is kept in
    # the instance dict, where that lookup finds it first. Only while running, so no
    # reference cycle outlives `run_forever`; not for a subclass overriding `call_soon`,
    # nor over an instance attribute someone set; and one someone sets meanwhile is left
    # alone. 3.12's C Task calls the method without binding it, so it gains nothing there.
    if sys.version_info < (3, 12):

        def _keep_bound_call_soon(self) -> Any:
            if type(self).call_soon is not LoopCore.call_soon or "call_soon" in self.__dict__:
                return None
            bound = self.__dict__["call_soon"] = self.call_soon
            return bound

        def _drop_bound_call_soon(self, bound: Any) -> None:
            if bound is not None and self.__dict__.get("call_soon") is bound:
                del self.__dict__["call_soon"]

    else:

        def _keep_bound_call_soon(self) -> Any:
            return None

        def _drop_bound_call_soon(self, bound: Any) -> None:
            pass

    def run_until_complete(self, future: Any) -> Any:
        """Run until ``future`` (a Future, Task, coroutine or awaitable) is done; return
        its result or raise its exception."""
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # The caller never sees this task: its failure is raised here, not logged.
            future._log_destroy_pending = False
        future.add_done_callback(_stop_loop_when_done)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                future.exception()  # consumed: it is being raised to the caller
            raise
        finally:
            future.remove_done_callback(_stop_loop_when_done)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self) -> None:
        """Close the loop: drop pending callbacks, release its fds, shut the default
        executor down without waiting. The loop must not be running."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        self._remove_all_signal_handlers()
        self._close_self_pipe()
        self._close_core()
        self._executor_shutdown_called = True
        executor, self._default_executor = self._default_executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    # ---- debug mode -----------------------------------------------------------------

    @property
    def _debug(self) -> bool:
        return self.get_debug()

    def set_debug(self, enabled: bool) -> None:
        self._set_debug_flag(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(_DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(
                self._coroutine_origin_tracking_saved_depth or 0
            )
        self._coroutine_origin_tracking_enabled = enabled

    def _timer_handle_cancelled(self, handle: Any) -> None:
        """Called by stdlib ``TimerHandle``s bound to this loop; ours count themselves."""

    # ---- transports -----------------------------------------------------------------

    def _make_socket_transport(
        self, sock: Any, protocol: Any, waiter: Any = None, *, extra: Any = None, server: Any = None
    ) -> SocketTransport:
        """A transport over a connected non-blocking socket (see ``SocketTransport``)."""
        self._sock_fd(sock)  # refused if a live transport owns the fd, as on 3.12+
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_datagram_transport(
        self, sock: Any, protocol: Any, address: Any = None, waiter: Any = None, extra: Any = None
    ) -> DatagramTransport:
        """A transport over a bound non-blocking datagram socket (see ``DatagramTransport``)."""
        self._sock_fd(sock)
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    # ---- futures and tasks ----------------------------------------------------------

    # create_future and create_task are LoopCore's (Rust); this is create_task's path for
    # a task factory or debug mode.
    def _create_task_general(self, coro: Any, name: str | None, context: Any) -> Any:
        self._check_closed()
        if self._task_factory is None:
            task = tasks.Task(coro, loop=self, name=name, context=context)
            if task._source_traceback:
                del task._source_traceback[-1]
            return task
        if context is None:
            task = self._task_factory(self, coro)
        else:
            task = self._task_factory(self, coro, context=context)
        if name is not None:
            task.set_name(name)
        return task

    def set_task_factory(self, factory: Callable[..., Any] | None) -> None:
        """Use ``factory(loop, coro[, context=…])`` in ``create_task`` (None: the default)."""
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self) -> Callable[..., Any] | None:
        return self._task_factory

    # ---- async generators -----------------------------------------------------------

    def _asyncgen_firstiter_hook(self, agen: Any) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                stacklevel=1,
                source=self,
            )
        self._asyncgens.add(agen)

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self) -> None:
        """Close every async generator the loop has seen that is still open."""
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[agen.aclose() for agen in closing], return_exceptions=True)
        for result, agen in zip(results, closing, strict=False):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # ---- executors ------------------------------------------------------------------

    def run_in_executor(
        self, executor: Any, func: Callable[..., Any], *args: Any
    ) -> futures.Future:
        """Run ``func(*args)`` in ``executor`` (None: the default thread pool)."""
        self._check_closed()
        if self.get_debug():
            check_callback(func, "run_in_executor")
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Wait (up to ``timeout`` seconds) for the default executor to finish its work."""
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        done = self.create_future()
        thread = threading.Thread(target=self._shut_executor_down, args=(executor, done))
        thread.start()
        try:
            if timeout is None:
                await done
            else:
                async with timeouts.timeout(timeout):
                    await done
        except TimeoutError:
            warnings.warn(
                f"The executor did not finishing joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            executor.shutdown(wait=False)
        else:
            thread.join()

    def _shut_executor_down(self, executor: Any, done: futures.Future) -> None:
        try:
            executor.shutdown(wait=True)
        except Exception as exc:
            if not self.is_closed() and not done.cancelled():
                self.call_soon_threadsafe(done.set_exception, exc)
        else:
            if not self.is_closed():
                self.call_soon_threadsafe(futures._set_result_unless_cancelled, done, None)

    # ---- name resolution ------------------------------------------------------------

    async def getaddrinfo(
        self,
        host: Any,
        port: Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        if self.get_debug():
            return await self.run_in_executor(
                None, self._getaddrinfo_debug, host, port, family, type, proto, flags
            )
        # Nothing to look up for an address literal and a port number: the answer is built
        # here (the common arguments) or the C library gives it from the strings alone,
        # in microseconds, where a thread hand-off would cost ten times that.
        answer = _numeric_addrinfo(host, port, family, type, proto, flags)
        if answer is not None:
            self._check_closed()
            return answer
        if _is_numeric_address(host) and _is_numeric_port(port):
            self._check_closed()
            return socket.getaddrinfo(host, port, family, type, proto, flags)
        return await self.run_in_executor(
            None, socket.getaddrinfo, host, port, family, type, proto, flags
        )

    def _getaddrinfo_debug(
        self, host: Any, port: Any, family: int, type: int, proto: int, flags: int
    ) -> list[Any]:
        described = [f"{host}:{port!r}"]
        for label, value in (
            ("family", family),
            ("type", type),
            ("proto", proto),
            ("flags", flags),
        ):
            if value:
                described.append(f"{label}={value!r}")
        text = ", ".join(described)
        logger.debug("Get address info %s", text)
        started = self.time()
        addrinfo = socket.getaddrinfo(host, port, family, type, proto, flags)
        took = self.time() - started
        message = f"Getting address info {text} took {took * 1e3:.3f}ms: {addrinfo!r}"
        (logger.info if took >= self.slow_callback_duration else logger.debug)(message)
        return addrinfo

    async def getnameinfo(self, sockaddr: Any, flags: int = 0) -> tuple[str, str]:
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    # ---- fd watchers ----------------------------------------------------------------
    # The public methods refuse fds that belong to a live transport, as the stdlib's do;
    # the underscored spellings (which libraries also call) skip the check.

    _add_reader = LoopCore.add_reader
    _remove_reader = LoopCore.remove_reader
    _add_writer = LoopCore.add_writer
    _remove_writer = LoopCore.remove_writer

    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        """Watch ``fd`` for reading; ``callback(*args)`` runs while it is readable."""
        self._ensure_fd_no_transport(fd)
        LoopCore.add_reader(self, fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        """Stop watching ``fd`` for reading; return whether it was watched."""
        self._ensure_fd_no_transport(fd)
        return LoopCore.remove_reader(self, fd)

    def add_writer(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        """Watch ``fd`` for writing; ``callback(*args)`` runs while it is writable."""
        self._ensure_fd_no_transport(fd)
        LoopCore.add_writer(self, fd, callback, *args)

    def remove_writer(self, fd: Any) -> bool:
        """Stop watching ``fd`` for writing; return whether it was watched."""
        self._ensure_fd_no_transport(fd)
        return LoopCore.remove_writer(self, fd)

    def _ensure_fd_no_transport(self, fd: Any) -> None:
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        owner = self._transports.get(fileno)
        transport = None if owner is None else owner()
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")


def _is_numeric_address(host: Any) -> bool:
    """An IPv4 or IPv6 address literal (no scope id): getaddrinfo resolves it locally."""
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return False
    if not isinstance(host, str):
        return False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return True
    return False


def _is_numeric_port(port: Any) -> bool:
    """No port, or a port number: no services-database lookup."""
    if port is None or (isinstance(port, int) and not isinstance(port, bool)):
        return True
    if isinstance(port, bytes):
        port = port.decode("ascii", "replace")
    return isinstance(port, str) and port.isascii() and port.isdigit()


# What getaddrinfo answers for a numeric host per (type, proto), in its order. Keys are
# plain ints: hashing the enum members callers pass would call Python-level __hash__.
_STREAM = (socket.SOCK_STREAM, socket.IPPROTO_TCP)
_DGRAM = (socket.SOCK_DGRAM, socket.IPPROTO_UDP)
_SOCKET_KINDS = {
    (0, 0): (_STREAM, _DGRAM, (socket.SOCK_RAW, 0)),
    (0, int(socket.IPPROTO_TCP)): (_STREAM,),
    (0, int(socket.IPPROTO_UDP)): (_DGRAM,),
    (int(socket.SOCK_STREAM), 0): (_STREAM,),
    (int(socket.SOCK_STREAM), int(socket.IPPROTO_TCP)): (_STREAM,),
    (int(socket.SOCK_DGRAM), 0): (_DGRAM,),
    (int(socket.SOCK_DGRAM), int(socket.IPPROTO_UDP)): (_DGRAM,),
}
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def _numeric_addrinfo(
    host: Any, port: Any, family: int, type: int, proto: int, flags: int
) -> list[Any] | None:
    """``socket.getaddrinfo``'s answer for an address literal (no scope id) and a port
    number, built without calling it, for the common arguments; None for anything else."""
    if flags or not isinstance(type, int) or not isinstance(proto, int):
        return None
    kinds = _SOCKET_KINDS.get((int(type), int(proto)))
    if kinds is None:
        return None
    if port is None:
        port = 0
    elif isinstance(port, (str, bytes)):
        if not (port.isdigit() and port.isascii()):
            return None
        port = int(port)
    elif not isinstance(port, int) or isinstance(port, bool):
        return None
    if not 0 <= port <= 0xFFFF:
        return None  # the C library wraps it; leave that to the C library
    if isinstance(host, bytes):
        if not host.isascii():
            return None
        host = host.decode("ascii")
    elif not isinstance(host, str):
        return None
    address: tuple[Any, ...]
    try:
        if ":" in host:
            host_family = _AF_INET6
            address = (socket.inet_ntop(_AF_INET6, socket.inet_pton(_AF_INET6, host)), port, 0, 0)
        else:
            host_family = _AF_INET
            socket.inet_pton(_AF_INET, host)  # dotted quads it accepts are canonical
            address = (host, port)
    except (OSError, ValueError):
        return None
    if family and family != host_family:
        return None  # an error; the C library words it
    return [(host_family, kind, kind_proto, "", address) for kind, kind_proto in kinds]
