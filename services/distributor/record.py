"""The rollout record's transitions, as pure functions ``RolloutInfo → RolloutInfo``.

The driver applies them through a compare-and-set on ``rollout.<ns>``; each transition puts
the events it implies into the record's outbox in the same write (published right after,
and again after a crash — their message ids make that a no-op).

States::

    running ──pause──▶ paused ──resume──▶ running
    running|paused ──last wave baked clean──▶ completed        (promoted; last good on a pass)
    running|paused ──no vote / deadline beyond max_excluded / failed bake / abort──▶ failed
    running|paused ──a newer version at a wave boundary──▶ superseded
    running|paused|failed ──rollback.started / abort(rolled_back)──▶ rolled_back

Waves: ``pending → switching → baking → done`` (or ``failed``; ``skipped`` when the rollout
ended before them). A wave in ``switching`` has an attempt under way whose outcome is not yet
recorded: a restarted driver finds it from the coordinator's head and decision records. The
wave transitions (attempt, outcome, verdict) are in ``record_waves``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal, TypeVar

import msgspec

from confbus.schemas.api.dist import (
    TERMINAL_STATES,
    OutboxItem,
    PendingVersion,
    RolloutInfo,
    RolloutState,
    WaveInfo,
)
from confbus.schemas.base import utcnow
from confbus.schemas.events import (
    Event,
    NodeOutcome,
    RolloutBaked,
    RolloutCompleted,
    RolloutFailed,
    RolloutPaused,
    RolloutResumed,
    RolloutRolledBack,
    RolloutStarted,
    RolloutSuperseded,
    RolloutWave,
)
from confbus.schemas.health import Alert
from confbus.schemas.policy import Policy

replace = msgspec.structs.replace

EndEvent = RolloutCompleted | RolloutFailed | RolloutSuperseded | RolloutRolledBack
RolloutEvent = (
    RolloutStarted
    | RolloutWave
    | RolloutBaked
    | RolloutPaused
    | RolloutResumed
    | RolloutCompleted
    | RolloutFailed
    | RolloutSuperseded
    | RolloutRolledBack
)
E = TypeVar("E", bound=RolloutEvent)
WaveState = Literal["pending", "switching", "baking", "done", "failed", "skipped"]


def new_rollout(
    namespace: str,
    version: int,
    *,
    strategy: str | None,
    selector: dict[str, str] | None,
    actor: str,
) -> RolloutInfo:
    now = utcnow()
    return RolloutInfo(
        rollout_id=f"{namespace}-v{version}-{secrets.token_hex(3)}",
        namespace=namespace,
        version=version,
        strategy=strategy or "",
        requested_strategy=strategy,
        selector=selector,
        state="running",
        started_at=now,
        updated_at=now,
        holder=actor,
    )


def rollout_event(event: type[E], rec: RolloutInfo, *, actor: str, **details: Any) -> E:
    """An event about ``rec``'s rollout (its namespace, id and version), said by ``actor``."""
    return event(
        namespace=rec.namespace,
        rollout_id=rec.rollout_id,
        version=rec.version,
        actor=actor,
        **details,
    )


def outbox_event(rec: RolloutInfo, key: str, event: Event) -> RolloutInfo:
    item = OutboxItem(msg_id=f"rollout:{rec.rollout_id}:{key}", event=event)  # type: ignore[arg-type]
    return replace(rec, outbox=[*rec.outbox, item])


def outbox_alert(rec: RolloutInfo, alert: Alert) -> RolloutInfo:
    return replace(rec, outbox=[*rec.outbox, OutboxItem(msg_id=alert.alert_id, alert=alert)])


def set_wave(rec: RolloutInfo, index: int, wave: WaveInfo) -> RolloutInfo:
    waves = list(rec.waves)
    waves[index] = wave
    return replace(rec, waves=waves)


def elapsed(rec: RolloutInfo, at: datetime | None = None) -> float:
    if rec.started_at is None:
        return 0.0
    return max(0.0, ((at or utcnow()) - rec.started_at).total_seconds())


def merge_outcomes(old: Iterable[NodeOutcome], new: Iterable[NodeOutcome]) -> list[NodeOutcome]:
    by_node = {o.node: o for o in old}
    for o in new:
        by_node[o.node] = o
    return [by_node[n] for n in sorted(by_node)]


def report(rec: RolloutInfo) -> list[NodeOutcome]:
    """Per node of the rollout: its outcome, attempts and timing (pending/skipped if untouched)."""
    out: list[NodeOutcome] = []
    for w in rec.waves:
        known = {o.node: o for o in w.outcomes}
        for node in w.nodes:
            o = known.get(node)
            if o is None:
                if rec.state in TERMINAL_STATES:
                    o = NodeOutcome(
                        node=node,
                        outcome="skipped",
                        attempts=0,
                        wave=w.index,
                        reason=f"the rollout ended {rec.state} before this node was switched",
                    )
                else:
                    o = NodeOutcome(node=node, outcome="pending", attempts=0, wave=w.index)
            out.append(o)
    return out


def switched_nodes(rec: RolloutInfo, upto: int | None = None) -> list[str]:
    """Nodes on the version through this rollout (switched, or already there), waves ≤ upto."""
    last = len(rec.waves) - 1 if upto is None else upto
    return sorted(
        o.node for w in rec.waves[: last + 1] for o in w.outcomes if o.outcome == "applied"
    )


def excluded_count(rec: RolloutInfo) -> int:
    return sum(len(w.excluded) for w in rec.waves)


def at_boundary(rec: RolloutInfo) -> bool:
    """Between waves: nothing is being switched, and some wave is still to come or baking."""
    if not rec.planned or rec.current_wave >= len(rec.waves):
        return False
    return rec.waves[rec.current_wave].state in ("pending", "baking", "done")


def writes_next(rec: RolloutInfo, now: datetime) -> bool:
    """The driver's next step writes the record at once (no wait before it): the next wave's
    switch, a bake that is due, the next wave, the finish. The events of a write followed by
    such a step need no write of their own to leave the outbox: that step's write drops them."""
    if rec.state != "running" or not rec.planned:
        return False
    if rec.current_wave >= len(rec.waves):
        return True  # the finish
    w = rec.waves[rec.current_wave]
    if w.state in ("done", "skipped"):
        return True
    if w.state == "pending":
        return w.retry_at is None or w.retry_at <= now
    if w.state == "baking":
        return w.committed_at is not None and (now - w.committed_at).total_seconds() >= rec.bake_s
    return False


# -- endings ----------------------------------------------------------------------------------


def _close_waves(rec: RolloutInfo) -> list[WaveInfo]:
    out = []
    for w in rec.waves:
        if w.state == "pending":
            w = replace(w, state="skipped")
        elif w.state == "baking":
            w = replace(w, state="done")
        out.append(w)
    return out


def _end(rec: RolloutInfo, state: RolloutState, reason: str, actor: str) -> RolloutInfo:
    now = utcnow()
    ended = replace(
        rec,
        state=state,
        reason=reason,
        finished_at=now,
        updated_at=now,
        waves=_close_waves(rec),
        actor=actor or rec.actor,
    )
    return replace(ended, report=report(ended))


def _announce_end(
    out: RolloutInfo, event: type[EndEvent], *, actor: str, **details: Any
) -> RolloutInfo:
    """The ended rollout's event in its outbox, under the key of the state it ended in (a
    rollout ends once): what every ending says, and this ending's ``details``."""
    said = rollout_event(
        event,
        out,
        actor=actor,
        reason=out.reason,
        report=out.report,
        waves=out.wave_reports,
        **details,
    )
    return outbox_event(out, out.state, said)


def fail(
    rec: RolloutInfo,
    wave: int,
    reason: str,
    *,
    actor: str,
    alert: Alert | None = None,
) -> RolloutInfo:
    if 0 <= wave < len(rec.waves) and rec.waves[wave].state != "done":
        rec = set_wave(rec, wave, replace(rec.waves[wave], state="failed"))
    handed = alert is not None
    out = replace(_end(rec, "failed", reason, actor), failed_wave=wave, handed_to_rollbacker=handed)
    out = _announce_end(
        out,
        RolloutFailed,
        actor=actor,
        wave=wave,
        seconds=elapsed(out),
        handed_to_rollbacker=handed,
    )
    if alert is not None:
        out = outbox_alert(out, alert)
    return out


def refuse(rec: RolloutInfo, reason: str, *, actor: str) -> RolloutInfo:
    """Refused before any wave: nothing was switched."""
    return fail(rec, -1, f"refused: {reason}", actor=actor)


def complete(rec: RolloutInfo, *, actor: str, last_good: bool, reason: str = "") -> RolloutInfo:
    out = replace(_end(rec, "completed", reason, actor), last_good=last_good)
    return _announce_end(
        out, RolloutCompleted, actor=actor, seconds=elapsed(out), last_good=last_good
    )


def supersede(rec: RolloutInfo, by_version: int, *, actor: str) -> RolloutInfo:
    reason = f"superseded by v{by_version} at a wave boundary"
    out = replace(_end(rec, "superseded", reason, actor), superseded_by=by_version)
    return _announce_end(out, RolloutSuperseded, actor=actor, by_version=by_version)


def rolled_back(rec: RolloutInfo, reason: str, *, actor: str) -> RolloutInfo:
    out = replace(_end(rec, "rolled_back", reason, actor), next=None)
    return _announce_end(out, RolloutRolledBack, actor=actor)


def pause(rec: RolloutInfo, *, actor: str, reason: str) -> RolloutInfo:
    return _hold(rec, "paused", RolloutPaused, actor=actor, reason=reason)


def resume(rec: RolloutInfo, *, actor: str, reason: str) -> RolloutInfo:
    return _hold(rec, "running", RolloutResumed, actor=actor, reason=reason)


def _hold(
    rec: RolloutInfo,
    state: Literal["paused", "running"],
    event: type[RolloutPaused] | type[RolloutResumed],
    *,
    actor: str,
    reason: str,
) -> RolloutInfo:
    """Pause or resume: the new state, and its event in the outbox (a key of its own each
    time, since a rollout may be paused and resumed many times)."""
    out = replace(rec, state=state, actor=actor, updated_at=utcnow())
    key = f"{'paused' if state == 'paused' else 'resumed'}:{len(rec.outbox)}:{secrets.token_hex(2)}"
    return outbox_event(out, key, rollout_event(event, rec, actor=actor, reason=reason))


# -- the plan ---------------------------------------------------------------------------------


def planned(
    rec: RolloutInfo,
    policy: Policy,
    *,
    strategy: str,
    selector: dict[str, str],
    waves: list[list[str]],
    away: Iterable[str] = (),
    previous_version: int | None,
    actor: str,
) -> RolloutInfo:
    """The rollout with its waves, and with the namespace's policy for its bakes, exclusions,
    votes and missing health data as it is now: a policy changed later does not change it."""
    out = replace(
        rec,
        planned=True,
        strategy=strategy,
        selector=selector,
        waves=[WaveInfo(index=i, nodes=w, state="pending") for i, w in enumerate(waves)],
        targets=sorted(n for w in waves for n in w),
        away=sorted(away),
        bake_s=policy.bake_s,
        max_excluded=policy.max_excluded,
        vote_timeout_s=policy.vote_timeout_s,
        retry_unanswered_s=policy.retry_unanswered_s,
        on_missing_data=policy.on_missing_data,
        previous_version=previous_version,
        updated_at=utcnow(),
        holder=actor,
    )
    out = replace(out, report=report(out))
    started = rollout_event(
        RolloutStarted,
        out,
        actor=actor,
        at=out.started_at or utcnow(),
        strategy=strategy,
        waves=waves,
        bake_s=policy.bake_s,
        selector=selector,
    )
    return outbox_event(out, "started", started)


def set_next(rec: RolloutInfo, pending: PendingVersion) -> RolloutInfo:
    return replace(rec, next=pending, updated_at=utcnow())


def wave_nodes(rec: RolloutInfo, index: int) -> list[str]:
    w = rec.waves[index]
    return [n for n in w.nodes if n not in w.excluded and n not in w.already and n not in rec.away]
