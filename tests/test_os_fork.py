"""Fork safety: a forked child runs a fresh loop of the kind under test; the parent's loop
keeps working afterwards.

The child never touches the parent's loop (closing it there would also unregister the
parent's fds from the epoll instance the two processes share, on any loop), and always
leaves with os._exit so nothing of pytest runs twice.
"""

import asyncio
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback

import pytest
from net_support import Echo, run

CHILD_TIMEOUT = 20.0


async def workload(loop, threads=True):
    """Exercise a loop: callbacks, timers, tasks, sockets, a TCP server, signals, and (if
    `threads`) the default executor. The parent skips the executor before it forks, so the
    fork happens in a single-threaded process.

    Returns a summary that is the same on every healthy loop.
    """
    order = []
    loop.call_soon(order.append, "soon")
    loop.call_later(0.01, order.append, "later")
    await asyncio.sleep(0.03)

    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    doubled = await asyncio.gather(*(asyncio.ensure_future(double(i)) for i in range(5)))

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        await loop.sock_sendall(a, b"ping")
        via_sock = await loop.sock_recv(b, 4)

    server = await loop.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"echo me\n")
    via_tcp = await reader.readline()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()

    in_thread = await loop.run_in_executor(None, sum, [1, 2, 3]) if threads else 6

    got_signal = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, got_signal.set_result, "signal")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        via_signal = await asyncio.wait_for(got_signal, 5)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)

    return {
        "order": order,
        "doubled": doubled,
        "sock": via_sock.decode(),
        "tcp": via_tcp.decode(),
        "executor": in_thread,
        "signal": via_signal,
    }


EXPECTED = {
    "order": ["soon", "later"],
    "doubled": [0, 2, 4, 6, 8],
    "sock": "ping",
    "tcp": "echo me\n",
    "executor": 6,
    "signal": "signal",
}


async def subprocess_workload(loop):
    proc = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        "tr a-z A-Z; exit 3",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(b"from the child's child")
    return {"out": out.decode(), "code": proc.returncode}


SUBPROCESS_EXPECTED = {"out": "FROM THE CHILD'S CHILD", "code": 3}


def run_fresh_loop(loop_factory, job):
    """In a child: create a new loop with `loop_factory`, run `job(loop)` on it, close it."""
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(asyncio.wait_for(job(loop), CHILD_TIMEOUT / 2))
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        asyncio.set_event_loop(None)


def wait_single_threaded(timeout=2.0):
    """Let threads left by earlier tests (executor workers shutting down) end before a fork:
    a lock another thread holds at the fork stays held forever in the child."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)


def fork_child(loop_factory, job):
    """Fork; the child runs `job` on a fresh loop and reports through a pipe.

    Returns (pid, read end of the report pipe) in the parent.
    """
    wait_single_threaded()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.close(r)
            try:
                report = {"result": run_fresh_loop(loop_factory, job)}
                status = 0
            except BaseException:  # noqa: BLE001 - reported to the parent
                report = {"error": traceback.format_exc()}
            with os.fdopen(w, "w") as f:
                json.dump(report, f)
        finally:
            os._exit(status)
    os.close(w)
    return pid, r


async def reap(pid, timeout=CHILD_TIMEOUT):
    """Wait (polling, with the loop's timers) for child `pid` to exit; kill it on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if loop.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child did not finish in time")
        await asyncio.sleep(0.01)


def read_report(r):
    with os.fdopen(r) as f:
        text = f.read()
    report = json.loads(text) if text else {"error": "no report"}
    assert "error" not in report, report["error"]
    return report["result"]


def test_fork_from_a_running_loop(loop, loop_factory):
    """Fork inside a coroutine (as code calling multiprocessing or os.fork from a task does)."""

    async def main():
        before = await workload(loop, threads=False)
        pid, r = fork_child(loop_factory, workload)
        code = await reap(pid)
        child = read_report(r)
        after = await workload(loop)
        return before, code, child, after

    before, code, child, after = run(loop, main(), timeout=2 * CHILD_TIMEOUT)
    assert code == 0
    assert before == child == after == EXPECTED


def test_fork_between_runs(loop, loop_factory):
    assert run(loop, workload(loop, threads=False)) == EXPECTED
    pid, r = fork_child(loop_factory, workload)
    code = run(loop, reap(pid), timeout=2 * CHILD_TIMEOUT)
    assert code == 0
    assert read_report(r) == EXPECTED
    assert run(loop, workload(loop)) == EXPECTED


def test_parent_watchers_survive_the_child(loop, loop_factory):
    """A reader and a server registered before the fork still work in the parent after the
    child ran its own loop and exited (the child inherited the fds, not the registrations)."""

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        got = loop.create_future()
        loop.add_reader(a.fileno(), lambda: got.done() or got.set_result(a.recv(100)))
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            pid, r = fork_child(loop_factory, workload)
            assert await reap(pid) == 0
            assert read_report(r) == EXPECTED
            b.send(b"after the child")
            assert await asyncio.wait_for(got, 5) == b"after the child"
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"still serving\n")
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            await writer.wait_closed()
            return line
        finally:
            loop.remove_reader(a.fileno())
            a.close()
            b.close()
            server.close()
            await server.wait_closed()

    assert run(loop, main(), timeout=2 * CHILD_TIMEOUT) == b"still serving\n"


def test_forked_child_runs_subprocesses(loop, loop_factory):
    async def main():
        before = await subprocess_workload(loop)
        pid, r = fork_child(loop_factory, subprocess_workload)
        code = await reap(pid)
        child = read_report(r)
        after = await subprocess_workload(loop)
        return before, code, child, after

    before, code, child, after = run(loop, main(), timeout=2 * CHILD_TIMEOUT)
    assert code == 0
    assert before == child == after == SUBPROCESS_EXPECTED


def multiprocessing_child(kind, conn):
    """Target of a multiprocessing.Process (fork start method)."""
    if kind == "ferroloop":
        import ferroloop

        factory = ferroloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    try:
        conn.send({"result": run_fresh_loop(factory, workload)})
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send({"error": traceback.format_exc()})
        raise
    finally:
        conn.close()


@pytest.mark.skipif(sys.platform != "linux", reason="the fork start method is POSIX-only")
def test_multiprocessing_fork_child_runs_a_loop(loop, loop_factory):
    kind = "ferroloop" if loop_factory is not asyncio.new_event_loop else "asyncio"
    ctx = multiprocessing.get_context("fork")

    async def main():
        await workload(loop, threads=False)
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        process = ctx.Process(target=multiprocessing_child, args=(kind, child_conn))
        wait_single_threaded()
        process.start()
        child_conn.close()
        deadline = loop.time() + CHILD_TIMEOUT
        while process.is_alive():
            if loop.time() > deadline:
                process.kill()
                process.join()
                raise AssertionError("the multiprocessing child did not finish in time")
            await asyncio.sleep(0.01)
        process.join()
        report = parent_conn.recv() if parent_conn.poll() else {"error": "no report"}
        parent_conn.close()
        after = await workload(loop)
        return process.exitcode, report, after

    exitcode, report, after = run(loop, main(), timeout=2 * CHILD_TIMEOUT)
    assert "error" not in report, report["error"]
    assert exitcode == 0
    assert report["result"] == EXPECTED
    assert after == EXPECTED
