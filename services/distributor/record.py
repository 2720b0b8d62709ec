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
recorded: a restarted driver finds it from the coordinator's head and decision records.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Literal

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
    VoteRecord,
)
from confbus.schemas.health import Alert

replace = msgspec.structs.replace

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
    out = replace(
        _end(rec, "failed", reason, actor),
        failed_wave=wave,
        handed_to_rollbacker=alert is not None,
    )
    out = outbox_event(
        out,
        "failed",
        RolloutFailed(
            namespace=out.namespace,
            actor=actor,
            reason=reason,
            rollout_id=out.rollout_id,
            version=out.version,
            wave=wave,
            report=out.report,
            waves=out.wave_reports,
            seconds=elapsed(out),
            handed_to_rollbacker=alert is not None,
        ),
    )
    if alert is not None:
        out = outbox_alert(out, alert)
    return out


def refuse(rec: RolloutInfo, reason: str, *, actor: str) -> RolloutInfo:
    """Refused before any wave: nothing was switched."""
    return fail(rec, -1, f"refused: {reason}", actor=actor)


def complete(rec: RolloutInfo, *, actor: str, last_good: bool, reason: str = "") -> RolloutInfo:
    out = replace(_end(rec, "completed", reason, actor), last_good=last_good)
    return outbox_event(
        out,
        "completed",
        RolloutCompleted(
            namespace=out.namespace,
            actor=actor,
            reason=reason,
            rollout_id=out.rollout_id,
            version=out.version,
            report=out.report,
            seconds=elapsed(out),
            waves=out.wave_reports,
            last_good=last_good,
        ),
    )


def supersede(rec: RolloutInfo, by_version: int, *, actor: str) -> RolloutInfo:
    reason = f"superseded by v{by_version} at a wave boundary"
    out = replace(_end(rec, "superseded", reason, actor), superseded_by=by_version)
    return outbox_event(
        out,
        "superseded",
        RolloutSuperseded(
            namespace=out.namespace,
            actor=actor,
            reason=reason,
            rollout_id=out.rollout_id,
            version=out.version,
            by_version=by_version,
            report=out.report,
            waves=out.wave_reports,
        ),
    )


def rolled_back(rec: RolloutInfo, reason: str, *, actor: str) -> RolloutInfo:
    out = replace(_end(rec, "rolled_back", reason, actor), next=None)
    return outbox_event(
        out,
        "rolled_back",
        RolloutRolledBack(
            namespace=out.namespace,
            actor=actor,
            reason=reason,
            rollout_id=out.rollout_id,
            version=out.version,
            report=out.report,
            waves=out.wave_reports,
        ),
    )


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
    return outbox_event(
        out,
        key,
        event(
            namespace=rec.namespace,
            actor=actor,
            reason=reason,
            rollout_id=rec.rollout_id,
            version=rec.version,
        ),
    )


# -- planning and waves ---------------------------------------------------------------------


def planned(
    rec: RolloutInfo,
    *,
    strategy: str,
    selector: dict[str, str],
    waves: list[list[str]],
    bake_s: float,
    max_excluded: float,
    vote_timeout_s: float,
    retry_unanswered_s: float,
    on_missing_data: Literal["pass", "fail"],
    previous_version: int | None,
    actor: str,
) -> RolloutInfo:
    out = replace(
        rec,
        planned=True,
        strategy=strategy,
        selector=selector,
        waves=[WaveInfo(index=i, nodes=w, state="pending") for i, w in enumerate(waves)],
        targets=sorted(n for w in waves for n in w),
        bake_s=bake_s,
        max_excluded=max_excluded,
        vote_timeout_s=vote_timeout_s,
        retry_unanswered_s=retry_unanswered_s,
        on_missing_data=on_missing_data,
        previous_version=previous_version,
        updated_at=utcnow(),
        holder=actor,
    )
    out = replace(out, report=report(out))
    return outbox_event(
        out,
        "started",
        RolloutStarted(
            namespace=out.namespace,
            actor=actor,
            at=out.started_at or utcnow(),
            rollout_id=out.rollout_id,
            version=out.version,
            strategy=strategy,
            waves=waves,
            bake_s=bake_s,
            selector=selector,
        ),
    )


def start_attempt(
    rec: RolloutInfo,
    index: int,
    *,
    nodes: list[str],
    already: list[str],
    down: list[str],
    actor: str,
) -> RolloutInfo:
    w = rec.waves[index]
    now = utcnow()
    outcomes = [
        NodeOutcome(
            node=n,
            outcome="applied",
            attempts=0,
            wave=index,
            reason=f"already on v{rec.version} or newer",
        )
        for n in already
    ] + [
        NodeOutcome(
            node=n,
            outcome="excluded",
            attempts=0,
            wave=index,
            reason="not live when its wave began; catches up when it returns",
        )
        for n in down
    ]
    w = replace(
        w,
        state="switching" if nodes else "baking",
        attempts=w.attempts + (1 if nodes else 0),
        already=sorted({*w.already, *already}),
        excluded=sorted({*w.excluded, *down}),
        switch_nodes=nodes,
        switch_started_at=now if nodes else None,
        started_at=w.started_at or now,
        committed_at=None if nodes else now,
        outcomes=merge_outcomes(w.outcomes, outcomes),
    )
    out = set_wave(rec, index, w)
    return replace(out, updated_at=now, holder=actor, report=report(out))


def vote_outcomes(
    rec: RolloutInfo,
    index: int,
    votes: list[VoteRecord],
    *,
    committed: bool,
    attempt: int,
    txid: str,
    at: datetime,
) -> list[NodeOutcome]:
    out = []
    for v in votes:
        if v.vote == "yes":
            out.append(
                NodeOutcome(
                    node=v.node,
                    outcome="applied" if committed else "skipped",
                    attempts=attempt,
                    wave=index,
                    txid=txid if committed else None,
                    seconds=elapsed(rec, at) if committed else None,
                    reason="" if committed else "the transaction aborted",
                )
            )
        else:
            out.append(
                NodeOutcome(
                    node=v.node,
                    outcome=v.vote,
                    attempts=attempt,
                    wave=index,
                    reason=v.reason
                    or ("no vote before the deadline" if v.vote == "missing" else ""),
                )
            )
    return out


def record_commit(
    rec: RolloutInfo,
    index: int,
    *,
    txid: str,
    votes: list[VoteRecord],
    switch_s: float | None,
    actor: str,
) -> RolloutInfo:
    w = rec.waves[index]
    now = utcnow()
    if not votes:
        votes = [VoteRecord(node=n, vote="yes") for n in w.switch_nodes]
    outcomes = vote_outcomes(
        rec, index, votes, committed=True, attempt=w.attempts, txid=txid, at=now
    )
    ended = rec.state in TERMINAL_STATES
    w = replace(
        w,
        state="done" if ended else "baking",
        txid=txid,
        txids=[*w.txids, txid],
        committed_at=now,
        switch_s=switch_s,
        outcomes=merge_outcomes(w.outcomes, outcomes),
    )
    out = set_wave(rec, index, w)
    out = replace(out, updated_at=now, holder=actor, report=report(out))
    excluded = [o for o in w.outcomes if o.outcome == "excluded"]
    nodes = merge_outcomes(excluded, outcomes)
    return _wave_event(out, index, txid, "committed", nodes, actor, "", now)


def record_abort(
    rec: RolloutInfo,
    index: int,
    *,
    txid: str,
    votes: list[VoteRecord],
    actor: str,
    decision_reason: str = "",
    unready: Iterable[str] = (),
) -> RolloutInfo:
    """An aborted attempt. A ``no`` fails the rollout. An attempt that no node ready to vote
    answered — nobody voted, or only nodes that said they were not ready (``unready``: their
    heartbeat said so during the attempt) missed the deadline — says nothing about the config:
    it is retried with backoff for ``retry_unanswered_s`` after the wave's first attempt.
    Nodes that were ready and missed the deadline are left out of one retry, if that leaves
    out no more than ``max_excluded`` of the targets; else the rollout fails."""
    w = rec.waves[index]
    now = utcnow()
    outcomes = vote_outcomes(
        rec, index, votes, committed=False, attempt=w.attempts, txid=txid, at=now
    )
    no = [v for v in votes if v.vote == "no"]
    missing = sorted(v.node for v in votes if v.vote == "missing")
    nobody_voted = bool(missing) and len(missing) == len(votes)
    unanswered = not no and bool(missing) and (nobody_voted or set(missing) <= set(unready))
    if unanswered and rec.state not in TERMINAL_STATES:
        delay = unanswered_backoff(w.unanswered + 1)
        first = w.started_at or now
        if (now - first).total_seconds() + delay <= rec.retry_unanswered_s:
            return _retry_unanswered(rec, index, txid, outcomes, delay, now, actor)
    remaining = [n for n in w.switch_nodes if n not in missing]
    total = max(1, len(rec.targets))
    would_exclude = excluded_count(rec) + len(missing)
    within = would_exclude / total <= rec.max_excluded + 1e-9
    retried = w.attempts - w.unanswered  # attempts that ready nodes answered
    retry = (
        not no
        and not unanswered
        and bool(missing)
        and retried < 2
        and within
        and bool(remaining)
        and rec.state not in TERMINAL_STATES
    )
    if retry:
        outcomes = [
            replace(
                o,
                outcome="excluded",
                reason="missed the vote deadline; left out of the retry, catches up later",
            )
            if o.node in missing
            else o
            for o in outcomes
        ]
        w = replace(
            w,
            state="pending",
            txids=[*w.txids, txid],
            excluded=sorted({*w.excluded, *missing}),
            outcomes=merge_outcomes(w.outcomes, outcomes),
        )
    else:
        w = replace(w, txids=[*w.txids, txid], outcomes=merge_outcomes(w.outcomes, outcomes))
    out = set_wave(rec, index, w)
    out = replace(out, updated_at=now, holder=actor, report=report(out))
    outcome: Literal["retrying", "aborted"] = "retrying" if retry else "aborted"
    out = _wave_event(out, index, txid, outcome, outcomes, actor, decision_reason, now)
    if retry or rec.state in TERMINAL_STATES:
        return out
    if no:
        why = "; ".join(f"{v.node}: {v.reason or 'no reason given'}" for v in no)
        reason = f"wave {index} aborted: voted no — {why}"
    elif not missing:
        reason = f"wave {index} aborted: {decision_reason or 'the transaction aborted'}"
    elif unanswered:
        first = w.started_at or now
        reason = (
            f"wave {index} aborted: no node ready to vote answered in {w.attempts} attempt(s) "
            f"over {(now - first).total_seconds():.0f}s (is the bus reachable from the "
            f"agents?); {', '.join(missing)} missed the vote deadline"
        )
    elif retried >= 2:
        reason = (
            f"wave {index} aborted again on its retry: {', '.join(missing)} missed the vote "
            "deadline"
        )
    elif not remaining:
        reason = f"wave {index} aborted: every node of it missed the vote deadline"
    else:
        reason = (
            f"wave {index} aborted: {', '.join(missing)} missed the vote deadline; leaving "
            f"them out would exclude {would_exclude} of {total} targets "
            f"({would_exclude / total:.0%}), over max_excluded {rec.max_excluded:.0%}"
        )
    return fail(out, index, reason, actor=actor)


def unanswered_backoff(n: int) -> float:
    """The wait before the attempt after the ``n``-th unanswered one: 0.5 s, doubling, 5 s
    at most (each attempt already waits its vote deadline)."""
    return min(0.5 * 2.0 ** max(0, n - 1), 5.0)


def _retry_unanswered(
    rec: RolloutInfo,
    index: int,
    txid: str,
    outcomes: list[NodeOutcome],
    delay: float,
    now: datetime,
    actor: str,
) -> RolloutInfo:
    w = rec.waves[index]
    why = (
        f"no node ready to vote answered (the bus or the agents unreachable?); attempt "
        f"{w.attempts + 1} in {delay:g}s"
    )
    w = replace(
        w,
        state="pending",
        txids=[*w.txids, txid],
        unanswered=w.unanswered + 1,
        retry_at=now + timedelta(seconds=delay),
        outcomes=merge_outcomes(w.outcomes, outcomes),
    )
    out = set_wave(rec, index, w)
    out = replace(out, updated_at=now, holder=actor, report=report(out))
    return _wave_event(out, index, txid, "retrying", outcomes, actor, why, now)


def _wave_event(
    rec: RolloutInfo,
    index: int,
    txid: str,
    outcome: Literal["committed", "aborted", "retrying"],
    nodes: list[NodeOutcome],
    actor: str,
    reason: str,
    at: datetime,
) -> RolloutInfo:
    return outbox_event(
        rec,
        f"wave{index}:{txid}",
        RolloutWave(
            namespace=rec.namespace,
            actor=actor,
            at=at,
            rollout_id=rec.rollout_id,
            version=rec.version,
            wave=index,
            txid=txid,
            outcome=outcome,
            nodes=nodes,
            reason=reason,
        ),
    )


def record_verdict(
    rec: RolloutInfo,
    index: int,
    *,
    verdict: Literal["pass", "fail", "no_data"],
    samples: int,
    reason: str,
    passed: bool,
    actor: str,
    alert: Alert | None,
) -> RolloutInfo:
    w = rec.waves[index]
    now = utcnow()
    w = replace(
        w,
        verdict=verdict,
        verdict_samples=samples,
        verdict_reason=reason,
        baked_at=now,
        state="done" if passed else "failed",
    )
    out = set_wave(rec, index, w)
    out = replace(
        out,
        current_wave=index + 1 if passed else index,
        updated_at=now,
        holder=actor,
        report=report(out),
    )
    out = outbox_event(
        out,
        f"baked{index}",
        RolloutBaked(
            namespace=rec.namespace,
            actor=actor,
            at=now,
            reason=reason,
            rollout_id=rec.rollout_id,
            version=rec.version,
            wave=index,
            verdict=verdict,
        ),
    )
    if passed:
        return out
    why = f"the health verdict after wave {index} is {verdict}" + (f": {reason}" if reason else "")
    return fail(out, index, why, actor=actor, alert=alert)


def set_next(rec: RolloutInfo, pending: PendingVersion) -> RolloutInfo:
    return replace(rec, next=pending, updated_at=utcnow())


def wave_nodes(rec: RolloutInfo, index: int) -> list[str]:
    w = rec.waves[index]
    return [n for n in w.nodes if n not in w.excluded and n not in w.already]
