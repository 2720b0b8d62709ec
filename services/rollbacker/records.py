"""The pure rules the rollbacker applies to what it keeps in ``CFG_STATE``.

One key per namespace, ``rollback.<ns>``, holds a ``Ledger`` (``confbus.schemas.state``): the
rollback being driven (if any), the recent rollbacks (for the cooldown and the cap), and the
recent alert ids (for idempotency). Every change to it is a compare-and-set, so two replicas
— or a replica and its own restarted self — can never both start a rollback of one namespace,
and a failover keeps the cooldown and the cap.

Everything here is pure: no I/O, so the rules are tested without a bus.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from confbus.schemas.policy import RollbackPolicy
from confbus.schemas.state import Ledger, Rollback, SeenAlert

# Bounds (invariant 7): the ledger of a namespace never grows past these, whatever happens.
MAX_ALERTS = 500
MAX_ROLLBACKS = 50


def with_alert(ledger: Ledger, seen: SeenAlert) -> Ledger:
    return msgspec.structs.replace(ledger, alerts=[*ledger.alerts, seen][-MAX_ALERTS:])


def with_rollback(ledger: Ledger, rb: Rollback) -> Ledger:
    """Add ``rb``, or replace it in place (by id); the list is bounded."""
    # Only the one written now keeps its node lists (an operator looking at a stuck rollback
    # needs them); the others are compacted, so the ledger stays small whatever the fleet.
    items = [rb if r.rollback_id == rb.rollback_id else compact(r) for r in ledger.rollbacks]
    if ledger.find(rb.rollback_id) is None:
        items.append(rb)
    return msgspec.structs.replace(ledger, rollbacks=items[-MAX_ROLLBACKS:])


def compact(rb: Rollback) -> Rollback:
    """A finished rollback keeps its facts but not its node lists (bounded size)."""
    if rb.state == "running" or not (rb.batches or any(b.nodes for b in rb.done)):
        return rb
    done = [
        msgspec.structs.replace(b, nodes=[], switched=[], txids=[], unhealthy=[]) for b in rb.done
    ]
    return msgspec.structs.replace(rb, batches=[], done=done)


@dataclass(frozen=True)
class Limited:
    kind: Literal["cooldown", "cap"]
    detail: str


def rate_limit(ledger: Ledger, policy: RollbackPolicy, now: datetime) -> Limited | None:
    """Whether an *automatic* rollback may start now: not within ``cooldown_s`` of the last
    one, and fewer than ``max_per_window`` in the last ``cap_window_s``."""
    starts = [r.started_at for r in ledger.rollbacks if r.counts_for_limits]
    if starts:
        last = max(starts)
        since = (now - last).total_seconds()
        if since < policy.cooldown_s:
            return Limited(
                "cooldown",
                f"the last rollback started {since:.0f}s ago; cooldown is {policy.cooldown_s:g}s",
            )
    window_start = now - timedelta(seconds=policy.cap_window_s)
    recent = [s for s in starts if s > window_start]
    if len(recent) >= policy.max_per_window:
        return Limited(
            "cap",
            f"{len(recent)} rollbacks in the last {policy.cap_window_s:g}s; "
            f"the cap is {policy.max_per_window}",
        )
    return None


def prune(ledger: Ledger, policy: RollbackPolicy, now: datetime) -> Ledger:
    """Drop finished rollbacks that no longer matter to the cooldown or the cap (always keeping
    the last few for the record) and alert ids older than the cap window."""
    horizon = now - timedelta(seconds=max(policy.cap_window_s, policy.cooldown_s, 3600.0))
    keep_last = 5
    rbs = [
        r
        for i, r in enumerate(ledger.rollbacks)
        if r.state == "running"
        or r.rollback_id == ledger.active
        or i >= len(ledger.rollbacks) - keep_last
        or r.started_at > horizon
    ]
    alerts = [a for a in ledger.alerts if a.at > horizon]
    return msgspec.structs.replace(ledger, rollbacks=rbs, alerts=alerts)
