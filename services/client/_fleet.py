"""What ``status --at``, ``why`` and ``diff-fleet`` answer, computed from fleet states.

Pure functions over ``confbus.schemas.fleet.FleetState`` (folded by ``confbus.schemas.fold``,
read by ``confbus.client._reconstruct``): no I/O, so the CLI, the Python client and the console
show the same answer. Every step of an explanation carries the stream sequence of its event; what
the stream does not hold is said to be unknown, with the time from which it knows nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from confbus.runtime.errors import NotFound
from confbus.schemas.fleet import (
    AppliedFact,
    FleetState,
    NodeFact,
    RollbackFact,
    RolloutFact,
    TxnFact,
    VersionFact,
)
from confbus.schemas.variants import BASE

Known = Literal["known", "none", "unknown"]


class NodeAt(msgspec.Struct, frozen=True, kw_only=True):
    """One node at a past moment (``FleetAt.nodes``)."""

    node: str
    # known: a node.applied says what its file held; none: it had applied nothing (the stream
    # holds the whole history); unknown: the stream no longer holds what it applied.
    applied: Known
    version: int | None = None
    sha256: str | None = None
    applied_at: datetime | None = None
    applied_seq: int | None = None
    txid: str | None = None
    target: int | None = None  # max(committed transactions it was in, production)
    liveness: str = "unknown"  # live | away | gone | unknown
    liveness_since: datetime | None = None
    failing: str | None = None
    drift: bool = False
    wave: int | None = None  # its wave (1-based) in the namespace's current or last rollout
    unknown_since: datetime | None = None  # the stream knows nothing of it before this
    # Which variant of its version its bytes are (docs/design.md §2.6): the overlays that
    # applied, "+"-joined, or "base"; None: not known (no version, or not told by its sha256).
    variant: str | None = None


class RolloutAt(msgspec.Struct, frozen=True, kw_only=True):
    """A rollout as it stood at a past moment."""

    rollout_id: str
    version: int
    strategy: str
    state: str
    wave: int | None  # the wave (1-based) it had reached
    waves: int
    started_seq: int | None
    ended_seq: int | None


class FleetAt(msgspec.Struct, frozen=True, kw_only=True):
    """The fleet of a namespace at a past moment (``Client.status_at``)."""

    namespace: str
    seq: int  # every event stored up to this sequence, and none after it
    at: datetime | None  # the moment asked for (or the stored time of ``seq``)
    complete: bool  # the stream holds the namespace's whole history up to then
    origin_at: datetime | None  # when not complete: nothing is known before this
    production: int | None
    production_sha256: str | None
    last_good: int | None
    rollout: RolloutAt | None
    nodes: list[NodeAt]
    checkpoint_seq: int = 0  # where the reconstruction started (0: the stream's start)
    events_read: int = 0
    skipped: int = 0  # events of types this build does not know


class WhyStep(msgspec.Struct, frozen=True, kw_only=True):
    """One link of ``Why``: what happened, and the stream sequence of the event that says so."""

    kind: str  # apply | transaction | wave | rollout | catch-up | batch | rollback | alert |
    #            verdict | version | unknown
    seq: int | None  # the event that says so (None: the stream does not hold it)
    at: datetime | None
    summary: str


class Why(msgspec.Struct, frozen=True, kw_only=True):
    """Why a node runs its version (``Client.why``): the chain of events, newest first."""

    namespace: str
    node: str
    seq: int
    at: datetime | None
    steps: list[WhyStep]  # newest first: the apply, then what caused it
    notes: list[WhyStep] = []  # where the node should be, and how it was doing
    # Which variant of its version the node's bytes were (as ``NodeAt.variant``).
    variant: str | None = None


class NodeChange(msgspec.Struct, frozen=True, kw_only=True):
    """A node whose applied version changed between two moments (``FleetDiff``)."""

    node: str
    from_version: int | None
    to_version: int | None
    from_sha256: str | None
    to_sha256: str | None
    applies: int  # how many applies in between (1: straight there)
    via: str  # what made the last of them
    seq: int | None  # the last apply's event


class FleetDiff(msgspec.Struct, frozen=True, kw_only=True):
    """The fleet between two moments (``Client.diff_fleet``)."""

    namespace: str
    from_seq: int
    from_at: datetime | None
    to_seq: int
    to_at: datetime | None
    changed: list[NodeChange]
    unchanged: int
    rollouts: list[RolloutAt]  # started or ended in between
    rollbacks: list[str]  # summaries of the rollbacks started or ended in between
    complete: bool


# -- status --at ----------------------------------------------------------------------------


def fleet_at(
    state: FleetState, *, at: datetime | None, checkpoint_seq: int = 0, events_read: int = 0
) -> FleetAt:
    production = state.production.version if state.production else None
    prod = state.versions.get(production) if production is not None else None
    rollout = state.rollouts.get(state.rollout) if state.rollout else None
    waves = _wave_of_nodes(rollout)
    nodes = [
        _node_at(state, fact, production, waves.get(name))
        for name, fact in sorted(state.nodes.items())
    ]
    return FleetAt(
        namespace=state.namespace,
        seq=state.seq,
        at=at if at is not None else state.at,
        complete=state.complete,
        origin_at=None if state.complete else state.origin_at,
        production=production,
        production_sha256=prod.sha256 if prod else None,
        last_good=state.last_good.version if state.last_good else None,
        rollout=rollout_at(rollout) if rollout else None,
        nodes=nodes,
        checkpoint_seq=checkpoint_seq,
        events_read=events_read,
        skipped=state.skipped,
    )


def _node_at(state: FleetState, fact: NodeFact, production: int | None, wave: int | None) -> NodeAt:
    a = fact.applied
    targets = [v for v in (fact.target, production) if v is not None]
    unknown_since = None if state.complete else state.origin_at
    return NodeAt(
        node=fact.node,
        applied="known" if a else ("none" if state.complete else "unknown"),
        version=a.version if a else None,
        sha256=a.sha256 if a else None,
        applied_at=a.at if a else None,
        applied_seq=a.seq if a else None,
        txid=a.txid if a else None,
        target=max(targets) if targets else None,
        liveness=fact.liveness or "unknown",
        liveness_since=fact.liveness_at,
        failing=fact.failing,
        drift=fact.drift_seq is not None,
        wave=wave,
        unknown_since=unknown_since if a is None else None,
        variant=plain_variant(state, a),
    )


def plain_variant(state: FleetState, applied: AppliedFact | None) -> str | None:
    """``base`` for bytes that are their version's own (the sha256 of its version.created): a
    version without overlays. None otherwise: a variant's bytes are told apart by the store
    (``Client.node_variants``, docs/design.md §2.6) — the audit log alone cannot."""
    if applied is None:
        return None
    own = state.versions.get(applied.version)
    return BASE if own is not None and own.sha256 == applied.sha256 else None


def _wave_of_nodes(rollout: RolloutFact | None) -> dict[str, int]:
    if rollout is None:
        return {}
    return {n: w.index + 1 for w in rollout.waves for n in w.nodes}


def rollout_at(r: RolloutFact) -> RolloutAt:
    reached = [w.index for w in r.waves if w.seq is not None]
    return RolloutAt(
        rollout_id=r.rollout_id,
        version=r.version,
        strategy=r.strategy,
        state=r.state,
        wave=max(reached) + 1 if reached else None,
        waves=len(r.waves),
        started_seq=r.seq,
        ended_seq=r.ended_seq,
    )


# -- why ---------------------------------------------------------------------------------------


def why(state: FleetState, node: str, *, at: datetime | None = None) -> Why:
    """``NotFound`` for a node no event names up to then (while the stream holds the whole
    history: otherwise it may be one whose events are past retention, said to be unknown)."""
    fact = state.nodes.get(node)
    if fact is None and state.complete:
        raise NotFound(
            f"no event of {state.namespace} names node {node!r} up to seq {state.seq}",
            where="node",
        )
    steps: list[WhyStep] = []
    notes: list[WhyStep] = []
    if fact is None or fact.applied is None:
        steps.append(_nothing(state, node))
    else:
        steps.extend(origin(state, fact.applied, node))
    if fact is not None:
        notes.extend(_notes(state, fact))
    return Why(
        namespace=state.namespace,
        node=node,
        seq=state.seq,
        at=at if at is not None else state.at,
        steps=steps,
        notes=notes,
        variant=plain_variant(state, fact.applied if fact else None),
    )


def _nothing(state: FleetState, node: str) -> WhyStep:
    if not state.complete:
        return WhyStep(
            kind="unknown",
            seq=None,
            at=state.origin_at,
            summary=f"unknown since {_t(state.origin_at)}: the stream holds no apply of {node} "
            "after that (older events are past its retention)",
        )
    return WhyStep(kind="apply", seq=None, at=None, summary=f"{node} had applied no version yet")


def origin(state: FleetState, applied: AppliedFact, node: str) -> list[WhyStep]:
    """The chain that put ``applied`` on ``node``, newest first."""
    steps = [
        WhyStep(
            kind="apply",
            seq=applied.seq,
            at=applied.at,
            summary=f"{node} applied v{applied.version} (sha256 {applied.sha256[:12]}…)"
            + (f" in txn {applied.txid}" if applied.txid else " outside a transaction"),
        )
    ]
    txn = state.txns.get(applied.txid) if applied.txid else None
    if applied.txid and txn is None:
        steps.append(
            WhyStep(kind="transaction", seq=None, at=None,
                    summary=f"txn {applied.txid}: no longer in the fold's memory or the stream")
        )  # fmt: skip
    if txn is not None:
        steps.append(_txn_step(txn))
    version = state.versions.get(applied.version)
    rollback = _rollback_for(state, applied.version, txn)
    catchup = txn is not None and txn.catchup_seq is not None
    if txn is not None and txn.rollout_id is not None:
        rollout = state.rollouts.get(txn.rollout_id)
        steps.extend(_rollout_steps(txn, rollout))
    elif txn is not None and catchup:
        steps.append(
            WhyStep(kind="catch-up", seq=txn.catchup_seq, at=None,
                    summary=f"catch-up ({txn.catchup_kind}) of {txn.catchup_node} to "
                    f"v{txn.version}: it was behind its target")
        )  # fmt: skip
    if rollback is not None:
        # A catch-up to a rollback's version was no batch of it; the rollback still explains
        # the version.
        steps.extend(_rollback_steps(rollback, node, txn, batch=not catchup))
    steps.append(_version_step(version, applied.version))
    if rollback is not None:
        steps.extend(_trigger_steps(state, rollback))
    return steps


def _txn_step(txn: TxnFact) -> WhyStep:
    if txn.decision is None:
        return WhyStep(
            kind="transaction",
            seq=None,
            at=None,
            summary=f"txn {txn.txid} of v{txn.version}: its decision event is not in the stream",
        )
    votes = (
        "votes: " + ", ".join(f"{v.vote} from {v.node}" for v in txn.against)
        if txn.against
        else f"all {txn.participants} voted yes"
    )
    return WhyStep(
        kind="transaction",
        seq=txn.seq,
        at=txn.at,
        summary=f"txn {txn.txid} {txn.decision} v{txn.version} at epoch {txn.epoch}, "
        f"{txn.participants} participant(s), {votes}",
    )


def _rollout_steps(txn: TxnFact, rollout: RolloutFact | None) -> list[WhyStep]:
    waves = len(rollout.waves) if rollout else 0
    of = f"/{waves}" if waves else ""
    steps = [
        WhyStep(kind="wave", seq=txn.wave_seq, at=None,
                summary=f"wave {(txn.wave or 0) + 1}{of} of rollout {txn.rollout_id}")
    ]  # fmt: skip
    if rollout is None:
        return steps
    state = rollout.state.replace("_", " ")
    ended = f", {state} (seq {rollout.ended_seq})" if rollout.ended_seq else f", {state}"
    by = f" by {rollout.actor}" if rollout.actor else ""
    steps.append(
        WhyStep(kind="rollout", seq=rollout.seq, at=rollout.at,
                summary=f"rollout {rollout.rollout_id} of v{rollout.version} "
                f"({rollout.strategy or 'strategy unknown'}, {waves} wave(s)){by}{ended}")
    )  # fmt: skip
    return steps


def _rollback_for(state: FleetState, version: int, txn: TxnFact | None) -> RollbackFact | None:
    """The rollback whose batch switched ``txn``, else the one that created ``version`` (a new
    version with old bytes, §6.5)."""
    if txn is not None and txn.rollback_id in state.rollbacks:
        return state.rollbacks[txn.rollback_id]
    found = [rb for rb in state.rollbacks.values() if rb.new_version == version]
    return found[-1] if found else None


def _rollback_steps(
    rb: RollbackFact, node: str, txn: TxnFact | None, *, batch: bool
) -> list[WhyStep]:
    steps = []
    if txn is not None and txn.rollback_id == rb.rollback_id:
        index: int | None = txn.batch  # the batch event named this transaction
    else:  # events of before rollback.batch named its transactions: by the planned nodes
        index = next((i for i, b in enumerate(rb.batches) if node in b), None)
    if batch and index is not None:
        done = next((b for b in rb.done if b.batch == index), None)
        health = ""
        if done is not None and done.healthy_share is not None:
            health = f", {done.healthy_share:.0%} healthy after it"
        steps.append(
            WhyStep(kind="batch", seq=done.seq if done else None, at=None,
                    summary=f"batch {index + 1}/{len(rb.batches)} of rollback "
                    f"{rb.rollback_id}{health}" + ("" if done else " (its result not yet in)"))
        )  # fmt: skip
    by = f" by {rb.actor}" if rb.actor else ""
    steps.append(
        WhyStep(kind="rollback", seq=rb.seq, at=rb.at,
                summary=f"rollback {rb.rollback_id} from v{rb.from_version} to the bytes of "
                f"v{rb.to_version} as v{rb.new_version}{by}, {rb.state}"
                + (f": {rb.reason}" if rb.reason else ""))
    )  # fmt: skip
    return steps


def _trigger_steps(state: FleetState, rb: RollbackFact) -> list[WhyStep]:
    steps = []
    if rb.alert_id:
        steps.append(
            WhyStep(kind="alert", seq=rb.seq, at=rb.at,
                    summary=f"alert {rb.alert_id} (named by rollback.started)")
        )  # fmt: skip
    bad = state.versions.get(rb.from_version) if rb.from_version else None
    verdict = bad.failed_verdict if bad else None
    if verdict is not None:
        where = (
            f" in the bake of wave {(verdict.wave or 0) + 1} of rollout {verdict.rollout_id}"
            if verdict.rollout_id
            else ""
        )
        steps.append(
            WhyStep(kind="verdict", seq=verdict.seq, at=verdict.at,
                    summary=f"verdict {verdict.verdict} on v{rb.from_version}{where}"
                    + (f": {verdict.reason}" if verdict.reason else ""))
        )  # fmt: skip
    elif not rb.alert_id:
        steps.append(
            WhyStep(kind="alert", seq=rb.seq, at=rb.at,
                    summary="no alert: an operator asked for it"
                    + (f" ({rb.actor})" if rb.actor else ""))
        )  # fmt: skip
    return steps


def _version_step(v: VersionFact | None, number: int) -> WhyStep:
    if v is None or v.seq is None:
        return WhyStep(
            kind="version",
            seq=None,
            at=None,
            summary=f"v{number}: its version.created is not in the stream",
        )
    parts = [f"v{v.version} created"]
    if v.author:
        parts.append(f"by {v.author}")
    if v.message:
        parts.append(f'"{v.message}"')
    parts.append(f"change {v.change_id}" if v.change_id else "")
    if v.rollback_of is not None:
        parts.append(f"with the bytes of v{v.rollback_of} (a rollback)")
    if v.sha256:
        parts.append(f"sha256 {v.sha256[:12]}…")
    return WhyStep(kind="version", seq=v.seq, at=v.at, summary=" ".join(p for p in parts if p))


def _notes(state: FleetState, fact: NodeFact) -> list[WhyStep]:
    notes = []
    production = state.production.version if state.production else None
    applied = fact.applied.version if fact.applied else None
    if fact.target is not None and (applied is None or fact.target > applied):
        notes.append(
            WhyStep(kind="target", seq=fact.target_seq, at=None,
                    summary=f"its target is v{fact.target} (txn {fact.target_txid} committed "
                    "it), not yet applied")
        )  # fmt: skip
    if production is not None and (applied is None or production > applied):
        assert state.production is not None
        notes.append(
            WhyStep(kind="production", seq=state.production.seq, at=state.production.at,
                    summary=f"production is v{production}")
        )  # fmt: skip
    if fact.liveness is not None:
        notes.append(
            WhyStep(kind="liveness", seq=fact.liveness_seq, at=fact.liveness_at,
                    summary=f"{fact.node} {fact.liveness} since {_t(fact.liveness_at)}")
        )  # fmt: skip
    if fact.failing:
        notes.append(
            WhyStep(kind="failing", seq=fact.failing_seq, at=None,
                    summary=f"catch-up failing: {fact.failing}")
        )  # fmt: skip
    if fact.drift_seq is not None:
        notes.append(
            WhyStep(kind="drift", seq=fact.drift_seq, at=None,
                    summary=f"its live file drifted (sha256 {(fact.drift_sha256 or '')[:12]}…)")
        )  # fmt: skip
    return notes


# -- diff-fleet ---------------------------------------------------------------------------------


def diff(before: FleetState, after: FleetState) -> FleetDiff:
    changed: list[NodeChange] = []
    unchanged = 0
    for name in sorted(set(before.nodes) | set(after.nodes)):
        a = before.nodes.get(name)
        b = after.nodes.get(name)
        old = a.applied if a else None
        new = b.applied if b else None
        if _same(old, new):
            unchanged += 1
            continue
        changed.append(
            NodeChange(
                node=name,
                from_version=old.version if old else None,
                to_version=new.version if new else None,
                from_sha256=old.sha256 if old else None,
                to_sha256=new.sha256 if new else None,
                applies=(b.applies if b else 0) - (a.applies if a else 0),
                via=_via(after, new, name) if new else "",
                seq=new.seq if new else None,
            )
        )
    lo, hi = before.seq, after.seq
    rollouts = [
        rollout_at(r)
        for r in after.rollouts.values()
        if _within(r.seq, lo, hi) or _within(r.ended_seq, lo, hi)
    ]
    rollbacks = [
        f"{rb.rollback_id}: v{rb.from_version} → bytes of v{rb.to_version} as "
        f"v{rb.new_version}, {rb.state}" + (f" (alert {rb.alert_id})" if rb.alert_id else "")
        for rb in after.rollbacks.values()
        if _within(rb.seq, lo, hi) or _within(rb.ended_seq, lo, hi)
    ]
    return FleetDiff(
        namespace=after.namespace,
        from_seq=lo,
        from_at=before.at,
        to_seq=hi,
        to_at=after.at,
        changed=changed,
        unchanged=unchanged,
        rollouts=rollouts,
        rollbacks=rollbacks,
        complete=before.complete and after.complete,
    )


def _same(a: AppliedFact | None, b: AppliedFact | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.version, a.sha256, a.seq) == (b.version, b.sha256, b.seq)


def _within(seq: int | None, lo: int, hi: int) -> bool:
    return seq is not None and lo < seq <= hi


def _via(state: FleetState, applied: AppliedFact, node: str) -> str:
    steps = origin(state, applied, node)
    for kind in ("wave", "batch", "catch-up"):
        found = [s for s in steps if s.kind == kind]
        if found:
            return found[0].summary
    return steps[1].summary if len(steps) > 1 else steps[0].summary


def _t(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z" if at else "?"
