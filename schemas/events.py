"""``CFG_EVENTS``: the audit log. Every state change is a fact here, with actor, reason and time.

The subject of an event is ``cfg.event.<namespace>.<type>`` — the tag *is* the subject suffix —
so ``confbus replay 'cfg.event.payments.rollout.>'`` filters without decoding.
Replaying this stream reconstructs which version every node ran at any moment (docs/design.md §8.8):
``node.applied`` carries the node, the version and the time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from confbus.schemas.api.health import RuleResult
from confbus.schemas.base import DECODE_ERRORS, LazyDecoder, Message, utcnow
from confbus.schemas.names import ChangeId, Epoch, Format, Namespace, NodeId, Sha256, TxId
from confbus.schemas.policydiff import FieldChange


class Event(Message, kw_only=True, frozen=True):
    namespace: Namespace
    at: datetime = msgspec.field(default_factory=utcnow)
    actor: str = ""
    reason: str = ""


# How an event reads (``confbus replay``, the console's pages): what every event has, and its
# ``message``, stand in places of their own, apart from the event's facts; a field that holds a
# version number reads as v<N>.
SHOWN_APART = frozenset({"schema_version", "type", "namespace", "at", "actor", "reason", "message"})
VERSION_FIELDS = frozenset(
    {
        "version",
        "parent",
        "previous",
        "rollback_of",
        "from_version",
        "to_version",
        "new_version",
        "by_version",
        "expected_version",
    }
)


# -- versions (version-store) -------------------------------------------------------------


class VersionCreated(Event, tag="version.created", kw_only=True, frozen=True):
    version: int
    sha256: Sha256
    size: int
    format: Format
    parent: int | None
    change_id: ChangeId
    status: str
    message: str = ""
    rollback_of: int | None = None
    strategy: str | None = None
    selector: dict[str, str] | None = None


class VersionRejected(Event, tag="version.rejected", kw_only=True, frozen=True):
    change_id: str
    where: str = ""  # e.g. the JSON Schema path or the line of a parse error


class VersionApproved(Event, tag="version.approved", kw_only=True, frozen=True):
    version: int


class VersionPromoted(Event, tag="version.promoted", kw_only=True, frozen=True):
    """The version became ``production``; ``previous`` (if any) became ``superseded``."""

    version: int
    previous: int | None = None


class VersionLastGood(Event, tag="version.last_good", kw_only=True, frozen=True):
    version: int
    # The version's sha256, so that an agent can check the copy in its own history without
    # asking the store (None: from a version-store of before 2026-11-27).
    sha256: Sha256 | None = None


# -- policies (version-store) ---------------------------------------------------------------


class PolicyChanged(Event, tag="policy.changed", kw_only=True, frozen=True):
    """The namespace's policy was replaced, by ``actor`` (``confbus policy``, the console, a
    restore, any client): what changed, field by field (``schemas.policydiff``), and the new
    policy's digest (``schemas.policy.policy_digest``)."""

    digest: str
    changes: list[FieldChange] = []
    more: int = 0  # changes beyond those listed (at most MAX_POLICY_CHANGES are)


MAX_POLICY_CHANGES = 50


# -- transactions (coordinator) -------------------------------------------------------------


class VoteRecord(msgspec.Struct, frozen=True, kw_only=True):
    node: NodeId
    vote: Literal["yes", "no", "missing"]
    reason: str = ""


class _TxnEnded(Event, kw_only=True, frozen=True):
    """How a two-phase transaction ended, with the votes that decided it."""

    txid: TxId
    version: int
    epoch: Epoch
    participants: list[NodeId]
    votes: list[VoteRecord] = []


class TxnCommitted(_TxnEnded, tag="txn.committed", kw_only=True, frozen=True):
    """The decision was commit (every participant voted yes): each switches."""


class TxnAborted(_TxnEnded, tag="txn.aborted", kw_only=True, frozen=True):
    """The decision was abort (a no, a missed vote, a takeover): none switches."""


# -- nodes (agent, distributor) -------------------------------------------------------------


class NodeApplied(Event, tag="node.applied", kw_only=True, frozen=True):
    node: NodeId
    version: int
    sha256: Sha256
    txid: TxId | None = None
    previous: int | None = None


class NodeDrift(Event, tag="node.drift", kw_only=True, frozen=True):
    node: NodeId
    expected_version: int
    expected_sha256: Sha256
    found_sha256: str


class NodeStatusChanged(Event, tag="node.status", kw_only=True, frozen=True):
    """A node's liveness changed (``live``, ``away``, ``gone``; see ``Liveness``), or catch-up
    keeps failing on it (``failing``). ``suspect``: ``away`` as older confbus wrote it (kept so
    the audit log it wrote still reads; never written now)."""

    node: NodeId
    status: Literal["live", "away", "gone", "failing", "suspect"]


class NodeLeft(Event, tag="node.left", kw_only=True, frozen=True):
    """An agent stopped on purpose (a signal): it is away from now on, no wave waits for it,
    and it catches up when it comes back."""

    node: NodeId
    instance: str = ""


class NodeDuplicate(Event, tag="node.duplicate", kw_only=True, frozen=True):
    """A second agent heartbeated with a node id another live agent holds: it was refused (it
    stops itself; ``confbus.schemas.node.keeps_node`` says which one keeps the node)."""

    node: NodeId
    instance: str  # the refused agent's
    live_instance: str  # the agent holding the node


class NodeForgotten(Event, tag="node.forgotten", kw_only=True, frozen=True):
    """An operator forgot a node gone for good (``confbus forget``): it is no longer a member
    of the namespace's fleet; its records and target are gone."""

    node: NodeId


class NodeCatchUp(Event, tag="node.catchup", kw_only=True, frozen=True):
    """The distributor brought one node to its target version outside a rollout.

    ``kind="switch"``: a node that was away (or joined later) behind its target got a one-node
    atomic switch (``txid``). ``kind="resync"``: a node whose live file drifted from its applied
    version re-installed that version's bytes (from its own history, else the store). Emitted
    once per attempt; a failed one says when the next try comes (``next_retry_s``).
    """

    node: NodeId
    version: int
    from_version: int | None = None
    kind: Literal["switch", "resync"] = "switch"
    outcome: Literal["applied", "failed"] = "applied"
    attempts: int = 1
    txid: TxId | None = None
    next_retry_s: float | None = None


# -- rollouts (distributor) ------------------------------------------------------------------


class NodeOutcome(msgspec.Struct, frozen=True, kw_only=True):
    node: NodeId
    # away: not live when its wave came (stopped, or its heartbeats stopped); catches up later
    outcome: Literal["applied", "no", "missing", "excluded", "away", "skipped", "pending"]
    attempts: int = 1
    reason: str = ""
    seconds: float | None = None  # from the rollout's start to this node's switch
    wave: int | None = None  # the wave the node belongs to
    txid: TxId | None = None  # the transaction that switched it


class WaveReport(msgspec.Struct, frozen=True, kw_only=True):
    """One wave of a rollout, as the delivery report tells it."""

    index: int
    nodes: list[NodeId]
    state: str  # pending | switching | baking | done | failed | skipped
    txid: TxId | None = None
    attempts: int = 0
    excluded: list[NodeId] = []
    started_at: datetime | None = None
    committed_at: datetime | None = None
    baked_at: datetime | None = None
    verdict: str | None = None  # pass | fail | no_data (the health-watcher's answer)
    switch_s: float | None = None  # the atomic switch itself (prepare → decision)
    unanswered: int = 0  # attempts no node answered (the bus down?), retried with backoff


class RolloutStarted(Event, tag="rollout.started", kw_only=True, frozen=True):
    rollout_id: str
    version: int
    strategy: str
    waves: list[list[NodeId]]
    bake_s: float = 0.0
    selector: dict[str, str] = {}


class RolloutWave(Event, tag="rollout.wave", kw_only=True, frozen=True):
    rollout_id: str
    version: int
    wave: int
    txid: TxId
    outcome: Literal["committed", "aborted", "retrying"]
    nodes: list[NodeOutcome] = []


class RolloutBaked(Event, tag="rollout.baked", kw_only=True, frozen=True):
    rollout_id: str
    version: int
    wave: int
    verdict: Literal["pass", "fail", "no_data"]


class RolloutCompleted(Event, tag="rollout.completed", kw_only=True, frozen=True):
    rollout_id: str
    version: int
    report: list[NodeOutcome] = []
    seconds: float = 0.0
    waves: list[WaveReport] = []
    last_good: bool = False  # the final bake passed with data: marked last known good


class RolloutFailed(Event, tag="rollout.failed", kw_only=True, frozen=True):
    """``wave`` is the wave that failed; -1 when the rollout was refused before any wave
    (unknown strategy, bad selector, no target)."""

    rollout_id: str
    version: int
    wave: int
    report: list[NodeOutcome] = []
    waves: list[WaveReport] = []
    seconds: float = 0.0
    handed_to_rollbacker: bool = False  # a failed bake: an alert went to cfg.alert.<ns>


class RolloutSuperseded(Event, tag="rollout.superseded", kw_only=True, frozen=True):
    rollout_id: str
    version: int
    by_version: int
    report: list[NodeOutcome] = []
    waves: list[WaveReport] = []


class RolloutRolledBack(Event, tag="rollout.rolled_back", kw_only=True, frozen=True):
    rollout_id: str
    version: int
    report: list[NodeOutcome] = []
    waves: list[WaveReport] = []


class RolloutPaused(Event, tag="rollout.paused", kw_only=True, frozen=True):
    rollout_id: str
    version: int


class RolloutResumed(Event, tag="rollout.resumed", kw_only=True, frozen=True):
    rollout_id: str
    version: int


# -- health and rollbacks (health-watcher, rollbacker) ---------------------------------------


class HealthVerdictEvent(Event, tag="health.verdict", kw_only=True, frozen=True):
    version: int
    nodes: list[NodeId]
    verdict: Literal["pass", "fail", "no_data"]
    samples: int = 0
    rules: list[RuleResult] = []  # each rule: value, threshold, PromQL query as run


class RollbackStarted(Event, tag="rollback.started", kw_only=True, frozen=True):
    rollback_id: str
    from_version: int
    to_version: int  # the content restored (last known good or --to)
    new_version: int | None = None  # the new version created with rollback_of=to_version
    alert_id: str | None = None
    batches: list[list[NodeId]] = []


class RollbackBatch(Event, tag="rollback.batch", kw_only=True, frozen=True):
    rollback_id: str
    batch: int
    nodes: list[NodeId]
    healthy_share: float | None = None
    # The batch's transactions, so that an apply can be traced to its batch (docs/design.md
    # §8.10); empty in events of before 2026-12-07, whose batch is found by its nodes.
    txids: list[TxId] = []


class RollbackCompleted(Event, tag="rollback.completed", kw_only=True, frozen=True):
    rollback_id: str
    new_version: int
    seconds: float = 0.0


class RollbackStuck(Event, tag="rollback.stuck", kw_only=True, frozen=True):
    rollback_id: str
    batch: int
    healthy_share: float | None = None


# -- alerts, as the rollbacker judged them (every alert it receives leaves one) ----------------


class AlertJudgement(Event, kw_only=True, frozen=True):
    """``reason`` says why; ``outcome`` is the rollbacker's word for it."""

    alert_id: str
    source: str = ""
    rule: str = ""
    version: int | None = None  # the version the alert is about (its own, or production)
    outcome: str = ""  # started | ignored | refused | busy | held | cooldown | cap | duplicate
    rollback_id: str | None = None


class AlertActed(AlertJudgement, tag="alert.acted", kw_only=True, frozen=True):
    """The alert started a rollback."""


class AlertIgnored(AlertJudgement, tag="alert.ignored", kw_only=True, frozen=True):
    """The alert started nothing: ignored, refused, or held back (busy, held, cooldown, cap)."""


class AlertDuplicate(AlertJudgement, tag="alert.duplicate", kw_only=True, frozen=True):
    """An alert id the rollbacker had judged already (Alertmanager's re-sends)."""


AnyEvent = (
    VersionCreated
    | VersionRejected
    | VersionApproved
    | VersionPromoted
    | VersionLastGood
    | PolicyChanged
    | TxnCommitted
    | TxnAborted
    | NodeApplied
    | NodeDrift
    | NodeStatusChanged
    | NodeLeft
    | NodeDuplicate
    | NodeForgotten
    | NodeCatchUp
    | RolloutStarted
    | RolloutWave
    | RolloutBaked
    | RolloutCompleted
    | RolloutFailed
    | RolloutSuperseded
    | RolloutRolledBack
    | RolloutPaused
    | RolloutResumed
    | HealthVerdictEvent
    | RollbackStarted
    | RollbackBatch
    | RollbackCompleted
    | RollbackStuck
    | AlertActed
    | AlertIgnored
    | AlertDuplicate
)

decode_event: LazyDecoder[AnyEvent] = LazyDecoder(AnyEvent)


def readable_event(data: bytes) -> AnyEvent | None:
    """The event in ``data``, or None when it does not decode (garbage, or a kind this confbus
    does not know): for readers that skip such a message rather than stop."""
    try:
        event: AnyEvent = decode_event(data)
    except DECODE_ERRORS:
        return None
    return event
