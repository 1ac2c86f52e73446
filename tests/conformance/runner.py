"""``python -m tests.conformance``: CPython's test_asyncio on ferroloop, compared with the stdlib.

Each test module runs in its own worker subprocess (``worker.py``), two at a time by default.
A test that makes no progress for ``--timeout`` seconds is killed and reported as a ``Timeout``
error, with the stack faulthandler dumped; a worker that dies is reported as a ``WorkerCrash``
of the test it was running. Either way the worker restarts on the module's remaining tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import report
from .exclusions import KNOWN_DIFFERENCES
from .exclusions import MODULES as EXCLUDED_MODULES

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "test.test_asyncio"

# Rough stdlib-loop seconds per module, to start the long ones first.
_EXPECTED_SECONDS = {
    "test_tasks": 18,
    "test_subprocess": 14,
    "test_ssl": 11,
    "test_taskgroups": 7,
    "test_events": 5,
    "test_sslproto": 5,
    "test_sock_lowlevel": 2,
    "test_sendfile": 2,
}
_MAX_RESTARTS = 20
_HANGS_BEFORE_SHORT_TIMEOUT = 2


def discover_modules() -> list[str]:
    import test.test_asyncio as package

    names = sorted(p.stem for p in Path(package.__file__).parent.glob("test_*.py"))
    return [n for n in names if n not in EXCLUDED_MODULES]


class ModuleRun:
    """One module on one loop: a worker process, restarted after a hang or a crash."""

    def __init__(
        self,
        loop: str,
        module: str,
        opts: argparse.Namespace,
        log_dir: Path,
        only: list[str] | None = None,
    ):
        self.loop = loop
        self.module = module
        self.opts = opts
        self.only = only
        suffix = "-rerun" if only else ""
        self.log_path = log_dir / f"{loop.replace(':', '_')}-{module}{suffix}.log"
        self.tests: dict[str, dict] = {}
        self.excluded: dict[str, str] = {}
        self.fixtures: list[dict] = []
        self.abort: dict | None = None
        self.skipped_module: str | None = None
        self.loop_class: str | None = None
        self.loop_file: str | None = None
        self.loops_built: dict[str, int] = {}
        self.restarts = 0
        self.seconds = 0.0
        self.hangs = 0
        # After a few hangs in a module (a missing feature tends to hang all its tests), the
        # rest of the module gets the shorter --hang-timeout.
        self.timeout = opts.timeout

    def run(self) -> ModuleRun:
        t0 = time.monotonic()
        deadline = t0 + self.opts.module_timeout
        with open(self.log_path, "wb") as log:
            while True:
                finished = self._run_worker(log, deadline)
                if finished or self.abort:
                    break
                self.restarts += 1
                if self.restarts > _MAX_RESTARTS or time.monotonic() > deadline:
                    self._abort_remaining(
                        f"module stopped after {self.restarts} worker restarts"
                        if self.restarts > _MAX_RESTARTS
                        else f"module exceeded --module-timeout {self.opts.module_timeout:g} s"
                    )
                    break
        self.seconds = time.monotonic() - t0
        return self

    def _command(self, events_fd: int, skip_file: str | None, only_file: str | None) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "tests.conformance.worker",
            "--loop",
            self.loop,
            "--module",
            self.module,
            "--events-fd",
            str(events_fd),
            "--timeout",
            str(self.timeout),
        ]
        for pattern in self.opts.patterns:
            cmd += ["-k", pattern]
        if skip_file:
            cmd += ["--skip-file", skip_file]
        if only_file:
            cmd += ["--only-file", only_file]
        return cmd

    def _run_worker(self, log, deadline: float) -> bool:
        """Run one worker; True when the module finished, False when it must restart."""
        done_ids = [t for t, record in self.tests.items() if record]
        skip_file = _id_file(done_ids) if done_ids else None
        only_file = _id_file(self.only) if self.only else None
        read_fd, write_fd = os.pipe()
        log_offset = log.tell()
        env = dict(os.environ)
        env.pop("PYTHONASYNCIODEBUG", None)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        proc = subprocess.Popen(
            self._command(write_fd, skip_file, only_file),
            pass_fds=[write_fd],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        os.close(write_fd)
        buffer = b""
        current: str | None = None
        last_progress = time.monotonic()
        done = False
        try:
            while True:
                now = time.monotonic()
                limit = min(last_progress + self.timeout, deadline)
                if now >= limit:
                    self._kill(proc)
                    if current is None:
                        self._abort_remaining("worker made no progress while loading")
                        return True
                    self._record_hang(current, log, log_offset)
                    return False
                ready, _, _ = select.select([read_fd], [], [], min(1.0, limit - now))
                if not ready:
                    continue
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    last_progress = time.monotonic()
                    current, done = self._handle(event, current)
            proc.wait()
            if done:
                return True
            if current is None and not self._pending():
                return True
            self._record_crash(current, proc.returncode, log, log_offset)
            return current is None
        finally:
            os.close(read_fd)
            if proc.poll() is None:
                self._kill(proc)
            for path in (skip_file, only_file):
                if path:
                    os.unlink(path)

    def _handle(self, event: dict, current: str | None) -> tuple[str | None, bool]:
        kind = event["ev"]
        if kind == "ready":
            self.loop_class = event.get("loop_class", self.loop_class)
            self.loop_file = event.get("loop_file", self.loop_file)
            self.excluded.update(event.get("excluded", {}))
            self.skipped_module = event.get("skipped_module")
            for test_id in event["tests"]:
                self.tests.setdefault(test_id, {})
        elif kind == "start":
            return event["id"], False
        elif kind == "end":
            record = {k: v for k, v in event.items() if k not in ("ev", "id")}
            self.tests[event["id"]] = record
            return None, False
        elif kind == "fixture":
            self.fixtures.append({k: v for k, v in event.items() if k != "ev"})
        elif kind == "abort":
            self.abort = event["error"]
            return None, True
        elif kind == "done":
            for key, n in event.get("loops", {}).items():
                self.loops_built[key] = self.loops_built.get(key, 0) + n
            self._settle_unstarted()
            return None, True
        return current, False

    def _pending(self) -> list[str]:
        return [t for t, r in self.tests.items() if not r]

    def _settle_unstarted(self) -> None:
        """Tests the worker listed but never started: their class or module fixture failed."""
        errors = [f for f in self.fixtures if "error" in f]
        skips = [f for f in self.fixtures if "skip" in f]
        for test_id in self._pending():
            cls = test_id.rsplit(".", 1)[0]
            err = next((f for f in errors if cls in f["id"] or "Module" in f["id"]), None)
            skip = next((f for f in skips if cls in f["id"] or "Module" in f["id"]), None)
            if err:
                self.tests[test_id] = {"outcome": "error", "error": err["error"], "loops": {}}
            elif skip:
                self.tests[test_id] = {"outcome": "skip", "reason": skip["skip"], "loops": {}}
            else:
                self.tests[test_id] = {
                    "outcome": "error",
                    "loops": {},
                    "error": {
                        "type": "NotRun",
                        "message": "the worker finished without running it",
                        "traceback": "",
                    },
                }

    def _abort_remaining(self, message: str) -> None:
        for test_id in self._pending():
            self.tests[test_id] = {
                "outcome": "error",
                "loops": {},
                "error": {"type": "NotRun", "message": message, "traceback": ""},
            }

    def _log_since(self, log, offset: int) -> str:
        log.flush()
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def _record_hang(self, test_id: str, log, offset: int) -> None:
        dump = _last_faulthandler_dump(self._log_since(log, offset))
        self.tests[test_id] = {
            "outcome": "error",
            "loops": {},
            "time": self.timeout,
            "error": {
                "type": "Timeout",
                "message": f"no progress in {self.timeout:g} s; " + _innermost_frame(dump),
                "traceback": dump[-6000:],
            },
        }
        self.hangs += 1
        if self.hangs >= _HANGS_BEFORE_SHORT_TIMEOUT:
            self.timeout = min(self.timeout, self.opts.hang_timeout)

    def _record_crash(self, test_id: str | None, returncode: int, log, offset: int) -> None:
        how = (
            f"killed by {signal.Signals(-returncode).name}"
            if returncode < 0
            else f"exit status {returncode}"
        )
        tail = self._log_since(log, offset)[-6000:]
        where = _innermost_frame(tail[tail.rfind("Fatal Python error") :]) if returncode < 0 else ""
        message = f"worker {how}" + (f"; {where.replace('hung', 'crashed')}" if where else "")
        error = {"type": "WorkerCrash", "message": message, "traceback": tail}
        if test_id is None:
            self.abort = error
            self._abort_remaining(f"worker {how} between tests")
        else:
            self.tests[test_id] = {"outcome": "error", "loops": {}, "error": error}

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _id_file(ids: list[str]) -> str:
    fd, path = tempfile.mkstemp(prefix="conformance-ids-", text=True)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(ids))
    return path


def _last_faulthandler_dump(text: str) -> str:
    start = text.rfind("Timeout (")
    return text[start:] if start >= 0 else text[-3000:]


_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def _innermost_frame(dump: str) -> str:
    """'hung in func (file:line)' for the main thread's innermost frame.

    When that frame is threading's (joining or waiting for another thread), the first frame
    outside threading.py is added: it says which thread the test was waiting for.
    """
    for block in re.split(r"\n(?=(?:Current )?[Tt]hread 0x)", dump):
        if "tests/conformance/worker.py" in block or "runpy.py" in block:
            frames = _FRAME.findall(block)
            if not frames:
                break
            path, line, func = frames[0]
            text = f"hung in {func} ({Path(path).name}:{line})"
            if Path(path).name == "threading.py":
                caller = next((f for f in frames if Path(f[0]).name != "threading.py"), None)
                if caller:
                    text += f" from {caller[2]} ({Path(caller[0]).name}:{caller[1]})"
            return text
    return "hung"


def run_all(opts: argparse.Namespace, loops: list[str], modules: list[str]) -> dict:
    log_dir = Path(opts.log_dir) if opts.log_dir else Path(tempfile.mkdtemp(prefix="conformance-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(loop, m) for loop in loops for m in modules]
    jobs.sort(key=lambda j: -_EXPECTED_SECONDS.get(j[1], 1))
    results: dict[str, dict[str, ModuleRun]] = {loop: {} for loop in loops}
    lock = threading.Lock()
    count = 0

    def one(job):
        nonlocal count
        loop, module = job
        run = ModuleRun(loop, module, opts, log_dir).run()
        with lock:
            count += 1
            results[loop][module] = run
            if not opts.quiet:
                print(report.module_line(run, count, len(jobs)), flush=True)
        return run

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        list(pool.map(one, jobs))
    wall = time.monotonic() - t0
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": datetime.date.today().isoformat(),
        "wall_seconds": round(wall, 1),
        "jobs": opts.jobs,
        "log_dir": str(log_dir),
        "patterns": opts.patterns,
        "loops": {
            loop: {
                "loop_class": next((r.loop_class for r in runs.values() if r.loop_class), None),
                "loop_file": next((r.loop_file for r in runs.values() if r.loop_file), None),
                "loops_built": {
                    kind: sum(r.loops_built.get(kind, 0) for r in runs.values())
                    for kind in ("lut", "other", "mock")
                },
                "modules": {
                    m: {
                        "seconds": round(r.seconds, 1),
                        "restarts": r.restarts,
                        "abort": r.abort,
                        "skipped_module": r.skipped_module,
                        "fixtures": r.fixtures,
                    }
                    for m, r in sorted(runs.items())
                },
                "tests": {t: rec for r in runs.values() for t, rec in sorted(r.tests.items())},
                "excluded": {t: why for r in runs.values() for t, why in r.excluded.items()},
            }
            for loop, runs in results.items()
        },
    }


# Failures that a second run would only repeat, at a cost (Timeout) or for certain.
_DETERMINISTIC = frozenset({"NotImplementedError", "Timeout", "WorkerCrash", "NotRun"})


def rerun_failures(data: dict, opts: argparse.Namespace) -> None:
    """Run each failed test once more, alone in its module's worker, to tell flaky ones.

    A test that passes the second time counts as passed and is listed as flaky, with its
    first error kept (like regrtest's re-run).
    """
    log_dir = Path(data["log_dir"])
    jobs = []
    for loop, d in data["loops"].items():
        failed = defaultdict(list)
        for test_id, record in d["tests"].items():
            error = record.get("error") or {}
            if record.get("outcome") in ("fail", "error") and error.get("type") not in (
                _DETERMINISTIC
            ):
                failed[test_id.split(".")[0]].append(test_id)
        jobs += [(loop, module, ids) for module, ids in failed.items()]
    if not jobs:
        return

    def one(job):
        loop, module, ids = job
        return loop, ModuleRun(loop, module, opts, log_dir, only=ids).run()

    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        for loop, run in pool.map(one, jobs):
            tests = data["loops"][loop]["tests"]
            for test_id, again in run.tests.items():
                first = tests[test_id]
                if again.get("outcome") in ("pass", "skip"):
                    tests[test_id] = {**again, "flaky": first.get("error")}
                else:
                    first["rerun"] = again.get("outcome")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.conformance",
        description="Run CPython's installed test.test_asyncio on ferroloop and on the stdlib "
        "loop, and report the difference.",
    )
    parser.add_argument(
        "--loop", default="both", help="ferroloop, asyncio, or both (default: both; compare them)"
    )
    parser.add_argument("--json", metavar="FILE", help="write per-test outcomes to FILE")
    parser.add_argument(
        "--baseline",
        metavar="FILE",
        help="stdlib results from an earlier --json run, instead of running --loop asyncio again",
    )
    parser.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only tests whose id (test_events.EventLoopTests.test_x) matches; "
        "substring or glob, as unittest -k; repeatable",
    )
    parser.add_argument(
        "-m",
        "--module",
        dest="modules",
        action="append",
        default=[],
        help="only this module (test_events, ...); repeatable",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a test may run before it is killed (default 20; the "
        "slowest test takes 3 s on the stdlib loop)",
    )
    parser.add_argument(
        "--hang-timeout",
        type=float,
        default=8.0,
        metavar="S",
        help="--timeout for the rest of a module once two of its tests have hung (default 8)",
    )
    parser.add_argument(
        "--module-timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="seconds a module may take in all (default 900)",
    )
    parser.add_argument("-j", "--jobs", type=int, default=2, help="modules run at once (default 2)")
    parser.add_argument("--log-dir", help="keep each worker's output here (default: a temp dir)")
    parser.add_argument(
        "--compare",
        choices=["full", "short", "none"],
        default="full",
        help="how much of the stdlib-passes-ferroloop-fails list to print",
    )
    parser.add_argument(
        "--no-rerun",
        dest="rerun",
        action="store_false",
        help="do not run failed tests a second time to tell flaky ones",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-module lines")
    parser.add_argument(
        "--allow-known-differences",
        action="store_true",
        help="exit 0 when the only failures are the documented differences in "
        "exclusions.KNOWN_DIFFERENCES (CI's regression gate); the score still counts them",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.loop == "both":
        loops = ["ferroloop", "asyncio"]
    else:
        loops = [opts.loop]
    baseline = None
    if opts.baseline:
        baseline = json.loads(Path(opts.baseline).read_text())
        if baseline.get("python") != platform.python_version():
            print(f"warning: baseline is from Python {baseline.get('python')}", file=sys.stderr)
        loops = [loop for loop in loops if loop != "asyncio"]
    modules = discover_modules()
    if opts.modules:
        unknown = set(opts.modules) - set(modules)
        if unknown:
            print(f"unknown or excluded module(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        modules = [m for m in modules if m in opts.modules]
    data = run_all(opts, loops, modules)
    if opts.rerun:
        rerun_failures(data, opts)
    if baseline and "asyncio" in baseline.get("loops", {}):
        data["loops"]["asyncio"] = baseline["loops"]["asyncio"]
        data["baseline"] = opts.baseline
    summary = report.summarize(data)
    data["score"] = summary["score"]
    if opts.json:
        Path(opts.json).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    report.print_report(data, summary, compare=opts.compare)
    if summary["ok"]:
        return 0
    return 0 if opts.allow_known_differences and _only_known_differences(summary) else 1


def _only_known_differences(summary: dict) -> bool:
    regressions = summary["regressions"]
    score = summary["score"]
    return (
        not summary["aborted"]
        and all(test in KNOWN_DIFFERENCES for test in regressions)
        and score["failed"] + score["errors"] <= len(regressions)
    )
