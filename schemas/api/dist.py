"""``cfg.api.dist.*``: the distributor's request/reply API (status, rollouts and their
controls).

``RolloutInfo`` is also the value of the key ``rollout.<ns>`` in ``CFG_STATE``: the
distributor writes it with compare-and-set, and clients (``Client.wait_rollout``) read it.

Operations (declared at the end): ``STATUS``, ``ROLLOUT`` and the controls ``PAUSE`` /
``RESUME`` / ``ABORT``. ``ABORT`` with ``rolled_back=True`` is the rollbacker's hand-over: the
rollout ends ``rolled_back`` (and a restarted distributor never resumes it).

``cfg.node.<node>.resync`` (ResyncRequest → ResyncReply) is answered by the agent of that
node: re-install the applied version whose live file drifted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from confbus.schemas.api.operation import Operation, seconds
from confbus.schemas.base import LazyDecoder
from confbus.schemas.events import AnyEvent, NodeOutcome, WaveReport
from confbus.schemas.health import Alert
from confbus.schemas.names import Namespace, NodeId
from confbus.schemas.policy import RETRY_UNANSWERED_S

SERVICE = "dist"

# A node's liveness, one vocabulary everywhere (status, events, console): ``live`` while its
# heartbeats come; ``away`` once it said it stopped (``node.left``) or missed
# ``membership.AWAY_AFTER`` of its own intervals — no wave waits for it, it catches up when it
# is back; ``gone`` after ``membership.GONE_AFTER`` intervals away (forgotten an hour later).
Liveness = Literal["live", "away", "gone"]
RolloutState = Literal["running", "paused", "completed", "failed", "superseded", "rolled_back"]
ACTIVE_STATES: tuple[RolloutState, ...] = ("running", "paused")
TERMINAL_STATES: tuple[RolloutState, ...] = ("completed", "failed", "superseded", "rolled_back")


class StatusRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    node: NodeId
    liveness: Liveness
    liveness_reason: str = ""  # why it is away or gone
    # A second agent with this node id refused lately (the last 10 minutes), in words.
    duplicate: str = ""
    applied_version: int | None
    sha256: str | None
    target_version: int | None
    # Why that target: "production v5", "production v4 (v5 is for dc=eu1 only)", "v6 committed
    # on it (txn)".
    target_reason: str = ""
    last_heartbeat: datetime | None
    labels: dict[str, str] = {}
    status: str = "ok"  # ok | no-config | in-doubt | drift | catching-up | failing: <reason>
    attempts: int = 0
    last_error: str = ""  # the last catch-up / re-sync failure, if any
    next_retry_s: float | None = None  # when the next catch-up try comes (a failing node)


class StatusReply(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    production_version: int | None
    production_sha256: str | None
    nodes: list[NodeStatus]
    rollout: RolloutInfo | None = None  # the current or last rollout


class RolloutRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace


class WaveInfo(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    nodes: list[NodeId]
    state: Literal["pending", "switching", "baking", "done", "failed", "skipped"]
    txid: str | None = None  # the committed transaction of this wave
    attempts: int = 0
    excluded: list[NodeId] = []  # left out (missed the vote deadline, or not live)
    already: list[NodeId] = []  # on the version (or newer) before the wave: not switched
    switch_nodes: list[NodeId] = []  # participants of the attempt under way / last made
    switch_started_at: datetime | None = None  # wall time the attempt under way began
    txids: list[str] = []  # every attempt's transaction, in order
    started_at: datetime | None = None
    committed_at: datetime | None = None
    switch_s: float | None = None
    baked_at: datetime | None = None
    verdict: str | None = None  # pass | fail | no_data
    verdict_samples: int = 0
    verdict_reason: str = ""
    outcomes: list[NodeOutcome] = []
    # Attempts that no node ready to vote answered, each retried after a backoff: the next
    # attempt starts no earlier than ``retry_at``.
    unanswered: int = 0
    retry_at: datetime | None = None


class PendingVersion(msgspec.Struct, frozen=True, kw_only=True):
    """A newer approved version waiting for the running rollout's next wave boundary
    (``supersede``) or its end (``queue``)."""

    version: int
    mode: Literal["supersede", "queue"] = "supersede"
    strategy: str | None = None
    selector: dict[str, str] | None = None


class OutboxItem(msgspec.Struct, frozen=True, kw_only=True):
    """An event (or the alert that hands a failed bake to the rollbacker) decided by a state
    change and written with it, in the same compare-and-set; published after, then removed.
    A crash in between publishes it on restart (``msg_id`` makes the second publish a no-op)."""

    msg_id: str
    event: AnyEvent | None = None
    alert: Alert | None = None


class RolloutInfo(msgspec.Struct, frozen=True, kw_only=True):
    rollout_id: str
    namespace: Namespace
    version: int
    strategy: str
    state: RolloutState
    waves: list[WaveInfo] = []
    current_wave: int = 0
    report: list[NodeOutcome] = []
    reason: str = ""
    started_at: datetime | None = None
    updated_at: datetime | None = None
    # -- the plan and its progress --
    planned: bool = False  # waves computed (targets, strategy and bake fixed)
    requested_strategy: str | None = None  # the version's override (None: the policy's)
    selector: dict[str, str] | None = None  # the version's override (None: the policy's)
    targets: list[NodeId] = []
    # Nodes matching the selector that were away (stopped, or heartbeats stopped) when the
    # rollout was planned or their wave came: not targets; they catch up when they are back.
    away: list[NodeId] = []
    bake_s: float = 0.0
    max_excluded: float = 0.0
    vote_timeout_s: float | None = None
    retry_unanswered_s: float = RETRY_UNANSWERED_S  # the policy's, when planned
    on_missing_data: Literal["pass", "fail"] = "pass"
    previous_version: int | None = None  # production when the rollout began
    next: PendingVersion | None = None
    superseded_by: int | None = None
    failed_wave: int | None = None
    handed_to_rollbacker: bool = False
    last_good: bool = False
    finished_at: datetime | None = None
    actor: str = ""  # who ended it (abort, pause), or the driving replica
    holder: str = ""  # the distributor replica that last wrote it
    outbox: list[OutboxItem] = []  # events decided but not yet published (see OutboxItem)
    revision: int = 0  # the KV revision it was read at (filled in replies)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def wave_reports(self) -> list[WaveReport]:
        return [
            WaveReport(
                index=w.index,
                nodes=w.nodes,
                state=w.state,
                txid=w.txid,
                attempts=w.attempts,
                excluded=w.excluded,
                started_at=w.started_at,
                committed_at=w.committed_at,
                baked_at=w.baked_at,
                verdict=w.verdict,
                switch_s=w.switch_s,
                unanswered=w.unanswered,
            )
            for w in self.waves
        ]


decode_rollout_info: LazyDecoder[RolloutInfo] = LazyDecoder(RolloutInfo)


class RolloutReply(msgspec.Struct, frozen=True, kw_only=True):
    rollout: RolloutInfo | None


class ControlRequest(msgspec.Struct, frozen=True, kw_only=True):
    """pause / resume / abort the namespace's running rollout."""

    namespace: Namespace
    actor: str = ""
    reason: str = ""
    # abort only: end the rollout as ``rolled_back`` (the rollbacker's hand-over), not ``failed``.
    rolled_back: bool = False
    # act only if the namespace's rollout is of this version (None: whatever is running).
    version: int | None = None


class ForgetRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Forget a node that is gone for good (a decommissioned machine, a demo's): its records
    and targets are deleted, and ``node.forgotten`` is said in each namespace it followed. A
    live node is refused (its next heartbeat would bring it back); one that returns later is
    simply a new member."""

    node: NodeId
    actor: str = ""
    reason: str = ""


class ForgetReply(msgspec.Struct, frozen=True, kw_only=True):
    node: NodeId
    namespaces: list[Namespace] = []  # the namespaces it followed


# -- drift repair: answered by the agent on cfg.node.<node>.resync ----------------------------


class ResyncRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    version: int  # the node's applied version (the only one a re-sync may install)
    sha256: str


class ResyncReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    reinstalled: bool = False  # False with ok: the live file was already right
    source: Literal["history", "store", ""] = ""
    reason: str = ""


# -- the operations -------------------------------------------------------------------------------

STATUS = Operation(
    SERVICE,
    "status",
    StatusRequest,
    StatusReply,
    seconds(10.0),
    "Production version and, per node: liveness, applied version, sha256, target.",
)
ROLLOUT = Operation(
    SERVICE,
    "rollout",
    RolloutRequest,
    RolloutReply,
    seconds(10.0),
    "The namespace's current or last rollout.",
)
PAUSE = Operation(
    SERVICE,
    "pause",
    ControlRequest,
    RolloutReply,
    seconds(10.0),
    "Hold the namespace's running rollout at its next wave boundary.",
    acts=True,
)
RESUME = Operation(
    SERVICE,
    "resume",
    ControlRequest,
    RolloutReply,
    seconds(10.0),
    "Let a paused rollout go on.",
    acts=True,
)
ABORT = Operation(
    SERVICE,
    "abort",
    ControlRequest,
    RolloutReply,
    seconds(10.0),
    "End the namespace's rollout as failed (rolled_back: the rollbacker's hand-over).",
    acts=True,
)
CONTROLS: dict[str, Operation[ControlRequest, RolloutReply]] = {
    op.name: op for op in (PAUSE, RESUME, ABORT)
}
FORGET = Operation(
    SERVICE,
    "forget",
    ForgetRequest,
    ForgetReply,
    seconds(10.0),
    "Forget a node that is gone for good: its records and targets go; node.forgotten.",
    acts=True,
)

OPERATIONS: tuple[Operation[Any, Any], ...] = (STATUS, ROLLOUT, PAUSE, RESUME, ABORT, FORGET)
