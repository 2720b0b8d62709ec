"""What the audit log means: the fold from ``CFG_EVENTS`` to a namespace's ``FleetState``.

``fold(state, seq, at, event)`` applies one event, in stream order, in place; it does no I/O and
depends on nothing but its arguments, so every reader — the CLI and the Python client, the
historian that writes checkpoints, a console — computes the same state from the same events,
and a state written as a checkpoint and read back folds on exactly as if it had never been
written (docs/design.md §8.10). It lives beside the contract because it *is* the contract's
meaning: which fact each event establishes.

What each event says:

- ``node.applied`` is the only event that says what a node's live file holds (the agent emits
  it after the rename, also after a restart for an apply it had not announced); the last one
  of a node wins.
- ``txn.committed`` raises the target of each participant (never lowers it); with
  ``version.promoted`` (production) it says where a node should be (docs/design.md §3.6).
- ``node.status`` gives liveness (``live``/``away``/``gone``, one vocabulary with
  ``confbus status``; an old log's ``suspect`` is read as ``away``) or says catch-up keeps
  failing (``failing``, cleared by the next ``live``); ``node.left`` (an agent stopped on
  purpose) makes the node ``away`` at once.
- ``rollout.*``, ``rollback.*``, ``node.catchup``, ``health.verdict`` and ``version.created``
  explain: each transaction learns the wave, catch-up or rollback that asked for it.

The state stays bounded (docs/design.md §8.7): transactions, rollouts, rollbacks and versions
no node's current state refers to are dropped, oldest first, beyond a few dozen; a rollout that
is no longer the namespace's current one keeps its waves' count, not their node lists.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from confbus.schemas.events import (
    AnyEvent,
    HealthVerdictEvent,
    NodeApplied,
    NodeCatchUp,
    NodeDrift,
    NodeLeft,
    NodeStatusChanged,
    RollbackBatch,
    RollbackCompleted,
    RollbackStarted,
    RollbackStuck,
    RolloutBaked,
    RolloutCompleted,
    RolloutFailed,
    RolloutPaused,
    RolloutResumed,
    RolloutRolledBack,
    RolloutStarted,
    RolloutSuperseded,
    RolloutWave,
    TxnAborted,
    TxnCommitted,
    VersionApproved,
    VersionCreated,
    VersionLastGood,
    VersionPromoted,
)
from confbus.schemas.fleet import (
    AppliedFact,
    BatchFact,
    FleetState,
    Liveness,
    NodeFact,
    Pointer,
    RollbackFact,
    RolloutFact,
    TxnFact,
    VerdictFact,
    VersionFact,
    WaveFact,
)

# Kept beyond what the nodes refer to, newest first (docs/design.md §8.7).
KEEP_TXNS = 256
KEEP_ROLLOUTS = 64
KEEP_ROLLBACKS = 32
KEEP_VERSIONS = 128
# Pruning walks every node: once per this many events, at the same events whoever folds (the
# count is in the state), so a checkpoint changes nothing. What it keeps can exceed the numbers
# above (every node may refer to its own old rollout), which is why it is not triggered by size.
PRUNE_EVERY = 1024

K = TypeVar("K")
V = TypeVar("V")


def new_state(
    namespace: str,
    *,
    origin_seq: int = 1,
    origin_at: datetime | None = None,
    stream_created: str = "",
) -> FleetState:
    """The state before the event at ``origin_seq`` (1: before anything happened)."""
    return FleetState(
        namespace=namespace,
        seq=max(0, origin_seq - 1),
        origin_seq=origin_seq,
        origin_at=origin_at,
        stream_created=stream_created,
    )


def fold(state: FleetState, seq: int, at: datetime | None, event: AnyEvent | None) -> None:
    """Apply the event stored at ``seq`` (``None``: one this build cannot read, counted)."""
    if seq <= state.seq:
        return  # already folded in (a checkpoint ahead of the reader's start)
    state.seq, state.at = seq, at
    state.events += 1
    if event is None:
        state.skipped += 1
        return
    handler = _HANDLERS.get(type(event))
    if handler is not None:
        handler(state, seq, at, event)
    if state.events % PRUNE_EVERY == 0:
        prune(state)


def _fact(facts: dict[K, V], key: K, new: Callable[[], V]) -> V:
    """The fact kept under ``key``, made by ``new()`` when an event first names it."""
    fact = facts.get(key)
    if fact is None:
        fact = facts[key] = new()
    return fact


# -- nodes ---------------------------------------------------------------------------------------


def _node(state: FleetState, name: str, seq: int) -> NodeFact:
    return _fact(state.nodes, name, lambda: NodeFact(node=name, seen_seq=seq))


def _applied(state: FleetState, seq: int, at: datetime | None, ev: NodeApplied) -> None:
    node = _node(state, ev.node, seq)
    old = node.applied
    if old is not None and (old.version, old.sha256) == (ev.version, ev.sha256):
        # The same apply announced again (after a restart): the first one says when.
        if old.txid is None and ev.txid is not None:
            old.txid = ev.txid
        return
    node.applied = AppliedFact(version=ev.version, sha256=ev.sha256, seq=seq, at=at, txid=ev.txid)
    node.applies += 1
    node.drift_sha256 = node.drift_seq = None


def _drift(state: FleetState, seq: int, at: datetime | None, ev: NodeDrift) -> None:
    node = _node(state, ev.node, seq)
    node.drift_sha256, node.drift_seq = ev.found_sha256, seq


def _status(state: FleetState, seq: int, at: datetime | None, ev: NodeStatusChanged) -> None:
    node = _node(state, ev.node, seq)
    if ev.status == "failing":
        node.failing, node.failing_seq = ev.reason or "failing", seq
        return
    if ev.status == "live":
        node.failing = node.failing_seq = None
    liveness: Liveness = "away" if ev.status == "suspect" else ev.status
    node.liveness, node.liveness_seq, node.liveness_at = liveness, seq, at


def _left(state: FleetState, seq: int, at: datetime | None, ev: NodeLeft) -> None:
    node = _node(state, ev.node, seq)
    node.liveness, node.liveness_seq, node.liveness_at = "away", seq, at


def _catchup(state: FleetState, seq: int, at: datetime | None, ev: NodeCatchUp) -> None:
    _node(state, ev.node, seq)
    if ev.txid is not None:
        txn = _txn(state, ev.txid, ev.version)
        txn.catchup_node, txn.catchup_kind, txn.catchup_seq = ev.node, ev.kind, seq


# -- transactions ----------------------------------------------------------------------------


def _txn(state: FleetState, txid: str, version: int) -> TxnFact:
    return _fact(state.txns, txid, lambda: TxnFact(txid=txid, version=version))


def _decided(
    state: FleetState, seq: int, at: datetime | None, ev: TxnCommitted | TxnAborted
) -> None:
    txn = _txn(state, ev.txid, ev.version)
    if txn.decision is not None:
        return  # announced again by a recovering coordinator: the first one stands
    committed = isinstance(ev, TxnCommitted)
    txn.decision = "committed" if committed else "aborted"
    txn.seq, txn.at, txn.epoch = seq, at, ev.epoch
    txn.participants = len(ev.participants)
    txn.against = [v for v in ev.votes if v.vote != "yes"]
    for name in ev.participants:
        node = _node(state, name, seq)
        if committed and (node.target is None or ev.version > node.target):
            node.target, node.target_txid, node.target_seq = ev.version, ev.txid, seq


# -- versions ------------------------------------------------------------------------------------


def _version(state: FleetState, version: int) -> VersionFact:
    return _fact(state.versions, version, lambda: VersionFact(version=version))


def _created(state: FleetState, seq: int, at: datetime | None, ev: VersionCreated) -> None:
    v = _version(state, ev.version)
    if v.seq is not None:
        return
    v.seq, v.at, v.sha256, v.author = seq, at, ev.sha256, ev.actor
    v.message, v.change_id, v.parent = ev.message, ev.change_id, ev.parent
    v.rollback_of, v.status = ev.rollback_of, ev.status


def _approved(state: FleetState, seq: int, at: datetime | None, ev: VersionApproved) -> None:
    _version(state, ev.version).status = "approved"


def _promoted(state: FleetState, seq: int, at: datetime | None, ev: VersionPromoted) -> None:
    _version(state, ev.version).status = "production"
    if ev.previous is not None and ev.previous != ev.version:
        _version(state, ev.previous).status = "superseded"
    state.production = Pointer(version=ev.version, seq=seq, at=at)


def _last_good(state: FleetState, seq: int, at: datetime | None, ev: VersionLastGood) -> None:
    _version(state, ev.version)
    state.last_good = Pointer(version=ev.version, seq=seq, at=at)


def _verdict(state: FleetState, seq: int, at: datetime | None, ev: HealthVerdictEvent) -> None:
    if ev.verdict == "fail":
        _version(state, ev.version).failed_verdict = VerdictFact(
            seq=seq, at=at, verdict=ev.verdict, nodes=len(ev.nodes), samples=ev.samples,
            reason=ev.reason,
        )  # fmt: skip


# -- rollouts ----------------------------------------------------------------------------------


def _rollout(state: FleetState, rollout_id: str, version: int) -> RolloutFact:
    return _fact(
        state.rollouts, rollout_id, lambda: RolloutFact(rollout_id=rollout_id, version=version)
    )


def _wave(rollout: RolloutFact, index: int) -> WaveFact:
    while len(rollout.waves) <= index:
        rollout.waves.append(WaveFact(index=len(rollout.waves)))
    return rollout.waves[index]


def _started(state: FleetState, seq: int, at: datetime | None, ev: RolloutStarted) -> None:
    r = _rollout(state, ev.rollout_id, ev.version)
    previous = state.rollouts.get(state.rollout) if state.rollout else None
    if previous is not None and previous is not r:
        # History now: what remains to tell of it is how many waves and which one switched a
        # transaction (in the transaction), not the 1,000 node names of each wave.
        for wave in previous.waves:
            wave.nodes = []
    if r.seq is None:
        r.seq, r.at, r.strategy, r.actor = seq, at, ev.strategy, ev.actor
        for i, nodes in enumerate(ev.waves):
            _wave(r, i).nodes = list(nodes)
            for name in nodes:
                _node(state, name, seq)
    state.rollout = ev.rollout_id


def _wave_event(state: FleetState, seq: int, at: datetime | None, ev: RolloutWave) -> None:
    r = _rollout(state, ev.rollout_id, ev.version)
    w = _wave(r, ev.wave)
    if w.outcome != "committed":
        w.txid, w.outcome, w.seq = ev.txid, ev.outcome, seq
    if ev.outcome == "committed":
        txn = _txn(state, ev.txid, ev.version)
        txn.rollout_id, txn.wave, txn.wave_seq = ev.rollout_id, ev.wave, seq
    if state.rollout is None:
        state.rollout = ev.rollout_id


def _baked(state: FleetState, seq: int, at: datetime | None, ev: RolloutBaked) -> None:
    r = _rollout(state, ev.rollout_id, ev.version)
    w = _wave(r, ev.wave)
    w.verdict, w.verdict_seq = ev.verdict, seq
    if ev.verdict == "fail":
        _version(state, ev.version).failed_verdict = VerdictFact(
            seq=seq, at=at, verdict=ev.verdict, nodes=len(w.nodes), reason=ev.reason,
            rollout_id=ev.rollout_id, wave=ev.wave,
        )  # fmt: skip


_ENDINGS: dict[type, str] = {
    RolloutCompleted: "completed",
    RolloutFailed: "failed",
    RolloutSuperseded: "superseded",
    RolloutRolledBack: "rolled_back",
}


def _ended(
    state: FleetState,
    seq: int,
    at: datetime | None,
    ev: RolloutCompleted | RolloutFailed | RolloutSuperseded | RolloutRolledBack,
) -> None:
    r = _rollout(state, ev.rollout_id, ev.version)
    # failed → rolled_back is the one move out of an ended state (docs/design.md §3.5).
    if r.ended_seq is not None and not (r.state == "failed" and isinstance(ev, RolloutRolledBack)):
        return
    r.state = _ENDINGS[type(ev)]  # type: ignore[assignment]
    r.ended_seq, r.ended_at = seq, at
    r.reason, r.actor = ev.reason or r.reason, ev.actor or r.actor
    if isinstance(ev, RolloutFailed):
        r.failed_wave, r.handed_to_rollbacker = ev.wave, ev.handed_to_rollbacker
    elif isinstance(ev, RolloutSuperseded):
        r.superseded_by = ev.by_version


def _paused(
    state: FleetState, seq: int, at: datetime | None, ev: RolloutPaused | RolloutResumed
) -> None:
    r = _rollout(state, ev.rollout_id, ev.version)
    if r.ended_seq is None:
        r.state = "paused" if isinstance(ev, RolloutPaused) else "running"


# -- rollbacks ---------------------------------------------------------------------------------


def _rollback(state: FleetState, rollback_id: str) -> RollbackFact:
    return _fact(state.rollbacks, rollback_id, lambda: RollbackFact(rollback_id=rollback_id))


def _rb_started(state: FleetState, seq: int, at: datetime | None, ev: RollbackStarted) -> None:
    rb = _rollback(state, ev.rollback_id)
    if rb.seq is None:
        rb.seq, rb.at, rb.actor, rb.reason = seq, at, ev.actor, ev.reason
        rb.from_version, rb.to_version, rb.new_version = (
            ev.from_version,
            ev.to_version,
            ev.new_version,
        )
        rb.alert_id, rb.batches = ev.alert_id, [list(b) for b in ev.batches]
        for name in (n for b in ev.batches for n in b):
            _node(state, name, seq)
    state.rollback = ev.rollback_id


def _rb_batch(state: FleetState, seq: int, at: datetime | None, ev: RollbackBatch) -> None:
    rb = _rollback(state, ev.rollback_id)
    for txid in ev.txids:
        txn = _txn(state, txid, rb.new_version or 0)
        txn.rollback_id, txn.batch, txn.batch_seq = ev.rollback_id, ev.batch, seq
    if all(b.batch != ev.batch for b in rb.done):
        rb.done.append(
            BatchFact(batch=ev.batch, seq=seq, healthy_share=ev.healthy_share, reason=ev.reason)
        )
    while len(rb.batches) <= ev.batch:
        rb.batches.append([])
    if not rb.batches[ev.batch]:
        rb.batches[ev.batch] = list(ev.nodes)


def _rb_ended(
    state: FleetState, seq: int, at: datetime | None, ev: RollbackCompleted | RollbackStuck
) -> None:
    rb = _rollback(state, ev.rollback_id)
    if rb.ended_seq is None:
        rb.state = "completed" if isinstance(ev, RollbackCompleted) else "stuck"
        rb.ended_seq = seq
        if isinstance(ev, RollbackCompleted) and rb.new_version is None:
            rb.new_version = ev.new_version


_HANDLERS: dict[type, Callable[[FleetState, int, datetime | None, Any], None]] = {
    NodeApplied: _applied,
    NodeDrift: _drift,
    NodeStatusChanged: _status,
    NodeLeft: _left,
    NodeCatchUp: _catchup,
    TxnCommitted: _decided,
    TxnAborted: _decided,
    VersionCreated: _created,
    VersionApproved: _approved,
    VersionPromoted: _promoted,
    VersionLastGood: _last_good,
    HealthVerdictEvent: _verdict,
    RolloutStarted: _started,
    RolloutWave: _wave_event,
    RolloutBaked: _baked,
    RolloutCompleted: _ended,
    RolloutFailed: _ended,
    RolloutSuperseded: _ended,
    RolloutRolledBack: _ended,
    RolloutPaused: _paused,
    RolloutResumed: _paused,
    RollbackStarted: _rb_started,
    RollbackBatch: _rb_batch,
    RollbackCompleted: _rb_ended,
    RollbackStuck: _rb_ended,
}


# -- bounds ------------------------------------------------------------------------------------


def prune(state: FleetState) -> None:
    """Drop what no node refers to, beyond the newest few of each kind (deterministic: the
    same state always keeps the same entries, so checkpoints do not change answers)."""
    txids = {n.applied.txid for n in state.nodes.values() if n.applied and n.applied.txid}
    txids |= {n.target_txid for n in state.nodes.values() if n.target_txid}
    state.txns = _keep(state.txns, txids, KEEP_TXNS)
    rollouts = {t.rollout_id for t in state.txns.values() if t.rollout_id}
    if state.rollout:
        rollouts.add(state.rollout)
    state.rollouts = _keep(state.rollouts, rollouts, KEEP_ROLLOUTS)
    versions = {v for n in state.nodes.values() for v in _node_versions(n)}
    for pointer in (state.production, state.last_good):
        if pointer is not None:
            versions.add(pointer.version)
    versions |= {r.version for r in state.rollouts.values()}
    rollbacks = {rb.rollback_id for rb in state.rollbacks.values() if rb.new_version in versions}
    rollbacks |= {t.rollback_id for t in state.txns.values() if t.rollback_id}
    if state.rollback:
        rollbacks.add(state.rollback)
    state.rollbacks = _keep(state.rollbacks, rollbacks, KEEP_ROLLBACKS)
    for rb in state.rollbacks.values():
        versions |= {v for v in (rb.from_version, rb.to_version, rb.new_version) if v}
    state.versions = _keep(state.versions, versions, KEEP_VERSIONS)


def _node_versions(node: NodeFact) -> tuple[int, ...]:
    applied = (node.applied.version,) if node.applied else ()
    return applied + ((node.target,) if node.target is not None else ())


def _keep(entries: dict[K, V], referenced: set[K], newest: int) -> dict[K, V]:
    keys = list(entries)
    recent = set(keys[-newest:])
    return {k: entries[k] for k in keys if k in referenced or k in recent}
