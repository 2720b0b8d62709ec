"""The rollout record's wave transitions, as pure functions ``RolloutInfo → RolloutInfo``: an
attempt at a wave's switch, its outcome (committed, or aborted: retried whole after a backoff
when no node ready to vote answered, retried without the ready nodes that only missed the
deadline, or failed), and the health verdict after its bake.

Like the transitions of ``record``, each puts the events it implies into the record's outbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Literal

from confbus.distributor.record import (
    elapsed,
    excluded_count,
    fail,
    merge_outcomes,
    outbox_event,
    replace,
    report,
    rollout_event,
    set_wave,
)
from confbus.distributor.strategy import describe_budget, excluded_budget
from confbus.runtime.retry import Backoff
from confbus.schemas.api.dist import TERMINAL_STATES, RolloutInfo
from confbus.schemas.base import utcnow
from confbus.schemas.events import NodeOutcome, RolloutBaked, RolloutWave, VoteRecord
from confbus.schemas.health import Alert

WaveOutcome = Literal["committed", "aborted", "retrying"]  # of an attempt at a wave's switch
# The wait before the attempt after an unanswered one: 0.5 s, doubling, 5 s at most (each
# attempt already waits its vote deadline). Without jitter: the wait is in the record.
UNANSWERED_BACKOFF = Backoff(base_s=0.5, cap_s=5.0)


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
            outcome="away",
            attempts=0,
            wave=index,
            reason="away when its wave began; catches up when it is back",
        )
        for n in down
    ]
    w = replace(
        w,
        state="switching" if nodes else "baking",
        attempts=w.attempts + (1 if nodes else 0),
        already=sorted({*w.already, *already}),
        switch_nodes=nodes,
        switch_started_at=now if nodes else None,
        started_at=w.started_at or now,
        committed_at=None if nodes else now,
        outcomes=merge_outcomes(w.outcomes, outcomes),
    )
    out = set_wave(rec, index, w)
    out = replace(out, away=sorted({*rec.away, *down}))
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
    return _with_wave_event(
        out, index, txid, "committed", merge_outcomes(excluded, outcomes), actor=actor, at=now
    )


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
        delay = UNANSWERED_BACKOFF.ceiling(w.unanswered + 1)
        first = w.started_at or now
        if (now - first).total_seconds() + delay <= rec.retry_unanswered_s:
            return _retry_unanswered(rec, index, txid, outcomes, delay, now, actor)
    remaining = [n for n in w.switch_nodes if n not in missing]
    total = len(rec.targets)
    budget = excluded_budget(rec.max_excluded, total)
    would_exclude = excluded_count(rec) + len(missing)
    within = would_exclude <= budget
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
    outcome: WaveOutcome = "retrying" if retry else "aborted"
    out = _with_wave_event(
        out, index, txid, outcome, outcomes, actor=actor, at=now, reason=decision_reason
    )
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
            f"them out would exclude {would_exclude} of {total} live targets, over "
            f"max_excluded {describe_budget(rec.max_excluded)} ({budget} node(s))"
        )
    return fail(out, index, reason, actor=actor)


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
    return _with_wave_event(out, index, txid, "retrying", outcomes, actor=actor, at=now, reason=why)


def _with_wave_event(
    rec: RolloutInfo,
    index: int,
    txid: str,
    outcome: WaveOutcome,
    nodes: list[NodeOutcome],
    *,
    actor: str,
    at: datetime,
    reason: str = "",
) -> RolloutInfo:
    """The ``rollout.wave`` event of an attempt's outcome, in the outbox (one per txid)."""
    event = rollout_event(
        RolloutWave,
        rec,
        actor=actor,
        at=at,
        reason=reason,
        wave=index,
        txid=txid,
        outcome=outcome,
        nodes=nodes,
    )
    return outbox_event(rec, f"wave{index}:{txid}", event)


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
    baked = rollout_event(
        RolloutBaked, rec, actor=actor, at=now, reason=reason, wave=index, verdict=verdict
    )
    out = outbox_event(out, f"baked{index}", baked)
    if passed:
        return out
    why = f"the health verdict after wave {index} is {verdict}" + (f": {reason}" if reason else "")
    return fail(out, index, why, actor=actor, alert=alert)
