"""Every example behaves the same on ferroloop (``python -m ferroloop X.py``) as on the stdlib.

All the programs are started at once by one module-scoped fixture, so this file takes about
as long as the slowest example rather than the sum of them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = sorted(path.name for path in EXAMPLES_DIR.glob("*.py"))
TIMEOUT = 60

# Printed by a probe program: the module of the loop each way of getting one produces.
LOOP_PROBE = """\
import asyncio

async def running_loop_module():
    return type(asyncio.get_running_loop()).__module__

loop = asyncio.get_event_loop()
print("get_event_loop", loop.run_until_complete(running_loop_module()))
loop.close()
print("asyncio.run", asyncio.run(running_loop_module()))
loop = asyncio.new_event_loop()
print("new_event_loop", type(loop).__module__)
loop.close()
"""


def _command(script: Path, on_ferroloop: bool) -> list[str]:
    if on_ferroloop:
        return [sys.executable, "-m", "ferroloop", str(script)]
    return [sys.executable, str(script)]


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], subprocess.Popen]:
    """Start every example (and the loop probe) on both loops; key: (name, on_ferroloop)."""
    probe = tmp_path_factory.mktemp("probe") / "loop_probe.py"
    probe.write_text(LOOP_PROBE)
    scripts = {name: EXAMPLES_DIR / name for name in EXAMPLES} | {"loop_probe": probe}
    processes = {
        (name, on_ferroloop): subprocess.Popen(
            _command(script, on_ferroloop),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, script in scripts.items()
        for on_ferroloop in (False, True)
    }
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, out, err


def _normalise(text: str) -> str:
    """Blank out what legitimately differs between two runs: clock times and addresses."""
    text = re.sub(r"\b\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\b", "<ctime>", text)
    return re.sub(r"\b0x[0-9a-fA-F]+\b", "0x<address>", text)


# Examples whose two tasks print at (nearly) the same instant: which prints first is up to
# the scheduler on any loop, so only each task's own order is compared there.
RACY_INTERLEAVING = {
    # print_numbers' 8th tick (8 x 0.25 s) and the value fetched after sleep(2) come due
    # within milliseconds of each other; a loaded machine flips them on either loop.
    "task_return_value.py": lambda line: line.isdigit(),
}


def _per_task(text: str, is_first_task) -> tuple[list[str], list[str], list[str]]:
    lines = text.splitlines()
    return (
        sorted(lines),
        [line for line in lines if is_first_task(line)],
        [line for line in lines if not is_first_task(line)],
    )


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_the_same_on_ferroloop(started: dict, name: str) -> None:
    stdlib_status, stdlib_out, stdlib_err = _finish(started[name, False])
    status, out, err = _finish(started[name, True])
    assert stdlib_status == 0, f"{name} fails on the stdlib loop:\n{stdlib_err}"
    assert stdlib_out, f"{name} prints nothing; nothing to compare"
    assert status == stdlib_status, err
    split = RACY_INTERLEAVING.get(name)
    if split is None:
        assert _normalise(out) == _normalise(stdlib_out), err
    else:
        assert _per_task(_normalise(out), split) == _per_task(_normalise(stdlib_out), split), err
    # Warnings, "Task was destroyed", "Exception ignored in": the same ones, or none.
    assert _normalise(err) == _normalise(stdlib_err)


def test_ferroloop_runs_use_a_ferroloop_loop(started: dict) -> None:
    stdlib_status, stdlib_out, stdlib_err = _finish(started["loop_probe", False])
    status, out, err = _finish(started["loop_probe", True])
    assert (stdlib_status, status) == (0, 0), stdlib_err + err
    stdlib_modules = dict(line.split() for line in stdlib_out.splitlines())
    modules = dict(line.split() for line in out.splitlines())
    ways = {"get_event_loop", "asyncio.run", "new_event_loop"}
    assert set(stdlib_modules) == set(modules) == ways
    # The probe tells the loops apart: the plain run is on asyncio's own loop...
    assert all(module.startswith("asyncio.") for module in stdlib_modules.values()), stdlib_out
    # ...and under `python -m ferroloop` every way of getting a loop gives ferroloop's.
    assert all(module.startswith("ferroloop") for module in modules.values()), out


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES_DIR / "README.md").read_text()
    assert EXAMPLES, "no examples found"
    assert [name for name in EXAMPLES if f"`{name}`" not in readme] == []


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_has_a_docstring(name: str) -> None:
    source = (EXAMPLES_DIR / name).read_text()
    assert source.startswith('"""'), f"{name} should open with a docstring naming its seed"
