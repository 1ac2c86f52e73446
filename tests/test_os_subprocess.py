"""Subprocesses: loop.subprocess_exec / subprocess_shell and asyncio.create_subprocess_*.

Pipes, DEVNULL, STDOUT redirection, pass_fds, pid/returncode, communicate, wait, signals,
argument errors; and the process-wide hygiene: every child is reaped (no zombie), no fd of
the parent leaks into a child, and no fd is left open in the parent afterwards.
"""

import ast
import asyncio
import gc
import glob
import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest
from net_support import open_fds, payload, raise_fd_limit, run

PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT

# Run in a child: print the fds open in it, as a sorted list (listdir's own fd is excluded).
LIST_FDS = """
import os
fds = []
for name in os.listdir('/proc/self/fd'):
    try:
        os.fstat(int(name))
    except OSError:
        continue  # the directory fd listdir used, already closed
    fds.append(int(name))
print(sorted(fds))
"""


@pytest.fixture
def handler_calls(loop):
    """The contexts passed to the loop's exception handler during the test."""
    calls = []
    loop.set_exception_handler(lambda _loop, context: calls.append(context))
    return calls


def children():
    """The pids of this process's unreaped children (running or zombie), from all threads."""
    pids = set()
    for path in glob.glob("/proc/self/task/*/children"):
        try:
            with open(path) as f:
                pids.update(int(pid) for pid in f.read().split())
        except OSError:
            pass  # a thread that exited since the glob (e.g. a stdlib child-watcher thread)
    return pids


def assert_reaped(pids):
    """Every pid in `pids` is gone: neither running nor a zombie child of this process."""
    assert not (set(pids) & children())
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


async def wait_until_reaped(pids, timeout=5.0):
    """Let the loop run until no pid in `pids` is a child of this process any more."""
    deadline = asyncio.get_running_loop().time() + timeout
    while set(pids) & children():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reaped: {set(pids) & children()}")
        await asyncio.sleep(0.01)


def python(*lines):
    """argv running the given lines of Python in a fresh interpreter."""
    return [sys.executable, "-c", "\n".join(lines)]


class SubprocessRecorder(asyncio.SubprocessProtocol):
    """Records the subprocess protocol calls; `done` resolves at connection_lost."""

    def __init__(self, loop):
        self.events = []
        self.output = {1: bytearray(), 2: bytearray()}
        self.transport = None
        self.exited = loop.create_future()
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def pipe_data_received(self, fd, data):
        assert isinstance(data, bytes) and data
        self.output[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe lost", fd, exc))

    def process_exited(self):
        self.events.append("exited")
        self.exited.set_result(self.transport.get_returncode())

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.done.set_result(exc)


# ---- data through pipes ----------------------------------------------------------------


def test_cat_16_mib_through_stdin_and_stdout(loop):
    data = payload(16 * 1024 * 1024)

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        out, err = await proc.communicate(data)
        assert err is None
        assert proc.returncode == 0
        assert_reaped([proc.pid])
        return out

    out = run(loop, main(), timeout=30)
    assert len(out) == len(data)
    assert out == data


def test_communicate_large_stdout_and_stderr_at_once(loop):
    script = python(
        "import os",
        "for i in range(64):",
        "    os.write(1, bytes([65 + i % 26]) * 16384)",
        "    os.write(2, bytes([97 + i % 26]) * 16384)",
    )

    async def main():
        proc = await asyncio.create_subprocess_exec(*script, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0
        return out, err

    out, err = run(loop, main())
    assert out == b"".join(bytes([65 + i % 26]) * 16384 for i in range(64))
    assert err == b"".join(bytes([97 + i % 26]) * 16384 for i in range(64))


def test_unread_child_output_is_backpressured(loop):
    """Output nobody reads stops the child (the stream pauses the pipe) instead of piling
    up in the parent; reading it later gets every byte."""
    size = 16 * 1024 * 1024
    script = python("import sys", f"sys.stdout.buffer.write(b'z' * {size})")

    async def main():
        proc = await asyncio.create_subprocess_exec(*script, stdout=PIPE)
        await asyncio.sleep(0.5)
        assert proc.returncode is None  # blocked on a full pipe
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        return out

    assert run(loop, main()) == b"z" * size


def test_interactive_line_by_line(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        assert isinstance(proc.stdin, asyncio.StreamWriter)
        assert isinstance(proc.stdout, asyncio.StreamReader)
        assert proc.stderr is None
        for i in range(100):
            proc.stdin.write(b"line %d\n" % i)
            await proc.stdin.drain()
            assert await proc.stdout.readline() == b"line %d\n" % i
        assert proc.returncode is None
        proc.stdin.close()
        assert await proc.stdout.read() == b""
        return await proc.wait()

    assert run(loop, main()) == 0


def test_subprocess_protocol_and_transport(loop):
    script = python(
        "import sys",
        "data = sys.stdin.buffer.read()",
        "sys.stdout.buffer.write(data.upper())",
        "sys.stderr.buffer.write(b'on stderr')",
        "sys.exit(3)",
    )

    async def main():
        transport, protocol = await loop.subprocess_exec(lambda: SubprocessRecorder(loop), *script)
        assert protocol.transport is transport
        assert isinstance(transport, asyncio.SubprocessTransport)
        pid = transport.get_pid()
        assert isinstance(pid, int) and pid > 0
        popen = transport.get_extra_info("subprocess")
        assert isinstance(popen, subprocess.Popen)
        assert popen.pid == pid
        assert transport.get_returncode() is None
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        assert isinstance(transport.get_pipe_transport(1), asyncio.ReadTransport)
        assert isinstance(transport.get_pipe_transport(2), asyncio.ReadTransport)

        stdin.write(b"shout ")
        stdin.write(b"this")
        stdin.close()
        assert await protocol.done is None
        assert await protocol.exited == 3
        assert transport.get_returncode() == 3
        assert_reaped([pid])
        transport.close()
        return protocol

    protocol = run(loop, main())
    assert bytes(protocol.output[1]) == b"SHOUT THIS"
    assert bytes(protocol.output[2]) == b"on stderr"
    assert protocol.events[0] == "made"
    assert protocol.events[-1] == ("lost", None)
    assert sorted(e for e in protocol.events if e[0] == "pipe lost") == [
        ("pipe lost", 0, None),
        ("pipe lost", 1, None),
        ("pipe lost", 2, None),
    ]
    assert protocol.events.count("exited") == 1


def test_communicate_with_a_child_that_never_reads_stdin(loop, handler_calls):
    async def main():
        proc = await asyncio.create_subprocess_exec("true", stdin=PIPE)
        result = await proc.communicate(b"x" * (1024 * 1024))
        return result, proc.returncode

    assert run(loop, main()) == ((None, None), 0)
    assert handler_calls == []


def test_writing_to_the_stdin_of_a_gone_child(loop, handler_calls):
    async def main():
        # The child exits while a drain waits: the buffered data can never be delivered.
        proc = await asyncio.create_subprocess_exec("sh", "-c", "read x", stdin=PIPE)
        proc.stdin.write(b"line\n" + b"y" * (1024 * 1024))
        with pytest.raises(ConnectionError) as pending:
            await proc.stdin.drain()
        assert await proc.wait() == 0
        # Afterwards every drain reports the lost connection.
        errors = []
        for _ in range(3):
            proc.stdin.write(b"z" * 100_000)
            with pytest.raises(ConnectionError) as later:
                await proc.stdin.drain()
            errors.append(later.value)
        return pending.value, errors

    pending, errors = run(loop, main())
    assert type(pending) is BrokenPipeError
    assert [(type(e), str(e)) for e in errors] == [(ConnectionResetError, "Connection lost")] * 3
    assert handler_calls == []


def test_popen_arguments_pass_through(loop):
    """Path and bytes arguments, and Popen options such as start_new_session, as with Popen."""
    script = "import os; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())"

    async def main():
        proc = await asyncio.create_subprocess_exec(
            pathlib.Path("/bin/echo"), b"bytes", "str", stdout=PIPE
        )
        echoed, _ = await proc.communicate()
        proc = await asyncio.create_subprocess_exec(
            sys.executable.encode(), "-c", script, stdout=PIPE, start_new_session=True
        )
        session, _ = await proc.communicate()
        return echoed, session

    assert run(loop, main()) == (b"bytes str\n", b"True True\n")


# ---- redirection -----------------------------------------------------------------------


def test_stderr_to_stdout(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo to-stdout; echo to-stderr >&2; echo again", stdout=PIPE, stderr=STDOUT
        )
        assert proc.stderr is None
        out, err = await proc.communicate()
        assert err is None
        return out, proc.returncode

    assert run(loop, main()) == (b"to-stdout\nto-stderr\nagain\n", 0)


def test_devnull(loop):
    script = python(
        "import os, sys",
        "assert sys.stdin.buffer.read() == b''",
        "print(os.readlink('/proc/self/fd/0'), file=sys.stderr)",
        "print('discarded')",
    )

    async def main():
        proc = await asyncio.create_subprocess_exec(
            *script, stdin=DEVNULL, stdout=DEVNULL, stderr=PIPE
        )
        assert proc.stdin is None
        assert proc.stdout is None
        out, err = await proc.communicate()
        assert out is None
        return err, proc.returncode

    assert run(loop, main()) == (b"/dev/null\n", 0)


def test_devnull_on_the_transport(loop):
    async def main():
        transport, protocol = await loop.subprocess_exec(
            lambda: SubprocessRecorder(loop), "true", stdin=DEVNULL, stdout=DEVNULL, stderr=PIPE
        )
        assert transport.get_pipe_transport(0) is None
        assert transport.get_pipe_transport(1) is None
        assert transport.get_pipe_transport(2) is not None
        await protocol.done
        transport.close()
        return protocol.events

    events = run(loop, main())
    assert [e for e in events if e[0] == "pipe lost"] == [("pipe lost", 2, None)]


def test_redirect_to_file_objects_and_fds(loop, tmp_path):
    source = tmp_path / "in"
    source.write_bytes(b"from a file\n")

    async def main():
        with open(source, "rb") as fin, open(tmp_path / "out", "wb") as fout:
            err_fd = os.open(tmp_path / "err", os.O_WRONLY | os.O_CREAT)
            try:
                proc = await asyncio.create_subprocess_shell(
                    "cat; echo oops >&2", stdin=fin, stdout=fout, stderr=err_fd
                )
                assert (proc.stdin, proc.stdout, proc.stderr) == (None, None, None)
                return await proc.wait()
            finally:
                os.close(err_fd)

    assert run(loop, main()) == 0
    assert (tmp_path / "out").read_bytes() == b"from a file\n"
    assert (tmp_path / "err").read_bytes() == b"oops\n"


def test_env_and_cwd(loop, tmp_path):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            'echo "$FERRO_VALUE"; pwd',
            stdout=PIPE,
            cwd=tmp_path,
            env={"FERRO_VALUE": "from env", "PATH": os.environ["PATH"]},
        )
        out, _ = await proc.communicate()
        return out

    assert run(loop, main()) == f"from env\n{os.path.realpath(tmp_path)}\n".encode()


def test_subprocess_shell_pipeline(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell("echo abc | tr a-z A-Z", stdout=PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        assert_reaped([proc.pid])
        return out

    assert run(loop, main()) == b"ABC\n"


def test_loop_subprocess_shell_with_protocol(loop):
    async def main():
        transport, protocol = await loop.subprocess_shell(
            lambda: SubprocessRecorder(loop), "printf abc | tr a-z A-Z; exit 5", stdin=DEVNULL
        )
        assert isinstance(transport, asyncio.SubprocessTransport)
        assert await protocol.done is None
        assert transport.get_returncode() == 5
        transport.close()
        return bytes(protocol.output[1])

    assert run(loop, main()) == b"ABC"


# ---- pid, returncode, wait, signals ----------------------------------------------------


def test_pid_returncode_and_concurrent_waits(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "read line; exit 7", stdin=PIPE, stdout=DEVNULL
        )
        assert isinstance(proc.pid, int) and proc.pid in children()
        assert proc.returncode is None
        waits = [asyncio.ensure_future(proc.wait()) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waits)
        assert proc.returncode is None
        proc.stdin.write(b"go\n")
        results = await asyncio.gather(*waits)
        assert proc.returncode == 7
        assert await proc.wait() == 7  # again, after the fact
        assert_reaped([proc.pid])
        return results

    assert run(loop, main()) == [7, 7, 7]


def test_cancelled_wait_leaves_the_process_managed(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=DEVNULL)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.1)
        assert proc.returncode is None
        proc.stdin.close()
        assert await proc.wait() == 0
        assert_reaped([proc.pid])

    run(loop, main())


def test_wait_and_returncode_while_a_grandchild_holds_stdout(loop):
    """returncode is set at the child's exit, and a wait() begun after the exit returns at
    once, even while the child's stdout is still open. (Whether a wait() begun before the
    exit also waits for the pipes varies between CPython patch releases.)"""

    async def main():
        proc = await asyncio.create_subprocess_shell("sleep 30 & echo $!", stdout=PIPE)
        grandchild = int(await proc.stdout.readline())
        early_wait = asyncio.ensure_future(proc.wait())
        try:
            deadline = loop.time() + 5
            while proc.returncode is None:
                assert loop.time() < deadline, "the child's exit was not noticed"
                await asyncio.sleep(0.01)
            assert proc.returncode == 0
            assert_reaped([proc.pid])
            assert await asyncio.wait_for(proc.wait(), 5) == 0
            assert not proc.stdout.at_eof()
        finally:
            os.kill(grandchild, signal.SIGKILL)
        assert await proc.stdout.read() == b""
        assert await early_wait == 0

    run(loop, main())


READY_THEN_SLEEP = "echo ready; exec sleep 30"


@pytest.mark.parametrize(
    "how, signum",
    [
        ("kill", signal.SIGKILL),
        ("terminate", signal.SIGTERM),
        ("send_signal", signal.SIGUSR1),
        ("os.kill", signal.SIGINT),
    ],
)
def test_child_killed_by_a_signal(loop, how, signum):
    async def main():
        proc = await asyncio.create_subprocess_shell(READY_THEN_SLEEP, stdout=PIPE)
        assert await proc.stdout.readline() == b"ready\n"
        if how == "send_signal":
            proc.send_signal(signum)
        elif how == "os.kill":
            os.kill(proc.pid, signum)
        else:
            getattr(proc, how)()
        code = await proc.wait()
        assert proc.returncode == code
        assert await proc.stdout.read() == b""
        assert_reaped([proc.pid])
        return code

    assert run(loop, main()) == -signum


def test_child_that_kills_itself(loop):
    async def main():
        transport, protocol = await loop.subprocess_shell(
            lambda: SubprocessRecorder(loop), "kill -KILL $$", stdin=DEVNULL
        )
        await protocol.done
        transport.close()
        return protocol.exited.result()

    assert run(loop, main()) == -signal.SIGKILL


def test_kill_after_exit_raises_like_the_stdlib(assert_same_error):
    async def scenario():
        proc = await asyncio.create_subprocess_exec("true")
        await asyncio.wait_for(proc.wait(), 10)
        # A wait() that began after the exit returns before the transport has finished
        # (the loop has yet to run the callback that releases the process): let it run.
        for _ in range(3):
            await asyncio.sleep(0)
        proc.kill()

    exc = assert_same_error(lambda lp: lp.run_until_complete(scenario()))
    assert isinstance(exc, ProcessLookupError)


def test_closing_the_transport_kills_and_reaps_a_running_child(loop):
    async def main():
        transport, protocol = await loop.subprocess_exec(
            lambda: SubprocessRecorder(loop), "sleep", "30", stdin=DEVNULL, stdout=DEVNULL
        )
        pid = transport.get_pid()
        assert pid in children()
        transport.close()
        assert transport.is_closing()
        await wait_until_reaped([pid])

    run(loop, main())


# ---- many processes: no zombie, no fd left behind --------------------------------------


def test_200_concurrent_short_lived_subprocesses(loop):
    count = 200
    raise_fd_limit(count * 8 + 256)

    async def one():
        proc = await asyncio.create_subprocess_exec(
            "/bin/true", stdin=DEVNULL, stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate()
        assert (out, err) == (b"", b"")
        return proc.pid, proc.returncode

    async def main():
        await one()  # the loop may set up process-wide machinery once
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()  # fds of earlier tests' garbage must not close during the measurement
        before = open_fds()
        results = await asyncio.gather(*(one() for _ in range(count)))
        for _ in range(3):
            await asyncio.sleep(0)
        after = open_fds()
        return before, after, results

    before, after, results = run(loop, main(), timeout=60)
    pids = [pid for pid, _ in results]
    assert len(set(pids)) == count
    assert all(code == 0 for _, code in results)
    assert_reaped(pids)
    assert after == before


def test_failed_spawn_leaves_nothing_behind(loop):
    def attempt():
        with pytest.raises(FileNotFoundError):
            loop.run_until_complete(
                loop.subprocess_exec(asyncio.SubprocessProtocol, "/nonexistent/program")
            )

    attempt()
    gc.collect()
    before, kids = open_fds(), children()
    for _ in range(20):
        attempt()
    assert open_fds() == before
    assert children() == kids


# ---- fds seen by the child -------------------------------------------------------------


def warm_up(loop):
    """Make the loop open whatever fds it keeps (signal wakeup, child watching, sockets)."""

    async def main():
        proc = await asyncio.create_subprocess_exec("true", stdout=PIPE)
        await proc.communicate()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        return server

    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    return run(loop, main())


@pytest.mark.parametrize("spawn", ["exec", "shell"])
def test_child_sees_only_stdio_and_pass_fds(loop, spawn):
    server = warm_up(loop)
    r, w = os.pipe()
    try:

        async def main():
            if spawn == "exec":
                proc = await asyncio.create_subprocess_exec(
                    *python(LIST_FDS, f"os.write({w}, b'via pass_fds')"),
                    stdout=PIPE,
                    pass_fds=(w,),
                )
            else:
                code = LIST_FDS + f"os.write({w}, b'via pass_fds')"
                proc = await asyncio.create_subprocess_shell(
                    f'exec {sys.executable} -c "{code}"', stdout=PIPE, pass_fds=(w,)
                )
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            return out

        out = run(loop, main())
        assert ast.literal_eval(out.decode()) == [0, 1, 2, w]
        assert os.read(r, 100) == b"via pass_fds"
    finally:
        os.close(r)
        os.close(w)
        loop.remove_signal_handler(signal.SIGUSR2)
        server.close()
        run(loop, server.wait_closed())


def test_loop_fds_are_not_inheritable(loop_factory):
    """Every fd a loop opens (epoll, wakeup, pidfds, sockets, pipes to children) is
    close-on-exec: even a child spawned with close_fds=False gets none of them."""

    def inheritable_fds():
        return {fd for fd in map(int, open_fds()) if _inheritable(fd)}

    inheritable_before = inheritable_fds()
    existing = set(map(int, open_fds()))
    lp = loop_factory()  # a loop created here, so its own fds are among the new ones
    asyncio.set_event_loop(lp)
    try:
        server = warm_up(lp)

        async def main():
            sleeper = await asyncio.create_subprocess_exec(
                "sleep", "30", stdin=PIPE, stdout=PIPE, stderr=PIPE
            )
            new = set(map(int, open_fds())) - existing
            leaky = {fd for fd in new if _inheritable(fd)}
            proc = await asyncio.create_subprocess_exec(
                *python(LIST_FDS), stdout=PIPE, close_fds=False
            )
            out, _ = await proc.communicate()
            sleeper.kill()
            await sleeper.communicate()
            return new, leaky, set(ast.literal_eval(out.decode()))

        try:
            new, leaky, child_fds = run(lp, main())
        finally:
            lp.remove_signal_handler(signal.SIGUSR2)
            server.close()
            run(lp, server.wait_closed())
    finally:
        lp.close()
        asyncio.set_event_loop(None)
    assert len(new) >= 6  # the loop's fds, a listening socket, three pipes to the sleeper
    assert leaky == set()
    assert child_fds - {0, 1, 2} <= inheritable_before


def _inheritable(fd):
    try:
        return os.get_inheritable(fd)
    except OSError:
        return False


# ---- argument errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"universal_newlines": True},
        {"shell": True},
        {"bufsize": 1},
        {"bufsize": -1},
        {"text": True},
        {"encoding": "utf-8"},
        {"errors": "strict"},
    ],
)
@pytest.mark.parametrize("api", ["loop", "asyncio"])
def test_subprocess_exec_argument_errors(assert_same_error, kwargs, api):
    def action(lp):
        if api == "loop":
            coro = lp.subprocess_exec(asyncio.SubprocessProtocol, "true", **kwargs)
        else:
            coro = asyncio.create_subprocess_exec("true", **kwargs)
        lp.run_until_complete(coro)

    exc = assert_same_error(action)
    assert isinstance(exc, ValueError)


@pytest.mark.parametrize(
    "cmd, kwargs",
    [
        (123, {}),
        (["echo", "hi"], {}),
        (("echo",), {}),
        ("true", {"shell": False}),
        ("true", {"universal_newlines": True}),
        ("true", {"bufsize": 4096}),
        ("true", {"text": True}),
        ("true", {"encoding": "utf-8"}),
        ("true", {"errors": "strict"}),
    ],
)
def test_subprocess_shell_argument_errors(assert_same_error, cmd, kwargs):
    def action(lp):
        lp.run_until_complete(lp.subprocess_shell(asyncio.SubprocessProtocol, cmd, **kwargs))

    exc = assert_same_error(action)
    assert isinstance(exc, ValueError)


@pytest.mark.parametrize(
    "program, kwargs",
    [
        (123, {}),
        (["true"], {}),
        ("/nonexistent/program", {}),
        ("true", {"cwd": "/nonexistent/directory"}),
    ],
)
def test_subprocess_exec_spawn_errors(assert_same_error, program, kwargs):
    def action(lp):
        lp.run_until_complete(lp.subprocess_exec(asyncio.SubprocessProtocol, program, **kwargs))

    exc = assert_same_error(action)
    assert isinstance(exc, (TypeError, OSError))


# ---- threads ---------------------------------------------------------------------------


def test_subprocess_from_a_loop_in_another_thread(loop_factory):
    """No SIGCHLD handler can be installed off the main thread: child exit must still be seen."""
    outcome = {}

    def thread_main():
        lp = loop_factory()
        try:

            async def main():
                proc = await asyncio.create_subprocess_exec(
                    "sh", "-c", "echo from a thread; exit 4", stdout=PIPE
                )
                out, _ = await proc.communicate()
                return out, proc.returncode, proc.pid

            outcome["result"] = run(lp, main())
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            outcome["error"] = exc
        finally:
            lp.close()

    thread = threading.Thread(target=thread_main)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    out, code, pid = outcome["result"]
    assert (out, code) == (b"from a thread\n", 4)
    assert_reaped([pid])


def test_a_process_that_wait_saw_exit_cannot_be_signalled(loop):
    # wait() returns once connection_lost has let go of the process, so kill() raises
    # ProcessLookupError, as on the stdlib loop. The exit is reported an iteration after
    # the loop sees it; reported at once, a task woken in the same iteration (the one that
    # made the process) found it exited but not yet let go of, and kill() returned None.
    async def main():
        outcomes = set()
        for _ in range(300):
            process = await asyncio.create_subprocess_exec("true")
            await process.wait()
            try:
                process.kill()
                outcomes.add("kill() returned")
            except ProcessLookupError:
                outcomes.add("ProcessLookupError")
        return outcomes

    assert run(loop, main(), timeout=60) == {"ProcessLookupError"}
