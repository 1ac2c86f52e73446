"""add_reader / add_writer / remove_*: readiness callbacks on file descriptors."""

import asyncio
import os
import resource
import socket

import pytest


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def run_iterations(loop, count):
    """Run exactly `count` iterations: after stop(), run_forever polls without blocking."""
    for _ in range(count):
        loop.stop()
        loop.run_forever()


@pytest.mark.parametrize("as_fd", [False, True], ids=["socket", "fd"])
def test_reader_is_called_with_its_args_when_data_arrives(loop, pair, as_fd):
    a, b = pair
    received = []

    def on_readable(tag):
        received.append((tag, a.recv(100)))
        loop.stop()

    loop.add_reader(a.fileno() if as_fd else a, on_readable, "tag")
    b.send(b"hello")
    loop.run_forever()
    assert received == [("tag", b"hello")]
    assert loop.remove_reader(a.fileno() if as_fd else a) is True


@pytest.mark.parametrize("as_fd", [False, True], ids=["socket", "fd"])
def test_writer_is_called_when_writable(loop, pair, as_fd):
    a, b = pair
    calls = []

    def on_writable(tag):
        calls.append(tag)
        assert loop.remove_writer(a.fileno() if as_fd else a) is True
        loop.stop()

    loop.add_writer(a.fileno() if as_fd else a, on_writable, "w")
    loop.run_forever()
    assert calls == ["w"]


def test_add_reader_returns_none(loop, pair):
    a, _ = pair
    assert loop.add_reader(a, print) is None
    assert loop.add_writer(a, print) is None
    loop.remove_reader(a)
    loop.remove_writer(a)


def test_remove_returns_whether_a_callback_was_registered(loop, pair):
    a, _ = pair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False
    loop.add_reader(a, print)
    assert loop.remove_writer(a) is False  # only a reader is registered
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False
    loop.add_writer(a.fileno(), print)
    assert loop.remove_writer(a) is True  # the socket and its fd are the same registration
    assert loop.remove_writer(a.fileno()) is False


def test_reader_is_level_triggered_while_data_remains(loop, pair):
    a, b = pair
    chunks = []

    def read_one_byte():
        chunks.append(a.recv(1))

    loop.add_reader(a, read_one_byte)
    b.send(b"abc")
    run_iterations(loop, 5)
    # One byte per iteration while unread data remains, and no call once none is left.
    assert chunks == [b"a", b"b", b"c"]
    loop.remove_reader(a)


def test_reader_that_reads_nothing_keeps_being_called(loop, pair):
    a, b = pair
    calls = [0]

    def ignore():
        calls[0] += 1
        if calls[0] == 5:
            loop.stop()

    guard = loop.call_later(2, loop.stop)
    loop.add_reader(a, ignore)
    b.send(b"x")
    loop.run_forever()
    guard.cancel()
    assert calls[0] == 5
    loop.remove_reader(a)


def test_reader_and_writer_on_the_same_fd(loop, pair):
    a, b = pair
    events = []

    def on_readable():
        events.append(("read", a.recv(100)))
        loop.remove_reader(a)

    def on_writable():
        events.append(("write", None))
        loop.remove_writer(a)

    loop.add_reader(a, on_readable)
    loop.add_writer(a, on_writable)
    b.send(b"data")
    run_iterations(loop, 5)
    assert sorted(events) == [("read", b"data"), ("write", None)]


def test_removing_the_reader_keeps_the_writer(loop, pair):
    a, _ = pair
    writes = [0]
    reads = [0]

    def on_writable():
        writes[0] += 1
        if writes[0] == 3:
            loop.remove_writer(a)

    loop.add_reader(a, lambda: reads.__setitem__(0, reads[0] + 1))
    loop.add_writer(a, on_writable)
    assert loop.remove_reader(a) is True
    run_iterations(loop, 5)
    assert writes == [3]
    assert reads == [0]


def test_add_reader_again_replaces_the_callback(loop, pair):
    a, b = pair
    calls = []

    def reader(tag):
        calls.append(tag)
        a.recv(100)
        loop.stop()

    loop.add_reader(a, reader, "first")
    loop.add_reader(a.fileno(), reader, "second")
    b.send(b"x")
    loop.run_forever()
    assert calls == ["second"]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_reader_removed_by_its_own_callback_is_not_called_again(loop, pair):
    a, b = pair
    calls = []

    def reader():
        calls.append("read")
        loop.remove_reader(a)

    loop.add_reader(a, reader)
    b.send(b"unread data")
    run_iterations(loop, 5)
    assert calls == ["read"]


def test_failing_reader_goes_to_the_exception_handler(loop, pair):
    a, b = pair
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def reader():
        a.recv(100)
        loop.remove_reader(a)
        raise ValueError("reader failed")

    loop.add_reader(a, reader)
    b.send(b"x")
    run_iterations(loop, 5)
    assert len(contexts) == 1
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert isinstance(contexts[0]["exception"], ValueError)


def test_remove_reader_after_the_fd_was_closed(loop):
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, print)
    a.close()
    try:
        assert loop.remove_reader(fd) is True
    finally:
        b.close()


def unused_fd():
    fd = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1
    with pytest.raises(OSError):
        os.fstat(fd)
    return fd


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_on_a_closed_fd(assert_same_error, method):
    fd = unused_fd()
    exc = assert_same_error(lambda lp: getattr(lp, method)(fd, print))
    assert isinstance(exc, OSError)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_on_a_closed_socket(assert_same_error, method):
    sock = socket.socket()
    sock.close()
    exc = assert_same_error(lambda lp: getattr(lp, method)(sock, print))
    assert isinstance(exc, ValueError)


@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
@pytest.mark.parametrize("bad", [object(), -1, "3"], ids=["object", "negative", "str"])
def test_bad_file_objects(assert_same_error, method, bad):
    def action(lp):
        if method.startswith("add"):
            getattr(lp, method)(bad, print)
        else:
            getattr(lp, method)(bad)

    exc = assert_same_error(action)
    assert isinstance(exc, ValueError)


class FilenoReturns:
    def __init__(self, value):
        self.value = value

    def fileno(self):
        return self.value

    def __repr__(self):
        return f"FilenoReturns({self.value!r})"


def watch_outcome(loop, method, fileobj):
    try:
        if method.startswith("add"):
            return ("returned", getattr(loop, method)(fileobj, print))
        return ("returned", getattr(loop, method)(fileobj))
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return (type(exc), str(exc))


@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
@pytest.mark.parametrize(
    "fileobj",
    [
        2**31,
        2**32,
        2**70,
        -(2**70),
        FilenoReturns(2**70),
        FilenoReturns(-(2**40)),
        FilenoReturns(2.5),
        FilenoReturns("x"),
        FilenoReturns(None),
    ],
    ids=repr,
)
@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
def test_numbers_no_selector_can_hold_as_on_the_stdlib_loop(loop_factory, method, fileobj, closed):
    # selectors checks only the sign; a number beyond a C int overflows when registered
    # and is simply not found when removed.
    outcomes = []
    for factory in (loop_factory, asyncio.SelectorEventLoop):
        lp = factory()
        if closed:
            lp.close()
        try:
            outcomes.append(watch_outcome(lp, method, fileobj))
        finally:
            lp.close()
    assert outcomes[0] == outcomes[1]


def test_a_fileno_that_int_accepts_is_watched(loop, pair):
    a, b = pair
    got = []
    # int() turns the float into a's fd, as selectors does.
    loop.add_reader(FilenoReturns(float(a.fileno())), got.append, "ready")
    b.send(b"x")
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert got and got[0] == "ready"
    assert loop.remove_reader(a.fileno()) is True


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def test_closing_the_loop_leaks_no_fd(loop_factory, pair):
    a, b = pair
    loop_factory().close()  # first use may set up process-wide state
    before = open_fds()
    loop = loop_factory()
    loop.add_reader(a, lambda: a.recv(100))
    loop.add_writer(b, lambda: loop.remove_writer(b))
    loop.call_soon_threadsafe(loop.stop)
    b.send(b"x")
    loop.run_forever()
    loop.run_until_complete(loop.run_in_executor(None, sum, [1, 2]))
    loop.close()
    assert open_fds() == before


def test_closing_the_loop_leaves_user_sockets_open(loop, pair):
    a, b = pair
    loop.add_reader(a, print)
    loop.add_writer(b, print)
    loop.close()
    b.send(b"still open")
    assert a.recv(100) == b"still open"


def test_one_iteration_runs_ready_then_io_then_due_timer_callbacks(loop, pair):
    a, b = pair
    calls = []
    loop.call_later(-1, calls.append, "due timer")
    loop.add_reader(a, lambda: calls.append(("io", a.recv(100))))
    loop.call_soon(calls.append, "ready")
    b.send(b"x")
    loop.stop()
    loop.run_forever()
    assert calls == ["ready", ("io", b"x"), "due timer"]
    loop.remove_reader(a)


def test_reader_is_called_when_the_peer_closes(loop, pair):
    a, b = pair
    received = []

    def on_readable():
        received.append(a.recv(100))
        loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.close()
    run_iterations(loop, 5)
    assert received == [b""]


def test_writer_is_called_when_the_peer_is_gone(loop, pair):
    a, b = pair
    calls = []

    def on_writable():
        calls.append("writable")
        loop.remove_writer(a)

    b.close()
    loop.add_writer(a, on_writable)
    run_iterations(loop, 5)
    assert calls == ["writable"]


def test_reader_and_writer_on_pipes(loop):
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    events = []

    def on_readable():
        data = os.read(read_end, 100)
        events.append(("read", data))
        if not data:
            loop.remove_reader(read_end)

    def on_writable():
        os.write(write_end, b"through a pipe")
        os.close(write_end)
        events.append(("wrote", None))
        loop.remove_writer(write_end)

    try:
        loop.add_reader(read_end, on_readable)
        loop.add_writer(write_end, on_writable)
        run_iterations(loop, 5)
    finally:
        os.close(read_end)
    assert events == [("wrote", None), ("read", b"through a pipe"), ("read", b"")]


def test_add_reader_on_a_regular_file(assert_same_error, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        exc = assert_same_error(lambda lp: lp.add_reader(f.fileno(), print))
    assert isinstance(exc, OSError)


def test_many_fds_ready_in_one_poll_all_get_their_callback(loop):
    pairs = [socket.socketpair() for _ in range(300)]
    received = []

    def reader(index, sock):
        received.append((index, sock.recv(100)))
        loop.remove_reader(sock)

    try:
        for index, (a, b) in enumerate(pairs):
            loop.add_reader(a, reader, index, a)
            b.send(b"%d" % index)
        run_iterations(loop, 3)
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    assert sorted(received) == [(i, b"%d" % i) for i in range(300)]


def test_reader_removed_by_another_reader_in_the_same_iteration_does_not_run(loop):
    (a1, b1), (a2, b2) = socket.socketpair(), socket.socketpair()
    calls = []

    def reader(name, other):
        calls.append(name)
        loop.remove_reader(other)

    try:
        loop.add_reader(a1, reader, "first", a2)
        loop.add_reader(a2, reader, "second", a1)
        b1.send(b"x")
        b2.send(b"x")
        # Both fds are ready in the same poll: whichever runs first removes the other.
        loop.stop()
        loop.run_forever()
    finally:
        for sock in (a1, b1, a2, b2):
            sock.close()
    assert len(calls) == 1
