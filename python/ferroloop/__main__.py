"""``python -m ferroloop``: run an unmodified asyncio program on ferroloop, or open a REPL.

The program runs exactly as ``python script.py`` / ``python -m module`` / ``python -c code``
would run it (same ``sys.argv``, ``sys.path[0]``, ``__main__`` module, exit status and
traceback); the only difference is that the ferroloop event loop policy is installed first,
so every ``asyncio.run``, ``asyncio.new_event_loop`` and ``asyncio.get_event_loop`` in it
uses a ferroloop loop.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import io
import linecache
import os
import runpy
import sys
import types
import zipfile
from collections.abc import Callable
from typing import NoReturn

import ferroloop

USAGE = """\
usage: python -m ferroloop [script.py | -m module | -c code | -] [arg ...]
       python -m ferroloop            (asyncio REPL with top-level await)

Run an asyncio program on the ferroloop event loop, unmodified: every asyncio.run(),
asyncio.new_event_loop() and asyncio.get_event_loop() in it gets a ferroloop loop.

  script.py [arg ...]  run a script as __main__, like `python script.py`
  -m module [arg ...]  run a library module as __main__, like `python -m module`
  -c code [arg ...]    run a program passed as a string, like `python -c code`
  - [arg ...]          run a program read from standard input
  (no arguments)       start an asyncio REPL whose statements may use `await`
  -h, --help           print this help and exit
  --version            print the ferroloop version and exit

Interpreter options go before -m ferroloop: python -X dev -m ferroloop app.py
"""


def main(argv: list[str]) -> None:
    """Dispatch on the first argument; whatever follows the program is its own argv."""
    if not argv:
        from . import _repl

        sys.exit(_repl.run_repl())
    first, rest = argv[0], argv[1:]
    if first in ("-h", "--help"):
        print(USAGE, end="")
    elif first == "--version":
        print(f"ferroloop {ferroloop.__version__}")
    elif first.startswith("-m"):
        module, args = _option_value(first, rest)
        _run_module(module, args)
    elif first.startswith("-c"):
        source, args = _option_value(first, rest)
        _run_source(source, "<string>", ["-c", *args])
    elif first == "-":
        _run_source(sys.stdin.read(), "<stdin>", argv)
    elif first.startswith("-"):
        _usage_error(f"unknown option {first}")
    else:
        _run_script(first, rest)


def _option_value(option: str, rest: list[str]) -> tuple[str, list[str]]:
    """Split ``-m mod`` / ``-mmod`` (and the same for -c) into the value and what follows."""
    if len(option) > 2:
        return option[2:], rest
    if not rest:
        _usage_error(f"Argument expected for the {option} option")
    return rest[0], rest[1:]


def _usage_error(message: str) -> NoReturn:
    print(f"{message}\n{USAGE}", end="", file=sys.stderr)
    sys.exit(2)


def _run_script(path: str, args: list[str]) -> None:
    # Mirror CPython: an unreadable file is exit status 2 before anything runs.
    try:
        if not os.path.isdir(path):
            open(path, "rb").close()
    except OSError as exc:
        print(
            f"{sys.executable}: can't open file {os.path.abspath(path)!r}: "
            f"[Errno {exc.errno}] {exc.strerror}",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.argv = [path, *args]
    if os.path.isdir(path) or zipfile.is_zipfile(path):
        del sys.path[0]  # run_path puts the directory or zip itself first, as CPython does
        _run_program(lambda: runpy.run_path(path, run_name="__main__"))
        return
    # CPython puts the script's real (symlink-resolved) directory first on sys.path.
    sys.path[0] = os.path.dirname(os.path.realpath(path))
    if path.endswith(".pyc"):
        _run_program(lambda: runpy.run_path(path, run_name="__main__"))
        return
    # Source is run by hand, not by runpy.run_path, which would replace sys.argv[0] with
    # the path it is given: CPython keeps argv[0] as typed but gives __main__ (and so
    # tracebacks) the absolute path.
    filename = os.path.abspath(path)
    with io.open_code(filename) as f:
        source = f.read()
    module = _new_main_module()
    module.__file__ = filename
    module.__loader__ = importlib.machinery.SourceFileLoader("__main__", filename)
    module.__cached__ = None
    _run_program(lambda: _exec_as_main(source, filename, module))


def _run_module(name: str, args: list[str]) -> None:
    # sys.path[0] is already the current directory, as for `python -m module`.
    try:
        found = importlib.util.find_spec(name) is not None
    except ImportError:
        found = False
    if not found:
        print(f"{sys.executable}: No module named {name}", file=sys.stderr)
        sys.exit(1)
    sys.argv = [name, *args]  # run_module replaces argv[0] with the module's file
    _run_program(lambda: runpy.run_module(name, run_name="__main__", alter_sys=True))


def _run_source(source: str, filename: str, argv: list[str]) -> None:
    sys.argv = argv
    sys.path[0] = ""  # the current directory, as CPython sets it for -c and stdin
    if filename == "<string>" and sys.version_info >= (3, 13):
        # CPython 3.13+ keeps the -c source so that tracebacks can quote it; do the same.
        lines = [line + "\n" for line in source.splitlines()]
        linecache.cache[filename] = (len(source), None, lines, filename)
    _run_program(lambda: _exec_as_main(source, filename, _new_main_module()))


def _new_main_module() -> types.ModuleType:
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    return module


def _exec_as_main(source: str | bytes, filename: str, module: types.ModuleType) -> None:
    """Run ``source`` as the ``__main__`` module (what pickle, doctest, etc. look up)."""
    previous = sys.modules["__main__"]
    sys.modules["__main__"] = module
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    finally:
        sys.modules["__main__"] = previous


def _run_program(run: Callable[[], object]) -> None:
    """Run the program on ferroloop; let an uncaught exception end the process as in CPython.

    The exception is re-raised so the interpreter itself prints it and picks the exit
    status (1, or death by SIGINT for KeyboardInterrupt); ``sys.excepthook`` is wrapped so
    that the frames of this runner and of runpy above the program are not shown.
    """
    ferroloop.install()
    try:
        run()
    except SystemExit:
        raise
    except BaseException:
        sys.excepthook = _without_runner_frames(sys.excepthook)
        raise


def _without_runner_frames(hook: Callable[..., object]) -> Callable[..., object]:
    def excepthook(exc_type: type, exc: BaseException, tb: types.TracebackType | None) -> None:
        while tb is not None and _is_runner_frame(tb.tb_frame):
            tb = tb.tb_next
        exc.__traceback__ = tb  # 3.12+ prints the exception's own traceback
        hook(exc_type, exc, tb)

    return excepthook


def _is_runner_frame(frame: types.FrameType) -> bool:
    return frame.f_globals is globals() or frame.f_globals.get("__name__") == "runpy"


if __name__ == "__main__":
    main(sys.argv[1:])
