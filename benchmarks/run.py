"""Side-by-side benchmarks: ferroloop against the stdlib loop, uvloop and rloop, in one run.

    python benchmarks/run.py [--quick] [--bench NAME ...] [--loop name=module:factory ...]
                             [--rounds N] [--json FILE]

Every measurement runs in a fresh subprocess (one loop, one benchmark, a warm-up then one
timed run); rounds are interleaved across loops (A B C A B C ...) so drift in the machine's
speed hits every loop alike. Prints a markdown table of throughput: median (min-max) per
loop, and the ratios ferroloop/asyncio and ferroloop/uvloop (above 1: ferroloop is faster).
A benchmark's extra metrics (e.g. server CPU µs per round trip; lower is better) get rows of
their own, whose ratios are inverted (other/ferroloop), so above 1 still means ferroloop wins.
Benchmarks with a native ceiling (a Rust server on mio, same client) also get a "native"
column, and a line under the table says how close ferroloop comes to it.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import dataclasses
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import BENCHMARKS, DEFAULT_LOOPS, Benchmark, LoopSpec, Measurement, Missing
from peers import native_server

HERE = Path(__file__).resolve().parent
INSTALL_HINT = "pip install -r benchmarks/requirements.txt"
WORKER_TIMEOUT = 120  # seconds; a hung loop is reported, not waited on forever
RATIOS = [("ferroloop", "asyncio"), ("ferroloop", "uvloop")]
NATIVE = "native"  # the column (and worker spec) of the native ceiling
# Targets against the native ceiling, shown with the comparison: (benchmark, metric) -> at most
# this many times native's cost.
NATIVE_TARGETS = {("echo_proto_1k", "cpu_us"): 1.1}
NATIVE_UNCOMPARED = {"rss_mib"}  # the interpreter alone is ~26 MiB of a Python server's RSS


def load_benchmarks() -> None:
    for path in sorted(HERE.glob("bench_*.py")):
        importlib.import_module(path.stem)


# ---------------------------------------------------------------- worker (one subprocess)


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)


def loop_version(spec: LoopSpec) -> str:
    if spec.module == "asyncio":
        return f"stdlib {platform.python_version()}"
    import importlib.metadata  # here: every worker pays for the imports at the top

    top = spec.module.partition(".")[0]
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get(top), "__version__", "?"))


def emit_measurement(result: float | Measurement, work: int) -> None:
    if isinstance(result, Measurement):
        ops = work if result.ops is None else result.ops
        emit({"ops": ops, "seconds": result.seconds, "metrics": result.metrics})
    else:
        emit({"ops": work, "seconds": result})


def native_worker(bench: Benchmark, work: int) -> int:
    """Run a benchmark's native ceiling (its own warm-up is the client's)."""
    assert bench.native is not None
    try:
        emit_measurement(bench.native(work), work)
        return 0
    except Exception as exc:
        return emit_failure(exc)


def emit_failure(exc: Exception) -> int:
    """Report a run that raised: a missing tool is a result ("missing"), anything else an
    error (exit status 1)."""
    if isinstance(exc, Missing):
        emit({"missing": str(exc)})
        return 0
    emit({"error": f"{type(exc).__name__}: {exc}"})
    return 1


def compile_package(module: str) -> None:
    """Write the bytecode caches of the package that ``module`` belongs to, if missing or stale.

    Installing a wheel does this; an editable install (and PYTHONDONTWRITEBYTECODE) does not,
    and then every worker would compile the package's sources again on import: time and,
    through the compiler's allocations, ~1.5 MiB of peak RSS that an installed package
    never pays. The stdlib's and site-packages' caches already exist, so this is a no-op there.
    """
    package = sys.modules[module.partition(".")[0]]
    for directory in getattr(package, "__path__", ()):
        compileall.compile_dir(directory, quiet=2)


def worker(spec_text: str, bench_name: str | None, work: int | None) -> int:
    """Probe a loop (no bench_name) or run one benchmark on it; print one JSON line."""
    if spec_text == NATIVE and bench_name:
        bench = BENCHMARKS[bench_name]
        return native_worker(bench, work or bench.work)
    spec = LoopSpec.parse(spec_text)
    try:
        loop = spec.new_loop()
    except ModuleNotFoundError as exc:
        if exc.name == spec.module.partition(".")[0]:
            emit({"missing": f"module {exc.name!r} is not installed"})
            return 0
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    except Exception as exc:
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    asyncio.set_event_loop(loop)
    try:
        if bench_name is None:
            loop.run_until_complete(asyncio.sleep(0))
            compile_package(spec.module)
            emit({"version": loop_version(spec)})
            return 0
        bench = BENCHMARKS[bench_name]
        work = work or bench.work
        if bench.warmup:
            bench.body(loop, max(1, work // 10))  # warm-up: caches, allocator, lazy imports
        emit_measurement(bench.body(loop, work), work)
        return 0
    except NotImplementedError as exc:
        emit({"unsupported": f"NotImplementedError: {exc}".rstrip(": ")})
        return 0
    except Exception as exc:
        return emit_failure(exc)
    finally:
        asyncio.set_event_loop(None)
        if not loop.is_running():
            loop.close()


# ---------------------------------------------------------------- runner


def run_worker(spec: LoopSpec | str, bench_name: str | None = None, work: int = 0) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec)]
    if bench_name:
        cmd += [bench_name, str(work)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKER_TIMEOUT} s"}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = proc.stderr.strip().splitlines()[-1:] or [f"no output, exit code {proc.returncode}"]
        return {"error": f"worker died (exit {proc.returncode}): {tail[0]}"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def summarize(samples: list[float]) -> dict:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": samples,
    }


def cell(entry: dict, stats: dict | None) -> str:
    if entry.get("error"):
        return "error"
    if entry.get("unsupported"):
        return "unsupported"
    if entry.get("missing"):
        return "missing"
    if not stats:
        return "–"
    return f"{si(stats['median'])} ({si(stats['min'])}–{si(stats['max'])})"


def metric_stats(row: dict, loop_name: str, key: str) -> dict | None:
    return row["loops"].get(loop_name, {}).get("metrics", {}).get(key)


def ratio(a: dict | None, b: dict | None, lower_is_better: bool = False) -> str:
    """How many times better a's median is than b's (above 1: a is better)."""
    if not (a and b and a["median"] and b["median"]):
        return "–"
    value = b["median"] / a["median"] if lower_is_better else a["median"] / b["median"]
    return f"{value:.2f}×"


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return (
        f"Python {platform.python_version()} on {platform.system()} {platform.release()}, "
        f"{cpu}, {os.cpu_count()} CPUs"
    )


def markdown(report: dict) -> str:
    names = [name for name, info in report["loops"].items() if "version" in info]
    out = [
        f"{report['machine']}; {report['rounds']} rounds, a fresh process per measurement.",
        "Rates, higher is better; ↳ rows (CPU, memory), lower is better: median (min–max).",
        "Ratio columns: how many times better ferroloop is (above 1: ferroloop is better).",
        "",
        "Loops: "
        + ", ".join(
            f"{name} {info['version']}" if "version" in info else f"{name} ({info['status']})"
            for name, info in report["loops"].items()
        ),
        "",
    ]
    ratio_cols = [(a, b) for a, b in RATIOS if a in names and b in names]
    has_native = any(NATIVE in row["loops"] for row in report["results"])
    columns = [*names, NATIVE] if has_native else names
    header = ["benchmark", "unit", *columns, *(f"{a}/{b}" for a, b in ratio_cols)]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    errors = []
    unsupported = []
    missing_rows: dict[str, None] = {}  # ordered set of "- row: reason"
    for row in report["results"]:
        cells = [row["title"], row["unit"]]
        for name in columns:
            entry = row["loops"].get(name)
            if entry is None:  # no native ceiling for this row
                cells.append("")
                continue
            cells.append(cell(entry, entry.get("stats")))
            if entry.get("error"):
                errors.append(f"- {row['name']} on {name}: {entry['error']}")
            if entry.get("unsupported"):
                unsupported.append(f"- {row['name']} on {name}: {entry['unsupported']}")
            if entry.get("missing"):
                what = "the native column" if name == NATIVE else row["name"]
                missing_rows[f"- {what}: {entry['missing']}"] = None
        for a, b in ratio_cols:
            cells.append(
                ratio(row["loops"].get(a, {}).get("stats"), row["loops"].get(b, {}).get("stats"))
            )
        out.append("| " + " | ".join(cells) + " |")
        for metric in row.get("metrics", []):
            key, lower = metric["key"], metric["lower_is_better"]
            cells = [f"↳ {metric['title']}", metric["unit"]]
            cells += [
                cell(row["loops"][n], metric_stats(row, n, key)) if n in row["loops"] else ""
                for n in columns
            ]
            cells += [
                ratio(metric_stats(row, a, key), metric_stats(row, b, key), lower)
                for a, b in ratio_cols
            ]
            out.append("| " + " | ".join(cells) + " |")
    out += native_summary(report)
    missing = [n for n, info in report["loops"].items() if info.get("status") == "missing"]
    if missing:
        out += ["", f"Missing: {', '.join(missing)} (`{INSTALL_HINT}` installs uvloop and rloop)."]
    if missing_rows:
        out += ["", "Missing (not measured):", *missing_rows]
    broken = [f"- {n}: {i['error']}" for n, i in report["loops"].items() if "error" in i]
    if unsupported:
        out += ["", "Unsupported:", *unsupported]
    if broken or errors:
        out += ["", "Errors:", *broken, *errors]
    return "\n".join(out)


def native_summary(report: dict) -> list[str]:
    """How close ferroloop comes to the native ceiling, row by row: medians, and the best run
    of each (machine noise only ever slows a run down, so best against best is steadier)."""
    lines = []
    for row in report["results"]:
        ours = row["loops"].get("ferroloop", {}).get("stats")
        native = row["loops"].get(NATIVE, {}).get("stats")
        if not (ours and native and native["median"] and native["max"]):
            continue
        rate = ours["median"] / native["median"]
        parts = [
            f"{rate:.0%} of native's {row['unit']} (best runs: {ours['max'] / native['max']:.0%})"
        ]
        for metric in row.get("metrics", []):
            key = metric["key"]
            a, b = metric_stats(row, "ferroloop", key), metric_stats(row, NATIVE, key)
            if key in NATIVE_UNCOMPARED or not (a and b and b["median"] and b["min"]):
                continue
            cost = a["median"] / b["median"]
            text = f"{metric['title']} {cost:.2f}× native's (best runs: {a['min'] / b['min']:.2f}×"
            target = NATIVE_TARGETS.get((row["name"], key))
            if target:
                text += f"; target ≤ {target}×: {'met' if cost <= target else 'not met'}"
            parts.append(text + ")")
        lines.append(f"- {row['title']}: {'; '.join(parts)}")
    if not lines:
        return []
    intro = (
        "Native ceiling (the native column: benchmarks/native_echo, Rust on mio, driven by the "
        "same client), medians; ferroloop reaches:"
    )
    return ["", intro, *lines]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark ferroloop against other asyncio event loops, side by side."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds instead of 7, less work in a few rows (< 3 min)",
    )
    parser.add_argument("--rounds", type=int, help="rounds per benchmark and loop")
    parser.add_argument(
        "--bench",
        action="append",
        metavar="NAME",
        help="run only this benchmark (repeatable); see --list",
    )
    parser.add_argument(
        "--loop",
        action="append",
        default=[],
        metavar="NAME=MODULE:FACTORY",
        type=LoopSpec.parse,
        help="add a loop, or replace a default one of the same name",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser.parse_args(argv)


def probe_native(benches: list[Benchmark]) -> dict | None:
    """Build the native server if a benchmark measures it; None if none does."""
    if not any(bench.native for bench in benches):
        return None
    try:
        binary = native_server()
    except Missing as exc:
        log(f"native: missing ({exc})")
        return {"missing": str(exc)}
    except Exception as exc:
        log(f"native: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}
    log(f"native: {binary}")
    return {"binary": str(binary)}


def measure(
    bench: Benchmark, active: list[LoopSpec], native: dict | None, rounds: int, quick: bool
) -> tuple[dict, bool]:
    """All rounds of one benchmark, interleaved across the loops (and the native ceiling,
    measured last in each round); returns the table row and whether anything failed."""
    work = bench.work_for(quick)
    names: list[str] = [spec.name for spec in active]
    targets: dict[str, LoopSpec | str] = {spec.name: spec for spec in active}
    skipped: dict[str, dict] = {}  # name -> {"error"|"unsupported"|"missing": ...}
    if bench.native and native is not None:
        names.append(NATIVE)
        targets[NATIVE] = NATIVE
        if "binary" not in native:
            skipped[NATIVE] = native  # {"missing": ...} or {"error": ...}
    samples: dict[str, list[float]] = {name: [] for name in names}
    metric_samples = {name: {m.key: [] for m in bench.metrics} for name in names}
    failed = False
    for round_no in range(1, rounds + 1):
        log(f"{bench.name}: round {round_no}/{rounds}")
        for name in names:
            if name in skipped:
                continue
            result = run_worker(targets[name], bench.name, work)
            status = next((k for k in ("error", "unsupported", "missing") if k in result), None)
            if status:
                skipped[name] = {status: result[status]}
                if status != "unsupported":
                    log(f"{bench.name} on {name}: {status}: {result[status]}")
                failed = failed or status == "error"
                continue
            samples[name].append(result["ops"] / result["seconds"] / bench.scale)
            for key, values in metric_samples[name].items():
                values.append(result["metrics"][key])
    loops: dict[str, dict] = {}
    for name in names:
        if name in skipped:
            loops[name] = skipped[name]
            continue
        loops[name] = {"stats": summarize(samples[name])}
        if bench.metrics:
            loops[name]["metrics"] = {
                key: summarize(values) for key, values in metric_samples[name].items()
            }
    row = {
        "name": bench.name,
        "title": bench.title,
        "unit": bench.unit,
        "work": work,
        "metrics": [dataclasses.asdict(m) for m in bench.metrics],
        "loops": loops,
    }
    return row, failed


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        bench_name = argv[2] if len(argv) > 2 else None
        return worker(argv[1], bench_name, int(argv[3]) if len(argv) > 3 else None)
    args = parse_args(argv)
    if args.list:
        for bench in BENCHMARKS.values():
            quick = f", {bench.quick_work:,} with --quick" if bench.quick_work else ""
            work = f"{bench.work:,} {bench.work_unit}".rstrip()
            native = ", + native" if bench.native else ""
            print(f"{bench.name:24} {bench.title} ({bench.unit}, {work} per run{quick}{native})")
        return 0
    unknown = set(args.bench or ()) - BENCHMARKS.keys()
    if unknown:
        log(f"unknown benchmark(s): {', '.join(sorted(unknown))}; see --list")
        return 2
    benches = [b for b in BENCHMARKS.values() if not args.bench or b.name in args.bench]
    rounds = args.rounds or (2 if args.quick else 7)
    specs = {spec.name: spec for spec in DEFAULT_LOOPS}
    specs.update((spec.name, spec) for spec in args.loop)

    started = time.perf_counter()
    report = {"machine": machine_description(), "rounds": rounds, "loops": {}, "results": []}
    for name, spec in specs.items():
        probe = run_worker(spec)
        if "version" in probe:
            info = {"spec": str(spec), "version": probe["version"]}
            log(f"{name}: {probe['version']} ({spec})")
        elif "missing" in probe:
            info = {"spec": str(spec), "status": "missing"}
            hint = f"; install with `{INSTALL_HINT}`" if spec in DEFAULT_LOOPS else ""
            log(f"{name}: missing ({probe['missing']}){hint}")
        else:
            info = {"spec": str(spec), "status": "broken", "error": probe["error"]}
            log(f"{name}: cannot run a loop: {probe['error']}")
        report["loops"][name] = info
    active = [specs[n] for n, info in report["loops"].items() if "version" in info]
    if not active:
        log("no loop could run")
        return 1

    failed = any("error" in info for info in report["loops"].values())
    native = probe_native(benches)
    if native is not None:
        report["native"] = native
    for bench in benches:
        bench_started = time.perf_counter()
        row, bench_failed = measure(bench, active, native, rounds, args.quick)
        report["results"].append(row)
        failed = failed or bench_failed
        log(f"{bench.name}: {time.perf_counter() - bench_started:.1f} s")
    report["seconds"] = round(time.perf_counter() - started, 1)
    log(f"done in {report['seconds']} s")

    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


load_benchmarks()

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
