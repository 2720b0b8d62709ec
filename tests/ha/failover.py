"""Fail-over figures of the HA fault test (issue 23 item 2): for every SIGKILL of a leader, the
seconds from the kill to each step of the recovery, by role, into the fault results JSON
(scenario ``ha_failover``) — ``python -m tests.faults.report`` puts their median and max into
RELIABILITY.md beside the targets.

The measures (each from the SIGKILL, on the test's monotonic clock unless said):

- ``PUBLISH`` — the next publish acked: the change stored and its version returned;
- ``STORED`` — every change whose publish was sent before the kill stored: the test kills as
  the CI job sends its next change, so one is always under way (the issue's "accepted changes
  stored"; a publish returns only once its change is stored, and is retried with the same
  change id until then);
- ``APPLY`` — the next advance of the lowest change held by every agent (sampled every 50 ms);
  it may be a switch its coordinator had decided before it died;
- ``RECOVERED`` — a change acked after the kill applied by every agent (and every change acked
  before it): the apply that needed the new leader. The lease roles' target is on this one;
- the timeline: ``LEADER`` (the stream's new leader seen), ``LEASE_FREE`` (the dead holder's
  lease takeable: its wall-clock expiry plus the allowed skew, docs/design.md §4.6),
  ``TAKEOVER`` (the new holder's ``acquired_at``), ``PREPARE`` (the first prepare created after
  the kill), and ``RESTARTED`` (the stack's "ready again" line for the process killed — its
  restart waits 0.5 s once it had served 5 s; a backoff that doubles only while it keeps dying
  before or just after its ready line).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from confbus.runtime.leases import Leases

PUBLISH = "kill → next publish acked"
STORED = "kill → changes sent before it stored"
APPLY = "kill → next apply on every agent"
RECOVERED = "kill → a later change applied everywhere"
LEADER = "kill → new stream leader seen"
LEASE_FREE = "kill → dead holder's lease takeable"
TAKEOVER = "kill → lease taken over"
PREPARE = "kill → first prepare after it"
RESTARTED = "kill → killed process serving again"

NATS = "nats stream leader"
LEASE_ROLES = ("coordinator", "distributor", "rollbacker", "health-watcher")
# Issue 23 item 2.
TARGETS: dict[str, dict[str, float]] = {
    NATS: {PUBLISH: 3.0, STORED: 5.0},
    **{role: {RECOVERED: 1.5} for role in LEASE_ROLES},
}
SKEW_S: float = Leases.skew_s  # the default every service runs


@dataclass
class Fault:
    name: str
    role: str  # a key of the figures: NATS, "etcd leader", a lease role
    target: str  # the process killed: nats-2, etcd-e1, coordinator-1 ...
    restarted: str  # the stack's line once it serves again
    killed_at: float  # monotonic
    killed_wall: float
    acked_before: int
    load_1m: float
    old_lease: datetime | None = None  # the dead holder's expiry
    new_lease: datetime | None = None  # its successor's acquired_at
    new_holder: str = ""  # the successor (the killed replica's own name: restarted in time)
    leader_at: float | None = None
    restarted_wall: float | None = None
    recovered_at: float = 0.0


def now_fault(name: str, role: str, target: str, restarted: str, acked_before: int) -> Fault:
    return Fault(
        name, role, target, restarted, time.monotonic(), time.time(), acked_before,
        os.getloadavg()[0],
    )  # fmt: skip


def measure(
    f: Fault,
    sends: Sequence[tuple[float, float]],
    applies: Sequence[float],
    prepares: Sequence[datetime],
) -> dict[str, float]:
    """This fault's figures: ``sends`` (sent, acked) per change, ``applies`` the times the
    agents' lowest change advanced, ``prepares`` when each prepare was created."""
    k = f.killed_at
    out = {RECOVERED: f.recovered_at - k}
    acked = [at for _, at in sends if at > k]
    if acked:
        out[PUBLISH] = acked[0] - k
    out[STORED] = max((at - k for sent, at in sends if sent <= k < at), default=0.0)
    after = [t for t in applies if t > k]
    if after:
        out[APPLY] = after[0] - k
    if f.leader_at is not None:
        out[LEADER] = f.leader_at - k
    if f.old_lease is not None:
        out[LEASE_FREE] = max(0.0, f.old_lease.timestamp() + SKEW_S - f.killed_wall)
    if f.new_lease is not None:
        out[TAKEOVER] = f.new_lease.timestamp() - f.killed_wall
    if f.restarted_wall is not None:
        out[RESTARTED] = f.restarted_wall - f.killed_wall
    later = [p.timestamp() for p in prepares if p.timestamp() > f.killed_wall]
    if later:
        out[PREPARE] = min(later) - f.killed_wall
    return {m: round(v, 3) for m, v in out.items()}


def samples(
    faults: Sequence[Fault],
    sends: Sequence[tuple[float, float]],
    applies: Sequence[float],
    prepares: Sequence[datetime],
) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for f in faults:
        for m, v in measure(f, sends, applies, prepares).items():
            out.setdefault(f.role, {}).setdefault(m, []).append(v)
    return out


def taken_back(faults: Sequence[Fault]) -> dict[str, float | int | str]:
    """Per lease role, how many leases the killed replica's restart took back (a peer took
    the others)."""
    out: dict[str, float | int | str] = {}
    for f in faults:
        if f.new_holder:
            key = f"{f.role}_taken_back_by_restart"
            out[key] = int(out.get(key, 0)) + (f.new_holder == f.target)
    return out


def logged_at(log: Path, match: str, after: float) -> float | None:
    """When (wall clock) the first line of the JSON log ``log`` logged after ``after`` says
    ``match`` (None if none does)."""
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
            at = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        if at > after and match in str(record.get("msg", "")):
            return at
    return None


def load_notes(faults: Sequence[Fault]) -> dict[str, float | int | str]:
    """The machine's 1-minute load average at the kills (it is shared), and its cores."""
    loads = [f.load_1m for f in faults]
    if not loads:
        return {}
    return {
        "load_1m_median": round(statistics.median(loads), 2),
        "load_1m_max": round(max(loads), 2),
        "cpus": os.cpu_count() or 0,
    }
