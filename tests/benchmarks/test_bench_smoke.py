"""``python -m benchmarks --smoke`` runs every benchmark in miniature and writes sane results.

Sane, not fast: no timing thresholds here (a busy CI machine proves nothing about speed) —
only that each benchmark ran, and that every figure is positive, finite and has its ratio.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import smoke

REPO = Path(__file__).resolve().parents[2]
# The smoke run itself stays under a minute; the bound leaves room for a slow CI machine.
BOUND_S = 180


@pytest.fixture(scope="module")
def smoke_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench-smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BOUND_S,
        check=False,
    )
    return proc, out


def test_the_smoke_run_passes_its_own_check(
    smoke_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, _ = smoke_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "smoke check passed" in proc.stderr
    assert "| benchmark | figure |" in proc.stdout  # the table is printed


def test_the_json_is_sane(smoke_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = smoke_run
    report = json.loads((out / "results.json").read_text())
    assert report["schema"] == "confbus-bench/1"
    assert report["smoke"] is True
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["memory_mb"] > 0
    assert machine["python"] and machine["nats_server"] and machine["kernel"]
    assert smoke.check(report) == []
    benchmarks = {f["benchmark"] for f in report["figures"]}
    assert {"switch", "throughput", "footprint"} <= benchmarks
    for f in report["figures"]:
        for key in ("n", "median", "p90", "p99", "max"):
            assert key in f["value"]
        if f["baseline"] is not None:
            assert math.isfinite(f["ratio"]) and f["ratio"] > 0
    assert (out / "results.md").read_text().startswith("# confbus benchmarks (smoke)")
    assert (out / "growth.svg").read_text().startswith("<svg")


def test_the_checker_catches_nonsense() -> None:
    good = {"n": 3, "median": 1.0, "p90": 2.0, "p99": 3.0, "max": 3.0}
    report = {
        "figures": [
            {"benchmark": "x", "name": "ok", "value": good, "baseline": good, "ratio": 1.0},
            {"benchmark": "x", "name": "nan", "value": {**good, "median": math.nan}},
            {"benchmark": "x", "name": "no ratio", "value": good, "baseline": good, "ratio": None},
            {"benchmark": "x", "name": "zero", "value": {**good, "p90": 0.0}},
        ],
        "benchmarks": {"x": {"status": "ok"}, "y": {"status": "failed (TimeoutError)"}},
    }
    problems = smoke.check(report)
    assert len(problems) == 4, problems
