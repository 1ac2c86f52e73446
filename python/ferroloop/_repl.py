"""The asyncio REPL of ``python -m ferroloop`` (no arguments): top-level ``await`` on ferroloop.

The ferroloop loop runs in the main thread, so Ctrl-C and ``loop.add_signal_handler`` behave
as in any asyncio program. The console reads and compiles input in a helper thread and hands
each statement to the loop, then waits for it to finish before prompting again; a statement
that awaits runs as a task, so Ctrl-C can cancel just that statement.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import code
import concurrent.futures
import inspect
import os
import sys
import threading
import types
import warnings

import ferroloop

EXIT_MESSAGE = "exiting ferroloop asyncio REPL..."


class AwaitConsole(code.InteractiveConsole):
    """An interactive console whose statements may ``await``; they run on ``loop``."""

    def __init__(self, namespace: dict, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(namespace, filename="<stdin>")
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.loop = loop
        self.statement: asyncio.Task | None = None  # the awaiting statement, for Ctrl-C
        self.cancelled_by_interrupt = False
        self.exit_status: object = 0

    def runcode(self, code: types.CodeType) -> None:
        """Called in the console thread: run ``code`` on the loop and show its outcome."""
        outcome: concurrent.futures.Future = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self._start, code, outcome)
        exc = outcome.exception()
        if exc is None:
            return
        if isinstance(exc, SystemExit):
            raise exc  # ends interact(); the console thread records the status
        if self.cancelled_by_interrupt:
            self.write("\nKeyboardInterrupt\n")
            return
        self._show(exc)

    def _show(self, exc: BaseException) -> None:
        # Drop the frames of this module so the traceback starts at "<stdin>"; raising here
        # puts runcode's frame first, which showtraceback() skips (it expects exactly that).
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_globals is globals():
            tb = tb.tb_next
        try:
            raise exc.with_traceback(tb)
        except BaseException:
            self.showtraceback()

    def _start(self, code: types.CodeType, outcome: concurrent.futures.Future) -> None:
        """Called on the loop: run the statement; one that awaits continues as a task."""
        self.cancelled_by_interrupt = False
        try:
            result = eval(code, self.locals)
        except BaseException as exc:
            outcome.set_exception(exc)
            return
        if not code.co_flags & inspect.CO_COROUTINE:
            outcome.set_result(None)
            return
        self.statement = self.loop.create_task(result)
        self.statement.add_done_callback(lambda task: self._finish(task, outcome))

    def _finish(self, task: asyncio.Task, outcome: concurrent.futures.Future) -> None:
        self.statement = None
        try:
            task.result()
        except BaseException as exc:
            outcome.set_exception(exc)
        else:
            outcome.set_result(None)

    def interrupt(self) -> None:
        """Ctrl-C reached the loop: cancel the statement being awaited, if any."""
        if self.statement is not None and not self.statement.done():
            self.cancelled_by_interrupt = True
            self.statement.cancel()


def _banner() -> str:
    return (
        f"ferroloop {ferroloop.__version__} asyncio REPL, "
        f"Python {sys.version} on {sys.platform}\n"
        'Use "await" directly instead of "asyncio.run()"; "asyncio" is already imported.\n'
        'Type "help", "copyright", "credits" or "license" for more information.'
    )


def _prepare_interactive(namespace: dict) -> None:
    """What CPython's own REPL does on a terminal: line editing, history, PYTHONSTARTUP."""
    if not sys.stdin.isatty():
        return  # importing readline on a pipe can write terminal escapes to stdout
    try:
        import readline  # noqa: F401  (input() picks it up)
    except ImportError:
        pass
    hook = getattr(sys, "__interactivehook__", None)
    if hook is not None:
        hook()
    startup = os.environ.get("PYTHONSTARTUP")
    if startup and os.path.isfile(startup):
        with open(startup, encoding="utf-8") as f:
            exec(compile(f.read(), startup, "exec"), namespace)


def _console_thread(console: AwaitConsole) -> None:
    try:
        console.interact(banner=_banner(), exitmsg=EXIT_MESSAGE)
    except SystemExit as exc:
        console.exit_status = exc.code
    finally:
        console.loop.call_soon_threadsafe(console.loop.stop)


def _shut_down(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the session left running, then close the loop as asyncio.run would."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


def run_repl() -> object:
    """Run the REPL until EOF or ``exit()``; return the exit status for ``sys.exit``."""
    ferroloop.install()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    # A fresh __main__ module, as in CPython's REPL (pickling, help(), rlcompleter use it).
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, asyncio=asyncio)
    previous_main, sys.modules["__main__"] = sys.modules["__main__"], main
    _prepare_interactive(main.__dict__)

    console = AwaitConsole(main.__dict__, loop)
    # Daemon: if the loop ends first (e.g. SystemExit), a console blocked in input()
    # must not keep the process alive.
    console_thread = threading.Thread(
        target=_console_thread, args=(console,), name="ferroloop REPL", daemon=True
    )
    console_thread.start()
    try:
        while True:
            try:
                loop.run_forever()
            except KeyboardInterrupt:
                console.interrupt()
            else:
                break
    finally:
        # Coroutines the user created but never awaited are not worth a warning at exit.
        warnings.filterwarnings("ignore", r"^coroutine .* was never awaited$", RuntimeWarning)
        _shut_down(loop)
        sys.modules["__main__"] = previous_main
    return console.exit_status
