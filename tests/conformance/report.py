"""Scoring and the human-readable report.

Which tests count ("scored"): a test of a class made for the loop under test (``adapters.py``),
or one that built at least one loop under test, or one that failed on it. A test that passed
without ever building a loop under test (CPython's mock ``TestLoop``, a Future tested on its
own) says nothing about the loop and is listed as loop-independent.

Tests that fail on the stdlib loop too are set apart, not counted against ferroloop.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

from .exclusions import KNOWN_DIFFERENCES

BAD = ("fail", "error")
_TRANSPORT_MODULES = frozenset(
    {
        "test_sock_lowlevel",
        "test_sendfile",
        "test_server",
        "test_ssl",
        "test_sslproto",
        "test_streams",
        "test_subprocess",
        "test_buffered_proto",
    }
)
_TRANSPORT_WORDS = re.compile(
    r"connection|server|sock|datagram|pipe|subprocess|ssl|tls|sendfile|unix|stream|tcp|udp|"
    r"transport|proto|accept|getaddrinfo|getnameinfo|pty|_ipv6|bluetooth|reuse"
)
# Core areas, first match wins; matched against the test's class and method name.
_AREAS = [
    ("policy", re.compile(r"polic|get_event_loop|child_watcher")),
    ("signals", re.compile(r"signal|sigint|keyboard_?interrupt")),
    ("executors", re.compile(r"executor|to_thread|run_in|threadsafe|thread")),
    ("add_reader", re.compile(r"reader|writer|_fd|fds")),
    ("debug", re.compile(r"debug|slow|source_traceback|check_thread")),
    ("exception handler", re.compile(r"exc_handler|exception_handler|exc|unhandled|log")),
    ("timers", re.compile(r"call_later|call_at|timer|sleep|time|timeout|wait_for|waitfor")),
    (
        "callbacks",
        re.compile(
            r"call_soon|handle|callback|run_once|stop|close|run_forever|"
            r"run_until|context"
        ),
    ),
]


def area(test_id: str, record: dict | None = None) -> str:
    """The loop area a test exercises: a core area or 'transports (not built yet)'."""
    module, _, rest = test_id.partition(".")
    name = rest.lower()
    error = (record or {}).get("error") or {}
    not_built = error.get("type") == "NotImplementedError" and _TRANSPORT_WORDS.search(
        error.get("where", "")
    )
    if module in _TRANSPORT_MODULES or _TRANSPORT_WORDS.search(name) or not_built:
        return "transports (not built yet)"
    for label, pattern in _AREAS:
        if pattern.search(name):
            return label
    return "tasks"


def _normalize(text: str) -> str:
    text = re.sub(r" at /\S+:\d+", "", text)
    text = re.sub(r"<(\w+) [^<>]{24,}>", r"<\1 …>", text)
    text = re.sub(r"0x[0-9a-fA-F]+", "0x…", text)
    text = re.sub(r"\b\d+(?:\.\d+)? s\b", "N s", text)
    text = re.sub(r"\d+\.\d+", "N.N", text)
    text = re.sub(r"(?<![\w.])\d{2,}(?!\w)", "N", text)
    text = re.sub(r"'/[^']*'|\"/[^\"]*\"", "'…'", text)
    return text[:160]


def cause(record: dict, test_id: str | None = None) -> str:
    """A failure's group key: exception type and the first line of its message."""
    known = KNOWN_DIFFERENCES.get(test_id or "")
    if known:
        return f"known difference (docs/compatibility.md: {known})"
    error = record.get("error") or {}
    kind = error.get("type", "?")
    message = _normalize(error.get("message", ""))
    if not message and error.get("where"):
        message = f"(raised in {error['where']})"
    return f"{kind}: {message}" if message else kind


def _scored_ids(tests: dict[str, dict]) -> set[str]:
    return {
        t
        for t, r in tests.items()
        if r.get("lut_class") or (r.get("loops") or {}).get("lut") or r.get("outcome") in BAD
    }


def _counts(tests: dict[str, dict], ids) -> Counter:
    c = Counter()
    for t in ids:
        c[tests[t]["outcome"] if t in tests else "not run"] += 1
    return c


_NOT_RUN = {
    "outcome": "not run",
    "error": {"type": "NotRun", "message": "its module did not run on the loop under test"},
}


def _outcome(tests: dict[str, dict], test_id: str) -> str:
    return tests[test_id]["outcome"] if test_id in tests else "not run"


def summarize(data: dict) -> dict:
    loops = data["loops"]
    main = "ferroloop" if "ferroloop" in loops else next(iter(loops))
    lut = loops[main]["tests"]
    std = loops["asyncio"]["tests"] if "asyncio" in loops and main != "asyncio" else None
    scored = _scored_ids(lut)
    independent = set(lut) - scored
    if std is not None:
        # A test that ran on the stdlib loop only (its module did not run on the loop under
        # test) still counts, as an error.
        excluded = loops[main]["excluded"]
        scored |= {t for t in _scored_ids(std) if t not in lut and t not in excluded}
    bad_here = {t for t in scored if _outcome(lut, t) in (*BAD, "not run")}
    std_bad = {t for t in scored if std is not None and _outcome(std, t) in BAD}
    counted = scored - std_bad
    c = _counts(lut, counted)
    aborted = [
        (loop, m, info["abort"])
        for loop, d in loops.items()
        for m, info in d["modules"].items()
        if info.get("abort")
    ]
    score = {
        "python": data["python"],
        "loop": main,
        "date": data["date"],
        "passed": c["pass"],
        "failed": c["fail"],
        "errors": c["error"] + c["not run"],
        "not_run": c["not run"],
        "skipped": c["skip"],
        "total": len(counted),
        "loop_independent": len(independent),
        "excluded": len(loops[main]["excluded"]),
        "modules_not_run": sorted({m for loop, m, _ in aborted if loop == main}),
    }
    if std is not None:
        s = _counts(std, counted)
        score["stdlib"] = {
            "passed": s["pass"],
            "skipped": s["skip"],
            "not_run": s["not run"],
            "failing_on_stdlib_too": len(std_bad & bad_here),
            "failing_on_stdlib_only": len(std_bad - bad_here),
        }
    regressions = sorted(
        t for t in counted if t in bad_here and (std is None or _outcome(std, t) == "pass")
    )
    skipped_only_here = sorted(
        t
        for t in counted
        if _outcome(lut, t) == "skip" and std is not None and _outcome(std, t) == "pass"
    )
    return {
        "main": main,
        "score": score,
        "regressions": regressions,
        "skipped_only_here": skipped_only_here,
        "std_bad": sorted(std_bad),
        "aborted": aborted,
        "ok": not regressions and not aborted and score["failed"] + score["errors"] == 0,
    }


def module_line(run, index: int, total: int) -> str:
    c = Counter(r.get("outcome", "not run") for r in run.tests.values())
    extra = f", {run.restarts} restarts" if run.restarts else ""
    if run.abort:
        extra += f", ABORTED: {run.abort['type']}: {run.abort['message'][:80]}"
    if run.skipped_module:
        extra += f", module skipped: {run.skipped_module[:60]}"
    return (
        f"[{index:2}/{total}] {run.loop:9} {run.module:24} {len(run.tests):4} tests: "
        f"{c['pass']} passed, {c['fail']} failed, {c['error']} errors, {c['skip']} skipped "
        f"({run.seconds:.1f} s{extra})"
    )


def _score_line(score: dict) -> str:
    py = ".".join(score["python"].split(".")[:2])
    line = (
        ("INCOMPLETE: " if score["modules_not_run"] else "")
        + f"conformance {py}: {score['passed']} passed, {score['failed']} failed, "
        f"{score['errors']} errors, {score['skipped']} skipped of {score['total']}"
    )
    std = score.get("stdlib")
    if std:
        line += (
            f" (stdlib: {std['passed']} passed, {std['skipped']} skipped"
            + (f", {std['not_run']} not run" if std["not_run"] else "")
            + f"; {std['failing_on_stdlib_too'] + std['failing_on_stdlib_only']} "
            f"failing on stdlib not counted)"
        )
    else:
        line += " (stdlib: not run)"
    if score["loop"] != "ferroloop":
        line += f" [loop under test: {score['loop']}]"
    if score["modules_not_run"]:
        line += f" [{len(score['modules_not_run'])} modules did not run; see above]"
    return line


def print_report(data: dict, summary: dict, *, compare: str = "full") -> None:
    loops = data["loops"]
    main = summary["main"]
    lut = loops[main]["tests"]
    std = loops.get("asyncio", {}).get("tests") if main != "asyncio" else None
    out = print

    if summary["aborted"]:
        out("\n== modules that did not run")
        for loop, module, err in summary["aborted"]:
            out(f"  {loop} {module}: {err['type']}: {err['message'][:200]}")

    regressions = summary["regressions"]
    if regressions and compare != "none":
        title = ("passing on the stdlib loop, failing on " + main) if std else f"failing on {main}"
        out(f"\n== {len(regressions)} tests {title}, by cause")
        by_cause = defaultdict(list)
        for t in regressions:
            by_cause[cause(lut.get(t, _NOT_RUN), t)].append(t)
        limit = 8 if compare == "full" else 3
        for key, ids in sorted(by_cause.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            out(f"\n  [{len(ids)}] {key}")
            for t in ids[:limit]:
                out(f"        {t}")
            if len(ids) > limit:
                out(f"        ... and {len(ids) - limit} more")

        out(f"\n== the same {len(regressions)}, by module and area")
        by_module = defaultdict(Counter)
        for t in regressions:
            by_module[t.split(".")[0]][area(t, lut.get(t, _NOT_RUN))] += 1
        for module, areas in sorted(by_module.items(), key=lambda kv: -sum(kv[1].values())):
            detail = ", ".join(f"{a} {n}" for a, n in areas.most_common())
            out(f"  {module:24} {sum(areas.values()):4}  ({detail})")

    if summary["skipped_only_here"] and compare != "none":
        out(
            f"\n== {len(summary['skipped_only_here'])} tests skipped on {main}, "
            "passing on the stdlib loop, by reason"
        )
        by_reason = defaultdict(list)
        for t in summary["skipped_only_here"]:
            by_reason[_normalize(lut[t].get("reason", ""))].append(t)
        for reason, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            out(f"  [{len(ids)}] {reason}: {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}")

    flaky = sorted(t for t, r in lut.items() if r.get("flaky"))
    if flaky:
        out(
            f"\n== {len(flaky)} tests failed on {main}, then passed on a re-run (counted as passed)"
        )
        for t in flaky[:12]:
            out(f"  {t}: first {cause({'error': lut[t]['flaky']})}")

    if std is not None and summary["std_bad"]:
        both = [t for t in summary["std_bad"] if lut.get(t, {}).get("outcome") in BAD]
        only = [t for t in summary["std_bad"] if t not in both]
        out(
            f"\n== failing on the stdlib loop as well, not counted: {len(both)} "
            f"(+{len(only)} failing on the stdlib only)"
        )
        for t in (both + only)[:12]:
            out(f"  {t}: stdlib {cause(std[t])}")
        if len(both) + len(only) > 12:
            out(f"  ... and {len(both) + len(only) - 12} more (see --json)")

    out("\n== time per module (s)")
    times = Counter()
    for loop, d in loops.items():
        for m, info in d["modules"].items():
            times[(m, loop)] = info["seconds"]
    modules = sorted({m for m, _ in times}, key=lambda m: -sum(times[(m, lp)] for lp in loops))
    header = "  " + " " * 24 + "".join(f"{lp:>11}" for lp in loops)
    out(header)
    for m in modules[:8]:
        out(f"  {m:24}" + "".join(f"{times[(m, lp)]:11.1f}" for lp in loops))
    out(
        f"  wall clock {data['wall_seconds']:.0f} s with {data['jobs']} jobs"
        + (f"; stdlib results from {data['baseline']}" if data.get("baseline") else "")
    )

    for loop, d in loops.items():
        if d.get("loop_class"):
            built = d.get("loops_built") or {}
            out(
                f"  {loop}: {d['loop_class']} from {d.get('loop_file')}; loops built: "
                f"{built.get('lut', 0)} under test, {built.get('other', 0)} other, "
                f"{built.get('mock', 0)} mock TestLoop"
            )

    score = summary["score"]
    out(
        f"\n{score['loop_independent']} loop-independent tests not scored; "
        f"{score['excluded']} excluded (tests/conformance/exclusions.py); "
        f"logs in {data['log_dir']}"
    )
    out(_score_line(score))
