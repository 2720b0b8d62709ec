"""What ``--smoke`` asserts: that every benchmark ran and produced sane numbers.

Sane: at least one figure; every statistic a positive, finite number, ordered
(median ≤ p90 ≤ p99 ≤ max); a ratio wherever a baseline was measured. No timing thresholds —
a smoke run on a busy CI machine proves the benchmarks work, not how fast anything is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

STAT_KEYS = ("median", "p90", "p99", "max")


def _check_stats(where: str, s: Mapping[str, Any] | None, problems: list[str]) -> None:
    if not isinstance(s, Mapping):
        problems.append(f"{where}: no statistics")
        return
    n = s.get("n")
    if not isinstance(n, int) or n < 1:
        problems.append(f"{where}: n is {n!r}")
    values = []
    for key in STAT_KEYS:
        v = s.get(key)
        if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            problems.append(f"{where}: {key} is {v!r}, not a positive finite number")
            return
        values.append(float(v))
    if values != sorted(values):
        problems.append(f"{where}: statistics out of order {values}")


def check(report: Mapping[str, Any]) -> list[str]:
    """Problems with a report (as written to results.json); empty when it is sane."""
    problems: list[str] = []
    figures = report.get("figures") or []
    if not figures:
        problems.append("no figures at all")
    for status_name, info in (report.get("benchmarks") or {}).items():
        if str(info.get("status", "")).startswith("failed"):
            problems.append(f"{status_name}: {info.get('status')} {info.get('detail', '')}")
    for f in figures:
        where = f"{f.get('benchmark')}: {f.get('name')}"
        _check_stats(where, f.get("value"), problems)
        if f.get("baseline") is not None:
            _check_stats(where + " (baseline)", f.get("baseline"), problems)
            r = f.get("ratio")
            if not isinstance(r, int | float) or not math.isfinite(r) or r <= 0:
                problems.append(f"{where}: ratio is {r!r}")
    ran = {f.get("benchmark") for f in figures}
    for name, info in (report.get("benchmarks") or {}).items():
        if info.get("status") == "ok" and name not in ran and info.get("figures", 1):
            problems.append(f"{name}: ran but produced no figure")
    return problems
