"""Run one test_asyncio module on one loop; stream one JSON line per event to a file descriptor.

Started by ``runner.py`` as ``python -m tests.conformance.worker``; one process per module, so
a hang or a crash costs that module's remaining tests only (the runner restarts the worker
without the tests already run).

Events: ``ready`` (test ids to run, exclusions), ``start`` / ``end`` per test (outcome, time,
loops built by kind, error), ``fixture`` (a setUpModule/setUpClass error), ``done``.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import fnmatch
import importlib
import json
import os
import sys
import time
import traceback
import unittest

PACKAGE = "test.test_asyncio"


def short_id(test_id: str) -> str:
    return test_id.removeprefix(PACKAGE + ".")


def matches(test_id: str, patterns: list[str]) -> bool:
    """unittest's -k: a glob if it has a ``*``, else a substring; any pattern matches."""
    if not patterns:
        return True
    return any(
        fnmatch.fnmatchcase(test_id, pattern if "*" in pattern else f"*{pattern}*")
        for pattern in patterns
    )


def describe(err: tuple) -> dict:
    """Exception type, first line of its message and a trimmed traceback."""
    exc_type, exc, tb = err
    message = str(exc).strip().splitlines()
    lines = traceback.format_exception(exc_type, exc, tb)
    text = "".join(lines)
    if len(text) > 6000:
        text = text[:1500] + "\n[...]\n" + text[-4500:]
    frames = traceback.extract_tb(tb)
    return {
        "type": f"{exc_type.__module__}.{exc_type.__qualname__}".removeprefix("builtins."),
        "message": message[0][:300] if message else "",
        # The innermost frame: where an empty NotImplementedError() comes from.
        "where": f"{frames[-1].name} ({os.path.basename(frames[-1].filename)})" if frames else "",
        "traceback": text,
    }


class EventResult(unittest.TestResult):
    """Collects each test's outcome and emits it when the test stops."""

    def __init__(self, emit, lut, asyncio_globals, counters, lut_classes, timeout):
        super().__init__()
        self.emit = emit
        self.lut = lut
        self.asyncio_globals = asyncio_globals
        self.counters = counters
        self.lut_classes = lut_classes
        self.timeout = timeout
        self.current = None

    def startTest(self, test):  # noqa: N802
        super().startTest(test)
        # Here rather than in stopTest, which runs inside TestCase.run, where adapters.py's
        # patches are still active.
        restored = self.asyncio_globals.restore()
        self.lut.before_test()
        self.current = {
            "id": short_id(test.id()),
            "outcome": "pass",
            "start": time.monotonic(),
            "loops0": dict(self.counters),
        }
        if restored:
            # Left replaced by the previous test (its setUp failed, so no tearDown ran).
            self.current["restored_before"] = restored
        self.emit({"ev": "start", "id": self.current["id"]})
        # On a hang, dump every thread's stack to stderr just before the runner kills us.
        faulthandler.dump_traceback_later(max(self.timeout - 2, 1), exit=False)

    def _set(self, outcome, err=None, reason=None):
        current = self.current
        if current is None:
            return
        # A failure outranks an error of a later subtest; the first bad outcome wins.
        if current["outcome"] in ("fail", "error"):
            return
        current["outcome"] = outcome
        if err is not None:
            current["error"] = describe(err)
        if reason is not None:
            current["reason"] = str(reason)[:300]

    def addError(self, test, err):  # noqa: N802
        super().addError(test, err)
        if isinstance(test, unittest.suite._ErrorHolder):
            # setUpModule / setUpClass / tearDownClass errors.
            self.emit({"ev": "fixture", "id": test.description, "error": describe(err)})
        else:
            self._set("error", err)

    def addFailure(self, test, err):  # noqa: N802
        super().addFailure(test, err)
        self._set("fail", err)

    def addSubTest(self, test, subtest, err):  # noqa: N802
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._set(kind, err)

    def addSkip(self, test, reason):  # noqa: N802
        super().addSkip(test, reason)
        if isinstance(test, unittest.suite._ErrorHolder):
            # setUpClass / setUpModule raised SkipTest: the class's tests never start.
            self.emit({"ev": "fixture", "id": test.description, "skip": str(reason)[:300]})
        else:
            self._set("skip", reason=reason)

    def addExpectedFailure(self, test, err):  # noqa: N802
        super().addExpectedFailure(test, err)
        self._set("pass")

    def addUnexpectedSuccess(self, test):  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._set("fail")
        self.current["error"] = {"type": "UnexpectedSuccess", "message": "", "traceback": ""}

    def stopTest(self, test):  # noqa: N802
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        current, self.current = self.current, None
        if current is None:
            return
        if asyncio.events._get_running_loop() is not None:
            # A test that fails half-way through a loop's run can leave it registered as
            # the thread's running loop; every later test would then fail to run a loop.
            asyncio.events._set_running_loop(None)
            current["left_running_loop"] = True
        loops0 = current.pop("loops0")
        loops = {k: v - loops0.get(k, 0) for k, v in self.counters.items()}
        current["loops"] = {k: v for k, v in loops.items() if v}
        current["time"] = round(time.monotonic() - current.pop("start"), 3)
        current["lut_class"] = type(test) in self.lut_classes
        self.emit({"ev": "end", **current})


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


def patch_targets(test) -> list[str]:
    """Dotted names a test method is decorated to mock.patch."""
    method = getattr(test, test._testMethodName, None)
    targets = []
    for patcher in getattr(method, "patchings", ()):
        try:
            owner = patcher.getter()
        except Exception:  # noqa: BLE001 - an unresolvable target is simply not matched
            continue
        name = getattr(owner, "__name__", type(owner).__name__)
        targets.append(f"{name}.{patcher.attribute}")
    return targets


def exclusion(test) -> str | None:
    from .exclusions import reason_for, reason_for_patch

    reason = reason_for(short_id(test.id()))
    if reason:
        return reason
    for target in patch_targets(test):
        reason = reason_for_patch(target)
        if reason:
            return reason
    return None


def select(tests, patterns: list[str], skip: set[str]) -> tuple[list, dict[str, str]]:
    """Tests to run, and the excluded ones' reasons, among those matching -k and not skipped."""
    selected, excluded = [], {}
    for test in tests:
        test_id = short_id(test.id())
        if not matches(test_id, patterns) or test_id in skip:
            continue
        reason = exclusion(test)
        if reason:
            excluded[test_id] = reason
        else:
            selected.append(test)
    return selected, excluded


def _read_ids(path: str) -> set[str]:
    with open(path) as f:
        return {line.strip() for line in f if line.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loop", required=True)
    parser.add_argument("--module", required=True)
    parser.add_argument("--events-fd", type=int, required=True)
    parser.add_argument("--skip-file", help="file of test ids (one a line) not to run")
    parser.add_argument("--only-file", help="file of the only test ids (one a line) to run")
    parser.add_argument("-k", dest="patterns", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    events = os.fdopen(args.events_fd, "w", buffering=1)

    def emit(event):
        events.write(json.dumps(event) + "\n")

    skip = _read_ids(args.skip_file) if args.skip_file else set()
    only = _read_ids(args.only_file) if args.only_file else None

    faulthandler.enable()
    from . import adapters, loops

    try:
        lut = loops.resolve(args.loop)
    except Exception:  # noqa: BLE001 - reported to the runner as the module's error
        emit({"ev": "abort", "error": describe(sys.exc_info())})
        return 2
    lut.install()
    problem = lut.check()
    if problem:
        emit(
            {
                "ev": "abort",
                "error": {"type": "LoopUnderTestError", "message": problem, "traceback": ""},
            }
        )
        return 2

    try:
        mod = importlib.import_module(f"{PACKAGE}.{args.module}")
        tests = list(flatten(unittest.defaultTestLoader.loadTestsFromModule(mod)))
        tests, lut_classes = adapters.adapt(args.module, mod, lut, tests)
    except unittest.SkipTest as exc:
        emit({"ev": "ready", "tests": [], "excluded": {}, "skipped_module": str(exc)})
        emit({"ev": "done", "loops": dict(loops.created)})
        return 0
    except Exception:  # noqa: BLE001 - an import error is the module's error
        emit({"ev": "abort", "error": describe(sys.exc_info())})
        return 2

    if only is not None:
        tests = [t for t in tests if short_id(t.id()) in only]
    selected, excluded = select(tests, args.patterns, skip)
    emit(
        {
            "ev": "ready",
            "loop_class": f"{lut.default_class.__module__}.{lut.default_class.__qualname__}",
            "loop_file": getattr(sys.modules.get(lut.default_class.__module__), "__file__", None),
            "tests": [short_id(t.id()) for t in selected],
            "excluded": excluded,
        }
    )
    result = EventResult(
        emit, lut, loops.AsyncioGlobals(), loops.created, lut_classes, args.timeout
    )
    # The suite drops each test once run; no other reference may keep finished tests (and
    # their loops) alive: a bigger heap makes gc-heavy tests (test_task_del_collect) crawl.
    suite = unittest.TestSuite(selected)
    del tests, selected
    suite.run(result)
    emit({"ev": "done", "loops": dict(loops.created)})
    events.flush()
    # Skip interpreter teardown: a wedged non-daemon thread left by a test must not turn a
    # finished module into a timeout.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
