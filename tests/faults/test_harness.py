"""The harness's own arithmetic: phases, availability, the longest gap, the report."""

from __future__ import annotations

import math

import pytest

from tests.faults.history import History, Op
from tests.faults.report import render
from tests.faults.results import Figures, assert_caught, assert_safe


def history(*ops: tuple[float, float, str], marks: tuple[tuple[str, float], ...] = ()) -> History:
    h = History(t0=0.0)
    for invoke, complete, result in ops:
        done = complete if result != "unknown" else math.inf
        h.ops.append(Op("p", "publish", "k", None, invoke, done, result))  # type: ignore[arg-type]
    h.marks = list(marks)
    return h


def test_phases_and_availability() -> None:
    h = history(
        (0.0, 0.1, "ok"),
        (1.0, 1.1, "ok"),
        (2.0, 4.0, "unknown"),
        (2.5, 2.6, "fail"),
        (3.5, 3.6, "ok"),
        (5.0, 5.1, "ok"),
        marks=(("fault", 2.0), ("heal", 4.5)),
    )
    assert h.availability() == {"before": 1.0, "during": 0.3333, "after": 1.0}
    assert h.counts() == {"ok": 4, "fail": 1, "unknown": 1}
    # From the fault (2.0) to the first ok (3.6); then to the heal (4.5).
    assert h.longest_gap("publish") == pytest.approx(1.6)


def test_every_fault_interval_counts_as_during() -> None:
    h = history(
        (1.0, 1.1, "unknown"),
        (2.0, 2.1, "ok"),
        (3.0, 3.1, "unknown"),
        marks=(("fault", 0.5), ("heal", 1.5), ("fault", 2.5), ("heal", 3.5)),
    )
    assert h.phase(1.0) == h.phase(3.0) == "during"
    assert h.phase(2.0) == "after" and h.phase(0.1) == "before"


def test_safety_counts_fail_the_test_and_bug_runs_must_have_some() -> None:
    clean = Figures(scenario="s", title="t")
    assert_safe(clean)
    with pytest.raises(AssertionError, match="went unnoticed"):
        assert_caught(Figures(scenario="s", title="t", tier="bug", bug="b"))
    broken = Figures(scenario="s", title="t", lost=2, safety={"stale_writes": 1})
    with pytest.raises(AssertionError, match="lost"):
        assert_safe(broken)
    assert_caught(broken, "lost", "stale_writes")


def test_the_report_shows_real_runs_and_bug_runs_apart() -> None:
    text = render(
        [
            Figures(scenario="store_kill", title="kill -9", runs=10, ok=5, budget_s=25.0),
            Figures(scenario="store_kill", title="kill -9", tier="bug", bug="x", lost=3),
        ]
    )
    assert "| kill -9 | ci | 10 | 5 / 0 / 0 |" in text
    assert "| store_kill | `x` | lost=3 |" in text


def test_the_report_gives_median_and_max_beside_targets_and_by_how_much_one_is_missed() -> None:
    text = render(
        [
            Figures(
                scenario="ha_failover",
                title="kills",
                tier="slow",
                runs=5,
                samples={
                    "coordinator": {"recovered": [4.0, 5.0, 6.0]},
                    "nats": {"publish": [1.0, 2.5], "leader": [0.5], "stored": [0.0, 0.0]},
                },
                targets={
                    "coordinator": {"recovered": 1.5},
                    "nats": {"publish": 2.0, "stored": 5.0},
                },
                notes={"rounds": 3, "load_1m_max": 7.5, "cpus": 2},
            )
        ]
    )
    assert "3 rounds; load average at the kills: load_1m_max=7.5, cpus=2" in text
    assert (
        "| coordinator | recovered | 3 | 5.00 s | 6.00 s | ≤ 1.5 s "
        "| **missed** by 3.50 s (median), 4.50 s (max) |"
    ) in text
    assert (
        "| nats | publish | 2 | 1.75 s | 2.50 s | ≤ 2 s | median met; max over by 0.50 s |" in text
    )
    assert "| nats | leader | 1 | 0.50 s | 0.50 s | – |  |" in text
    assert "| nats | stored | 2 | 0.00 s | 0.00 s | ≤ 5 s | met vacuously" in text
