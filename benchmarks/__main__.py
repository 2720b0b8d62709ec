"""``python -m benchmarks [NAMES…] [--smoke] [--out DIR] [--list] [--keep-workdir]
[--budget-scale X]``

Runs each named benchmark (all, in order, when none is named), each with its own fresh
nats-server (and etcd where it needs one and ``etcd`` is on PATH), and writes
``results.json`` and ``results.md`` (plus ``growth.svg`` when the switch ran) to ``--out``:
by default ``benchmarks/results/`` for a full run, a temporary directory for ``--smoke`` (the
checked-in results are never overwritten by a smoke run). Prints the Markdown table.

``--smoke`` runs a tiny version of every benchmark (under a minute in all) and exits 1 unless
each ran and produced sane numbers; ``make bench-smoke`` runs exactly that.

A benchmark is a module with ``async def run(ctx: Context) -> list[Figure]`` (see
``benchmarks.processes``); add a row to ``BENCHMARKS`` to add one. A module not written yet is
reported as such and skipped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from benchmarks import growth, smoke
from benchmarks.processes import Context
from benchmarks.report import (
    RESULTS_DIR,
    Figure,
    Report,
    Stats,
    Target,
    machine_info,
    markdown,
    now_iso,
    stats,
    write_report,
)


@dataclass(frozen=True)
class Entry:
    module: str
    what: str
    budget_s: float  # a full run is cut off after this long (the smoke run after 60 s)
    default: bool = True  # run when no benchmark is named (``make bench``)


BENCHMARKS: dict[str, Entry] = {
    "switch": Entry(
        "benchmarks.switch",
        "switch latency, 10/100/1000 agents, beside its raw baseline (+ growth.svg)",
        480.0,
    ),
    "switch10k": Entry(
        "benchmarks.switch10k",
        "switch latency, 10,000 agents in 20 hosts, beside its raw baseline (named only)",
        1800.0,
        default=False,
    ),
    "signed_switch": Entry(
        "benchmarks.signed_switch",
        "a signed switch of 100 agents beside the same switch unsigned (target ≤ 1.2×)",
        240.0,
    ),
    "variants_switch": Entry(
        "benchmarks.variants_switch",
        "a switch of 100 agents across 4 variants beside one variant (target ≤ 1.2×)",
        240.0,
    ),
    "throughput": Entry(
        "benchmarks.throughput",
        "committed changes/s, 50 namespaces × 10 agents, fsyncs per change",
        150.0,
    ),
    "heartbeat": Entry(
        "benchmarks.heartbeat",
        "CPU per heartbeat: an agent host's per beat sent, the distributor's per beat received",
        300.0,
        default=False,
    ),
    "footprint": Entry(
        "benchmarks.footprint", "RSS per agent process, and per agent when 1000 share", 120.0
    ),
    "startup": Entry(
        "benchmarks.startup",
        "the CLI as CI runs it: `confbus --help`, `confbus publish --wait` to 10 agents",
        180.0,
    ),
    "store": Entry(
        "benchmarks.store", "version-store writes/s and history reads, SQLite and etcd", 180.0
    ),
    "rollout": Entry("benchmarks.rollout", "catch-up of a returning node; wave overhead", 150.0),
    "rollback": Entry("benchmarks.rollback", "alert → all nodes restored, 100 agents", 150.0),
    "console": Entry(
        "benchmarks.console", "console pages: 10k-version history, 1k-node fleet", 150.0
    ),
    "timetravel": Entry(
        "benchmarks.timetravel",
        "status --at over 1,000,000 events of 1,000 nodes, beside reading them raw",
        900.0,
    ),
}
# ``growth`` is the switch's figures drawn as a plot: asking for it runs the switch.
ALIASES = {"growth": "switch"}
SMOKE_BUDGET_S = 60.0


def _stats_of(value: Any) -> Stats | None:
    if value is None or isinstance(value, Stats):
        return value
    if isinstance(value, dict):
        keys = ("n", "median", "p90", "p99", "max")
        s = {k: value[k] for k in keys}
        return Stats(min=value.get("min", s["median"]), mean=value.get("mean", s["median"]), **s)
    return stats(list(value))  # raw samples


def as_figure(name: str, item: Figure | dict[str, Any]) -> Figure:
    """A benchmark may return ``Figure``s or plain dicts with the same keys (``value`` and
    ``baseline`` as statistics dicts or as raw samples)."""
    if isinstance(item, Figure):
        return item
    value = _stats_of(item["value"])
    assert value is not None
    return Figure(
        benchmark=item.get("benchmark", name),
        name=item["name"],
        unit=item.get("unit", ""),
        value=value,
        better=item.get("better", "lower"),
        baseline=_stats_of(item.get("baseline")),
        baseline_name=item.get("baseline_name", ""),
        params=item.get("params", {}),
        targets=[t if isinstance(t, Target) else Target(**t) for t in item.get("targets", [])],
        notes=item.get("notes", ""),
        ratio=item.get("ratio"),
    )


def run_one(
    name: str, entry: Entry, smoke_run: bool, workdir: Path, budget_scale: float = 1.0
) -> tuple[dict[str, Any], list[Figure]]:
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        if exc.name == entry.module:
            return {"status": "not built yet", "detail": f"{entry.module} does not exist"}, []
        raise
    runner = getattr(module, "run", None)
    if runner is None:
        return {"status": "skipped", "detail": f"{entry.module} has no run(ctx)"}, []
    ctx = Context(name=name, smoke=smoke_run, workdir=workdir / name)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    budget = (SMOKE_BUDGET_S if smoke_run else entry.budget_s) * budget_scale
    started = time.monotonic()

    async def bounded() -> list[Any]:
        with anyio.fail_after(budget):
            result = runner(ctx)
            if hasattr(result, "__await__"):
                result = await result
            return list(result)

    try:
        items = anyio.run(bounded, backend="asyncio")
        figures = [as_figure(name, item) for item in items]
        info: dict[str, Any] = {"status": "ok", "figures": len(figures)}
        if ctx.skipped:
            info["detail"] = "; ".join(ctx.skipped)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        figures = []
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        info = {"status": f"failed ({reason})", "detail": str(exc)[:500]}
        (ctx.workdir / "traceback.txt").write_text(traceback.format_exc())
        print(f"[{name}] failed: {exc!r} (traceback in {ctx.workdir})", file=sys.stderr)
    finally:
        ctx.close()
    info["seconds"] = round(time.monotonic() - started, 1)
    return info, figures


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [*BENCHMARKS, *ALIASES]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="confbus benchmarks beside raw baselines measured in the same run",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all): {names}"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny runs; check sanity only")
    parser.add_argument(
        "--out", type=Path, help="where results go (default benchmarks/results, or a temp dir)"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the servers' data and logs"
    )
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="allow this many times each benchmark's time budget (a machine busy with other "
        "work starts its fleets slower)",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {names}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        for name, entry in BENCHMARKS.items():
            print(f"{name:12} {entry.what}")
        print(f"{'growth':12} the switch latency at 10/100/1000 agents as growth.svg")
        return 0
    wanted = [ALIASES.get(n, n) for n in args.names] or [
        name for name, entry in BENCHMARKS.items() if entry.default
    ]
    wanted = list(dict.fromkeys(wanted))
    out: Path = args.out or (
        Path(tempfile.gettempdir()) / "confbus-bench-smoke" if args.smoke else RESULTS_DIR
    )
    workdir = Path(tempfile.mkdtemp(prefix="confbus-bench-"))
    report = Report(started_at=now_iso(), smoke=args.smoke, machine=machine_info())
    started = time.monotonic()
    try:
        for name in wanted:
            entry = BENCHMARKS[name]
            print(f"[{name}] {entry.what} …", file=sys.stderr, flush=True)
            info, figures = run_one(name, entry, args.smoke, workdir, args.budget_scale)
            report.benchmarks[name] = info
            report.figures += figures
            took = f" in {info['seconds']} s" if "seconds" in info else ""
            print(f"[{name}] {info['status']}{took}", file=sys.stderr, flush=True)
    finally:
        if args.keep_workdir:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.duration_s = time.monotonic() - started
    report.machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    paths = write_report(report, out)
    svg = growth.write_svg(report.figures, out / "growth.svg")
    print(markdown(report))
    written = [*paths, *([svg] if svg else [])]
    print("written: " + ", ".join(str(p) for p in written), file=sys.stderr)
    failed = [n for n, i in report.benchmarks.items() if str(i["status"]).startswith("failed")]
    if args.smoke:
        problems = smoke.check(json.loads(paths[0].read_text()))
        if problems:
            print("smoke check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print("smoke check passed", file=sys.stderr)
        return 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
