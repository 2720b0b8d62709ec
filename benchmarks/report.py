"""What a benchmark reports: statistics over samples, figures beside their raw baselines, the
machine they were measured on, and the JSON and Markdown report of a run.

Statistics: ``n``, ``median``, ``p90``, ``p99``, ``max`` (nearest-rank percentiles, so with
fewer than 100 samples p99 is the maximum: no interpolation flatters a small sample). Each
``Figure`` carries the confbus measurement and the raw baseline measured in the same run; the
ratio is derived from them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from confbus.procs.nats import nats_server_binary

SCHEMA = "confbus-bench/1"
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# -- statistics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    n: int
    median: float
    p90: float
    p99: float
    max: float
    min: float
    mean: float


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def stats(samples: Sequence[float]) -> Stats:
    ordered = sorted(samples)
    n = len(ordered)
    if n == 0:
        raise ValueError("no samples")
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return Stats(
        n=n,
        median=median,
        p90=percentile(ordered, 90),
        p99=percentile(ordered, 99),
        max=ordered[-1],
        min=ordered[0],
        mean=sum(ordered) / n,
    )


# -- figures, targets -----------------------------------------------------------------------------

Better = Literal["lower", "higher"]


@dataclass
class Target:
    """One performance target, judged on this run: ``what`` (e.g. ``p50 ≤ 100 ms``)."""

    what: str
    ok: bool
    detail: str = ""


@dataclass
class Figure:
    """One measured quantity, beside its raw baseline from the same run.

    ``ratio`` is confbus's cost in units of the baseline's: median/median when lower is
    better (latency), baseline/confbus when higher is better (a rate). 1.0 is the floor.
    """

    benchmark: str
    name: str
    unit: str
    value: Stats
    better: Better = "lower"
    baseline: Stats | None = None
    baseline_name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: str = ""
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline is not None:
            self.ratio = ratio_of(self.value, self.baseline, self.better)

    def target_ratio(self, limit: float) -> Figure:
        """Add the target ``ratio ≤ limit`` (e.g. 3× the raw baseline)."""
        if self.ratio is not None:
            ok = self.ratio <= limit
            self.targets.append(
                Target(
                    f"≤ {limit:g}× baseline",
                    ok,
                    f"{self.ratio:.2f}×" + ("" if ok else f" ({self.ratio / limit:.2f}× over)"),
                )
            )
        return self

    def target_median(self, limit: float, label: str = "p50") -> Figure:
        """Add a target on the median: ``≤ limit`` (lower is better) or ``≥ limit``."""
        m = self.value.median
        if self.better == "lower":
            ok = m <= limit
            over = "" if ok else f" ({m / limit:.2f}× the target)"
            what = f"{label} ≤ {fmt(limit)} {self.unit}"
        else:
            ok = m >= limit
            over = "" if ok else f" ({m / limit:.2f}× the target)"
            what = f"{label} ≥ {fmt(limit)} {self.unit}"
        self.targets.append(Target(what, ok, f"{fmt(m)} {self.unit}{over}"))
        return self


def ratio_of(value: Stats, baseline: Stats, better: Better) -> float | None:
    if baseline.median <= 0 or value.median <= 0:
        return None
    if better == "lower":
        return value.median / baseline.median
    return baseline.median / value.median


def fmt(x: float) -> str:
    if x == 0 or not math.isfinite(x):
        return str(x)
    if abs(x) >= 100 or (abs(x) >= 1 and float(x).is_integer()):
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


# -- the machine ----------------------------------------------------------------------------------


def _meminfo_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _command_version(argv: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _package(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    etcd = shutil.which("etcd")
    git = _command_version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_mb": _meminfo_mb(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "nats_server": _command_version([nats_server_binary(), "--version"]),
        "etcd": _command_version([etcd, "--version"]) if etcd else None,
        "packages": {
            p: _package(p)
            for p in ("confbus", "nats-py", "msgspec", "anyio", "aiosqlite", "aetcd")
            if _package(p)
        },
        "git_commit": git,
        # This machine may be shared (other test runs): the load says how quiet it was.
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "filesystem_tmp": tempfile.gettempdir(),
    }


# -- the report -----------------------------------------------------------------------------------


@dataclass
class Report:
    started_at: str
    smoke: bool
    machine: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → status, s
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}


def markdown(report: Report) -> str:
    m = report.machine
    lines = [
        f"# confbus benchmarks{' (smoke)' if report.smoke else ''}",
        "",
        f"{report.started_at} · {m.get('cores')} cores ({m.get('cpu')}) · "
        f"{m.get('memory_mb')} MB · Linux {m.get('kernel')} · Python {m.get('python')} · "
        f"{m.get('nats_server')} · etcd {m.get('etcd') or 'absent'} · "
        f"commit {m.get('git_commit')} · {report.duration_s:.0f} s · load average "
        f"{m.get('loadavg_start')} → {m.get('loadavg_end')}",
        "",
        "Every figure beside its raw baseline from the same run. ratio = confbus median / "
        "baseline median (for rates: baseline / confbus); 1.0 is the floor. Percentiles are "
        "nearest-rank: with fewer than 100 samples p99 is the max.",
        "",
        "| benchmark | figure | n | median | p90 | p99 | max | baseline: median (p99) "
        "| ratio | targets |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for f in report.figures:
        v = f.value
        base = (
            f"{f.baseline_name}: {fmt(f.baseline.median)} ({fmt(f.baseline.p99)})"
            if f.baseline is not None
            else "—"
        )
        ratio = f"{f.ratio:.2f}×" if f.ratio is not None else "—"
        targets = "; ".join(
            f"{'✅' if t.ok else '❌'} {t.what}" + (f" ({t.detail})" if t.detail else "")
            for t in f.targets
        )
        lines.append(
            f"| {f.benchmark} | {f.name} [{f.unit}] | {v.n} | {fmt(v.median)} | {fmt(v.p90)} "
            f"| {fmt(v.p99)} | {fmt(v.max)} | {base} | {ratio} | {targets or '—'} |"
        )
    notes = [(f.name, f.notes) for f in report.figures if f.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- **{name}**: {note}" for name, note in notes]
    status = [
        f"- {name}: {info.get('status')}"
        + (f" — {info['detail']}" if info.get("detail") else "")
        + (f" ({info['seconds']:.0f} s)" if "seconds" in info else "")
        for name, info in report.benchmarks.items()
    ]
    if status:
        lines += ["", "Benchmarks run:", "", *status]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js = out / "results.json"
    md = out / "results.md"
    js.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    md.write_text(markdown(report))
    return js, md


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    started = time.perf_counter()
    yield lambda: time.perf_counter() - started
