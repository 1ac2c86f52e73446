"""``python -m ferroloop``: programs run exactly as plain ``python`` runs them, on ferroloop;
with no arguments, an asyncio REPL with top-level ``await``.

Most tests run the same program with plain ``python`` and with ``python -m ferroloop`` and
compare; a difference is a ferroloop bug unless it is the loop itself.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TIMEOUT = 60

# Appended to programs: prints which loop asyncio.run() gave them, on stderr so that stdout
# can be compared with plain python's.
REPORT_LOOP = """
import asyncio as _asyncio, sys as _sys
async def _loop_module():
    return type(_asyncio.get_running_loop()).__module__
print("loop:", _asyncio.run(_loop_module()), file=_sys.stderr)
"""


def python(*args: str, cwd: Path | None = None, input: str | None = None):
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def ferroloop(*args: str, cwd: Path | None = None, input: str | None = None):
    return python("-m", "ferroloop", *args, cwd=cwd, input=input)


def loop_module(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if line.startswith("loop: ")]
    return line.removeprefix("loop: ")


def write(path: Path, source: str, report_loop: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source) + (REPORT_LOOP if report_loop else ""))
    return path


# --- scripts ---------------------------------------------------------------------------


def test_script_sees_argv_path_and_main_like_plain_python(tmp_path: Path) -> None:
    write(
        tmp_path / "app" / "show.py",
        """
        import sys
        print(sys.argv)
        print(__name__, __file__, sys.path[0])
        """,
        report_loop=True,
    )
    args = ["app/show.py", "a", "--flag", "b c", "-m"]
    plain, ours = python(*args, cwd=tmp_path), ferroloop(*args, cwd=tmp_path)
    assert (plain.returncode, ours.returncode) == (0, 0), ours.stderr
    assert ours.stdout == plain.stdout
    assert ours.stdout.splitlines()[0] == str(["app/show.py", "a", "--flag", "b c", "-m"])
    script, directory = tmp_path / "app" / "show.py", tmp_path / "app"
    assert ours.stdout.splitlines()[1] == f"__main__ {script} {directory}"
    assert loop_module(plain.stderr).startswith("asyncio.")
    assert loop_module(ours.stderr).startswith("ferroloop")


@pytest.mark.parametrize(
    "body",
    [
        "import sys\nsys.exit(3)\n",
        # SystemExit raised inside a coroutine must come out of asyncio.run() as well.
        "import asyncio, sys\nasync def main():\n    sys.exit(3)\nasyncio.run(main())\n",
    ],
    ids=["sync", "in-coroutine"],
)
def test_exit_status_propagates(tmp_path: Path, body: str) -> None:
    script = write(tmp_path / "leave.py", body)
    assert python(str(script)).returncode == 3
    result = ferroloop(str(script))
    assert result.returncode == 3, result.stderr
    assert result.stderr == ""


def test_uncaught_exception_prints_the_same_traceback_as_python(tmp_path: Path) -> None:
    script = write(
        tmp_path / "fail.py",
        """
        def inner():
            raise ValueError("boom")

        inner()
        """,
    )
    plain, ours = python(str(script)), ferroloop(str(script))
    assert plain.returncode == ours.returncode == 1
    # Not a line of the runner or of runpy: exactly python's own traceback.
    assert ours.stderr == plain.stderr
    assert ours.stderr.startswith("Traceback (most recent call last):\n")


def test_uncaught_exception_in_a_coroutine(tmp_path: Path) -> None:
    script = write(
        tmp_path / "fail_async.py",
        """
        import asyncio

        async def main():
            await asyncio.sleep(0)
            raise ValueError("boom in main")

        asyncio.run(main())
        """,
    )
    result = ferroloop(str(script))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1] == f'  File "{script}", line 8, in <module>'
    assert f'  File "{script}", line 6, in main' in lines
    assert lines[-1] == "ValueError: boom in main"
    assert "runpy" not in result.stderr and "__main__.py" not in result.stderr


def test_uncaught_keyboard_interrupt_ends_like_python(tmp_path: Path) -> None:
    script = write(tmp_path / "interrupted.py", "raise KeyboardInterrupt\n")
    plain, ours = python(str(script)), ferroloop(str(script))
    assert plain.returncode == -signal.SIGINT  # CPython re-kills itself with SIGINT
    assert (ours.returncode, ours.stderr) == (plain.returncode, plain.stderr)


def test_missing_script(tmp_path: Path) -> None:
    result = ferroloop(str(tmp_path / "missing.py"))
    assert result.returncode == 2
    assert "can't open file" in result.stderr and "missing.py" in result.stderr


# --- -m and -c -------------------------------------------------------------------------


def test_module_runs_as_main_like_python_m(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "")
    write(
        tmp_path / "pkg" / "tool.py",
        """
        import sys
        print(__name__, sys.argv, sys.path[0])
        """,
        report_loop=True,
    )
    plain = python("-m", "pkg.tool", "x", "-c", "y", cwd=tmp_path)
    ours = ferroloop("-m", "pkg.tool", "x", "-c", "y", cwd=tmp_path)
    assert (plain.returncode, ours.returncode) == (0, 0), ours.stderr
    assert ours.stdout == plain.stdout
    argv = [str(tmp_path / "pkg" / "tool.py"), "x", "-c", "y"]
    assert ours.stdout == f"__main__ {argv} {tmp_path}\n"
    assert loop_module(ours.stderr).startswith("ferroloop")


def test_missing_module(tmp_path: Path) -> None:
    result = ferroloop("-m", "no_such_module_here", cwd=tmp_path)
    assert result.returncode == 1
    assert "No module named no_such_module_here" in result.stderr


def test_c_runs_code_like_python_c(tmp_path: Path) -> None:
    code = "import sys; print(__name__, sys.argv, repr(sys.path[0]))" + REPORT_LOOP
    plain = python("-c", code, "1", "two", cwd=tmp_path)
    ours = ferroloop("-c", code, "1", "two", cwd=tmp_path)
    assert (plain.returncode, ours.returncode) == (0, 0), ours.stderr
    assert ours.stdout == plain.stdout == "__main__ ['-c', '1', 'two'] ''\n"
    assert loop_module(ours.stderr).startswith("ferroloop")


def test_c_exit_status_and_traceback() -> None:
    assert ferroloop("-c", "raise SystemExit(7)").returncode == 7
    result = ferroloop("-c", "1/0")
    assert result.returncode == 1
    assert result.stderr == python("-c", "1/0").stderr


def test_option_without_its_argument() -> None:
    result = ferroloop("-m")
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_help_and_version() -> None:
    import ferroloop as package

    help_run = ferroloop("--help")
    assert help_run.returncode == 0
    assert help_run.stdout.startswith("usage: python -m ferroloop")
    version_run = ferroloop("--version")
    assert (version_run.returncode, version_run.stdout) == (0, f"ferroloop {package.__version__}\n")


# --- the REPL --------------------------------------------------------------------------


def test_repl_awaits_at_top_level_on_ferroloop() -> None:
    result = ferroloop(
        input=(
            "import asyncio\n"
            "await asyncio.sleep(0.01)\n"
            "print(type(asyncio.get_running_loop()).__module__)\n"
            "await asyncio.sleep(0.01, result=6 * 7)\n"
        )
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.replace(">>> ", "").splitlines()
    assert printed[0].startswith("ferroloop"), result.stdout
    assert printed[1] == "42"
    assert "ferroloop" in result.stderr.splitlines()[0]  # the banner
    assert "Traceback" not in result.stderr


def test_repl_keeps_names_and_runs_on_the_main_thread() -> None:
    result = ferroloop(
        input=(
            "import threading\n"
            "task = asyncio.create_task(asyncio.sleep(0.01, result='done'))\n"
            "await task\n"
            "threading.current_thread() is threading.main_thread()\n"
        )
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.replace(">>> ", "").splitlines() == ["'done'", "True"]


def test_repl_shows_errors_and_goes_on() -> None:
    result = ferroloop(
        input=(
            "async def fail():\n    raise KeyError('inside')\n\nawait fail()\nprint('still here')\n"
        )
    )
    assert result.returncode == 0
    assert "still here" in result.stdout
    # The traceback starts at the user's input, not in the REPL machinery.
    first_frame = 'Traceback (most recent call last):\n  File "<stdin>", line 1, in <module>\n'
    assert first_frame in result.stderr
    assert "KeyError: 'inside'" in result.stderr
    assert "_repl.py" not in result.stderr


def test_repl_exit_status() -> None:
    result = ferroloop(input="raise SystemExit(4)\nprint('not reached')\n")
    assert result.returncode == 4
    assert "not reached" not in result.stdout


def test_repl_ends_cleanly_on_eof() -> None:
    result = ferroloop(input="")
    assert result.returncode == 0
    assert result.stdout.strip() == ">>>"
    assert result.stderr.rstrip().endswith("exiting ferroloop asyncio REPL...")
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


def test_repl_ctrl_c_cancels_the_awaiting_statement() -> None:
    repl = subprocess.Popen(
        [sys.executable, "-m", "ferroloop"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        repl.stdin.write("print('sleeping', flush=True); await asyncio.sleep(30)\n")
        repl.stdin.flush()
        assert repl.stdout.readline().endswith("sleeping\n")
        started = time.monotonic()
        repl.send_signal(signal.SIGINT)  # must wake the loop out of its 30 s poll
        out, err = repl.communicate("print('after')\n", timeout=TIMEOUT)
    finally:
        repl.kill()
        repl.wait()
    assert time.monotonic() - started < 10
    assert repl.returncode == 0, err
    assert "after" in out
    assert "KeyboardInterrupt" in err
