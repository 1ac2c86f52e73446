"""Pipes and subprocesses: ``connect_read_pipe``, ``connect_write_pipe``,
``subprocess_exec``, ``subprocess_shell``.

Spawning and the subprocess protocol plumbing are the stdlib's loop-agnostic pieces
(``asyncio.unix_events._UnixSubprocessTransport`` over ``asyncio.base_subprocess``), whose
pipes are our pipe transports. Child exit is watched with a pidfd registered with the loop
(Linux 5.3+): no thread and no SIGCHLD handler per child; where pidfds are missing, a
thread per child waits for it.
"""

from __future__ import annotations

import os
import subprocess
import threading
from asyncio import unix_events
from asyncio.log import logger
from collections.abc import Callable
from typing import Any

from ._pipe_transport import ReadPipeTransport, WritePipeTransport


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


class SubprocessMixin:
    # ---- pipes ----------------------------------------------------------------------

    def _make_read_pipe_transport(
        self, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None
    ) -> ReadPipeTransport:
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(
        self, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None
    ) -> WritePipeTransport:
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    async def connect_read_pipe(
        self, protocol_factory: Callable[[], Any], pipe: Any
    ) -> tuple[Any, Any]:
        """Read ``pipe`` (a file-like object with ``fileno()``) into a new protocol."""
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_read_pipe_transport(pipe, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        if self.get_debug():
            logger.debug("Read pipe %r connected: (%r, %r)", pipe.fileno(), transport, protocol)
        return transport, protocol

    async def connect_write_pipe(
        self, protocol_factory: Callable[[], Any], pipe: Any
    ) -> tuple[Any, Any]:
        """Write to ``pipe`` (a file-like object with ``fileno()``) from a new protocol."""
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_write_pipe_transport(pipe, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        if self.get_debug():
            logger.debug("Write pipe %r connected: (%r, %r)", pipe.fileno(), transport, protocol)
        return transport, protocol

    # ---- subprocesses ---------------------------------------------------------------

    async def subprocess_shell(
        self,
        protocol_factory: Callable[[], Any],
        cmd: Any,
        *,
        stdin: Any = subprocess.PIPE,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        universal_newlines: bool = False,
        shell: bool = True,
        bufsize: int = 0,
        encoding: Any = None,
        errors: Any = None,
        text: Any = None,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run ``cmd`` through the shell, connected to a new subprocess protocol."""
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        if not shell:
            raise ValueError("shell must be True")
        _check_popen_args(universal_newlines, bufsize, text, encoding, errors)
        protocol = protocol_factory()
        description = f"run shell command {cmd!r}" if self.get_debug() else None
        if description:
            _log_subprocess(description, stdin, stdout, stderr)
        transport = await self._make_subprocess_transport(
            protocol, cmd, True, stdin, stdout, stderr, bufsize, **kwargs
        )
        if description:
            logger.info("%s: %r", description, transport)
        return transport, protocol

    async def subprocess_exec(
        self,
        protocol_factory: Callable[[], Any],
        program: Any,
        *args: Any,
        stdin: Any = subprocess.PIPE,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        universal_newlines: bool = False,
        shell: bool = False,
        bufsize: int = 0,
        encoding: Any = None,
        errors: Any = None,
        text: Any = None,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run ``program *args``, connected to a new subprocess protocol."""
        if shell:
            raise ValueError("shell must be False")
        _check_popen_args(universal_newlines, bufsize, text, encoding, errors)
        popen_args = (program, *args)
        protocol = protocol_factory()
        description = f"execute program {program!r}" if self.get_debug() else None
        if description:
            _log_subprocess(description, stdin, stdout, stderr)
        transport = await self._make_subprocess_transport(
            protocol, popen_args, False, stdin, stdout, stderr, bufsize, **kwargs
        )
        if description:
            logger.info("%s: %r", description, transport)
        return transport, protocol

    async def _make_subprocess_transport(
        self,
        protocol: Any,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: Any = None,
        **kwargs: Any,
    ) -> Any:
        waiter = self.create_future()
        transport = unix_events._UnixSubprocessTransport(
            self,
            protocol,
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        self._watch_child(transport.get_pid(), transport)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport

    def _watch_child(self, pid: int, transport: Any) -> None:
        """Calls ``transport._process_exited(returncode)`` in the loop when ``pid`` exits,
        reaping it."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            thread = threading.Thread(
                target=self._wait_child_in_thread,
                args=(pid, transport),
                daemon=True,
                name=f"waitpid-{pid}",
            )
            thread.start()
            return
        self._add_reader(pidfd, self._child_exited, pid, pidfd, transport)

    def _child_exited(self, pid: int, pidfd: int, transport: Any) -> None:
        self._remove_reader(pidfd)
        os.close(pidfd)
        # An iteration later, as the stdlib's watchers report it: a task woken in this
        # iteration (say, the one that just made the process) must see the process still
        # running, and its wait() then ends after connection_lost has let go of it.
        self.call_soon(transport._process_exited, _reap(pid))

    def _wait_child_in_thread(self, pid: int, transport: Any) -> None:
        returncode = _reap(pid, blocking=True)
        if not self.is_closed():
            self.call_soon_threadsafe(transport._process_exited, returncode)


def _reap(pid: int, blocking: bool = False) -> int:
    try:
        while True:
            waited, status = os.waitpid(pid, 0 if blocking else os.WNOHANG)
            if waited:
                return _exit_code(status)
            if not blocking:
                # The pidfd said it exited, so this cannot last; retry once blocking.
                blocking = True
    except ChildProcessError:
        # Someone else reaped it (another watcher): the stdlib reports 255 then.
        logger.warning("Unknown child process pid %d, will report returncode 255", pid)
        return 255


def _check_popen_args(
    universal_newlines: bool, bufsize: int, text: Any, encoding: Any, errors: Any
) -> None:
    if universal_newlines:
        raise ValueError("universal_newlines must be False")
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    if text:
        raise ValueError("text must be False")
    if encoding is not None:
        raise ValueError("encoding must be None")
    if errors is not None:
        raise ValueError("errors must be None")


def _log_subprocess(description: str, stdin: Any, stdout: Any, stderr: Any) -> None:
    parts = [description]
    if stdin is not None:
        parts.append(f"stdin={_format_pipe(stdin)}")
    if stdout is not None and stderr == subprocess.STDOUT:
        parts.append(f"stdout=stderr={_format_pipe(stdout)}")
    else:
        if stdout is not None:
            parts.append(f"stdout={_format_pipe(stdout)}")
        if stderr is not None:
            parts.append(f"stderr={_format_pipe(stderr)}")
    logger.debug(" ".join(parts))


def _format_pipe(fd: Any) -> str:
    if fd == subprocess.PIPE:
        return "<pipe>"
    if fd == subprocess.STDOUT:
        return "<stdout>"
    return repr(fd)
