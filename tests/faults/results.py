"""What a scenario reports, and where: ``tests/faults/results/<scenario>.<tier>.json`` (or the
directory named by ``CONFBUS_FAULT_RESULTS``), read back by ``tests.faults.report``.

The safety counts are ``lost``, ``divergent``, ``duplicates``, ``flipped`` and whatever the
scenario adds to ``safety`` (in-doubt transactions past the bound, stale-epoch writes, failed
integrity checks, poison messages not dead-lettered, …). Any of them non-zero fails the test
(``assert_safe``) — except in a deliberate-bug test, which asserts the opposite.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal, TypedDict

import msgspec
import pytest

from tests.faults.history import History

Tier = Literal["ci", "slow", "bug"]
RESULTS_ENV = "CONFBUS_FAULT_RESULTS"
DEFAULT_DIR = Path(__file__).resolve().parent / "results"


class RunOptions(TypedDict, total=False):
    """How any scenario is run (each scenario takes these as keywords and hands them to its
    ``Figures``): the tier, the deliberate bug injected, the CI budget in seconds."""

    tier: Tier
    bug: str
    budget_s: float | None


def ci_and_slow(ci: int, slow: int, budget_s: float) -> list[object]:
    """A scenario's test run at the CI size within its time budget and, marked slow (``make
    test-slow``), as a long loop with none: its parameters, (size, ``RunOptions``)."""
    return [
        pytest.param(ci, RunOptions(tier="ci", budget_s=budget_s), id="ci"),
        pytest.param(
            slow,
            RunOptions(tier="slow", budget_s=None),
            id="slow",
            marks=(pytest.mark.slow, pytest.mark.timeout(2400)),
        ),
    ]


class Figures(msgspec.Struct, kw_only=True):
    scenario: str
    title: str
    tier: Tier = "ci"
    runs: int = 0
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    lost: int = 0
    divergent: int = 0
    duplicates: int = 0
    flipped: int = 0
    safety: dict[str, int] = {}  # further safety counts: every one must be 0
    availability: dict[str, float | None] = {}  # before / during / after: share of ops ok
    rates: dict[str, float | None] = {}  # before / during / after: ok ops per second
    longest_unavailable_s: float | None = None
    notes: dict[str, float | int | str] = {}  # reported figures that are not pass/fail
    # Timings of each event of a kind (role → measure → seconds, one per event): the report
    # shows their median and max, beside ``targets`` (role → measure → seconds) where set.
    samples: dict[str, dict[str, list[float]]] = {}
    targets: dict[str, dict[str, float]] = {}
    seconds: float = 0.0  # wall time of the whole scenario
    budget_s: float | None = None  # its CI budget
    bug: str = ""  # the deliberate bug injected (tier "bug")
    at: str = ""

    def add_history(self, history: History, f: str | None = None) -> None:
        counts = history.counts(f)
        self.ok += counts["ok"]
        self.failed += counts["fail"]
        self.unknown += counts["unknown"]
        self.availability = history.availability(f)
        self.rates = history.rates(f)

    def violations(self) -> dict[str, int]:
        core = {
            "lost": self.lost,
            "divergent": self.divergent,
            "duplicates": self.duplicates,
            "flipped": self.flipped,
        }
        return {k: v for k, v in {**core, **self.safety}.items() if v}

    def summary(self) -> str:
        return (
            f"{self.scenario}[{self.tier}] runs={self.runs} ok={self.ok} fail={self.failed} "
            f"unknown={self.unknown} lost={self.lost} divergent={self.divergent} "
            f"duplicates={self.duplicates} flipped={self.flipped} safety={self.safety} "
            f"availability={self.availability} longest_unavailable_s="
            f"{self.longest_unavailable_s} notes={self.notes} seconds={self.seconds:.1f}"
        )


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_DIR)


def write(fig: Figures) -> Path:
    fig.at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    name = f"{fig.scenario}.{fig.tier}" + (f".{fig.bug}" if fig.bug else "") + ".json"
    path = out / name
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(fig), indent=2) + b"\n")
    tmp.replace(path)
    return path


def read_all(directory: Path | None = None) -> list[Figures]:
    d = directory or results_dir()
    if not d.is_dir():
        return []
    return [read(p) for p in sorted(d.glob("*.json"))]


def read(path: Path) -> Figures:
    """One scenario's figures, from the file ``write`` (or a scenario run apart) wrote."""
    return msgspec.json.decode(path.read_bytes(), type=Figures)


def finish(fig: Figures, started: float) -> Figures:
    """Stamp the wall time, write the JSON, print the one-line summary."""
    fig.seconds = round(time.monotonic() - started, 1)
    write(fig)
    print("\n" + fig.summary())
    return fig


def assert_safe(fig: Figures, runs: int | None = None) -> None:
    """No safety violation; with ``runs``, after as many runs as the test asked for."""
    bad = fig.violations()
    assert not bad, f"safety violated in {fig.scenario}: {bad}\n{fig.summary()}"
    if runs is not None:
        assert fig.runs == runs, f"{fig.scenario}: {fig.runs} runs, not {runs}\n{fig.summary()}"


def assert_caught(fig: Figures, *expected: str) -> None:
    """A deliberate-bug run: the harness must report it (a check that cannot fail is not a
    check)."""
    bad = fig.violations()
    assert bad, f"bug {fig.bug!r} went unnoticed by {fig.scenario}:\n{fig.summary()}"
    for name in expected:
        assert bad.get(name), f"bug {fig.bug!r}: expected {name} > 0, got {bad}"
