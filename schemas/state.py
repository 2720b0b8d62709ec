"""The key layout of the KV buckets ``CFG_STATE`` and ``CFG_TXN_HEAD``, and the records they hold.

Keys are spelled here only, built by functions that validate their tokens (a namespace with a
``.`` in it would make another key, one with ``*`` or ``>`` a pattern)::

    CFG_STATE
      lease.<role>.<name>        LeaseRecord      who acts for <name> (confbus.runtime.leases)
      lease.<role>._replica.<instance>
                                 LeaseRecord      a replica's one renewed lease: the namespace
                                                  leases naming its ``life`` live while it does
      rollout.<ns>               RolloutInfo      the current or last rollout (schemas/api/dist.py)
      target.<ns>                NamespaceTargets per node, the highest version of a committed
                                                  transaction that included it (one write per
                                                  wave); ``target.<ns>.<node>`` (TargetRecord)
                                                  is the layout before it, still read
      node.<node>                NodeRecord       labels, namespaces, last heartbeat, liveness
      health.alerts.<ns>         AlertBook        the alerts firing in the namespace
      rollback.<ns>              Ledger           the rollbacker's rollbacks and alerts seen
      coord.alive.<instance>     Alive            a coordinator replica's liveness beat

    CFG_TXN_HEAD
      <ns>                       TxnHead          the namespace's transaction head (schemas/txn.py)

Every record but ``Alive`` is changed only by compare-and-set (``confbus.runtime.kv``). What a
lease protects carries the lease's ``epoch``, and a writer with an older one is refused.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

import msgspec

from confbus.schemas.base import LazyDecoder, utcnow
from confbus.schemas.names import NodeId, check_name
from confbus.schemas.node import NamespaceState
from confbus.schemas.streams import BucketSpec
from confbus.schemas.subjects import instance_token

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def _token(value: str, kind: str) -> str:
    """One key token that is not a namespace or node id (a lease role or name, an instance)."""
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"invalid {kind} {value!r} in a key: letters, digits, '_' and '-' only")
    return value


def _tail(key: str, prefix: str) -> str:
    if not key.startswith(prefix):
        raise ValueError(f"{key!r} is not a key under {prefix!r}")
    return key[len(prefix) :]


def bucket_subject(bucket: BucketSpec, key: str) -> str:
    """The subject a bucket stores ``key`` (or a pattern of keys) under: a core subscription to
    it sees every write, without a consumer."""
    return f"$KV.{bucket.name}.{key}"


# -- leases -----------------------------------------------------------------------------------
LEASES = "lease.>"
_LEASE = "lease."


def lease_key(role: str, name: str) -> str:
    return f"{_LEASE}{_token(role, 'lease role')}.{_token(name, 'lease name')}"


REPLICA = "_replica"  # lease.<role>._replica.<instance>: no namespace can be named so


def replica_key(role: str, instance: str) -> str:
    """The key of a replica's own lease, which every lease it holds of ``role`` hangs on (the
    instance spelled as its presence subject spells it: ``distributor@host`` is a valid one)."""
    return f"{_LEASE}{_token(role, 'lease role')}.{REPLICA}.{instance_token(instance)}"


def lease_of(key: str) -> tuple[str, str]:
    """``(role, name)`` of a lease key (name ``_replica.<instance>`` for a replica's)."""
    role, _, name = _tail(key, _LEASE).partition(".")
    return role, name


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Who holds a lease until when. ``epoch`` goes up by one with every new holder (a fencing
    token); a released lease has ``expires_at`` in 1970.

    ``life``: set, the lease lives as long as its holder's replica lease
    (``replica_key``) carries that same ``life`` and is not expired — its own ``expires_at``
    is then far off (``BY_REPLICA`` in ``confbus.runtime.leases``) and only a release changes
    it. Unset, it is a lease renewed on its own (written by a confbus before replica leases).
    A replica lease's own record has its ``life`` too, and ``epoch`` counts its lives."""

    holder: str
    expires_at: datetime
    epoch: int = 0
    ttl_s: float = 0.0
    acquired_at: datetime | None = None
    life: str | None = None


decode_lease: LazyDecoder[LeaseRecord] = LazyDecoder(LeaseRecord)

# -- the distributor --------------------------------------------------------------------------
ROLLOUTS = "rollout.*"
_ROLLOUT = "rollout."


def rollout_key(namespace: str) -> str:
    return f"{_ROLLOUT}{check_name(namespace, 'namespace')}"


def rollout_of(key: str) -> str:
    """The namespace of a ``rollout.<ns>`` key."""
    return _tail(key, _ROLLOUT)


TARGETS = "target.>"
_TARGET = "target."


def targets_key(namespace: str) -> str:
    """``target.<ns>``: the namespace's node targets, one record (``NamespaceTargets``)."""
    return f"{_TARGET}{check_name(namespace, 'namespace')}"


def target_key(namespace: str, node: str) -> str:
    """``target.<ns>.<node>``: one node's target, the layout before ``target.<ns>`` (read, and
    deleted when the node is forgotten; no longer written)."""
    return f"{_TARGET}{check_name(namespace, 'namespace')}.{check_name(node, 'node id')}"


def target_of(key: str) -> tuple[str, str]:
    """``(namespace, node)`` of a ``target.<ns>.<node>`` key; ``(namespace, "")`` for a
    ``target.<ns>`` key."""
    namespace, _, node = _tail(key, _TARGET).partition(".")
    return namespace, node


class TargetRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The highest version of a committed transaction that included the node (raised, never
    lowered); the node's target is this or production, whichever is higher."""

    version: int
    txid: str | None = None
    at: datetime = msgspec.field(default_factory=utcnow)


decode_target: LazyDecoder[TargetRecord] = LazyDecoder(TargetRecord)


class TargetGroup(msgspec.Struct, frozen=True, kw_only=True):
    """Nodes whose highest committed transaction (so far) is the same one."""

    version: int
    txid: str | None = None
    at: datetime = msgspec.field(default_factory=utcnow)
    nodes: list[NodeId] = []


class NamespaceTargets(msgspec.Struct, frozen=True, kw_only=True):
    """``target.<ns>``: for each node that a committed transaction of the namespace included,
    the highest such version (raised, never lowered) — grouped by transaction, each node in
    one group only: a wave's nodes are raised by one write, and the record stays small (a
    node id per node, not a record per node)."""

    groups: list[TargetGroup] = []

    def versions(self) -> dict[str, int]:
        return {node: g.version for g in self.groups for node in g.nodes}


decode_targets: LazyDecoder[NamespaceTargets] = LazyDecoder(NamespaceTargets)

SCOPES = "scope.*"
_SCOPE = "scope."


def scope_key(namespace: str) -> str:
    return f"{_SCOPE}{check_name(namespace, 'namespace')}"


def scope_of(key: str) -> str:
    """The namespace of a ``scope.<ns>`` key."""
    return _tail(key, _SCOPE)


class ScopedProduction(msgspec.Struct, frozen=True, kw_only=True):
    """A version that became production for the nodes matching ``selector`` ({}: all)."""

    version: int
    selector: dict[str, str] = {}


class ProductionScopes(msgspec.Struct, frozen=True, kw_only=True):
    """``scope.<ns>``: the production versions still in force, each for the nodes its rollout's
    selector matched. A node's production version is the newest whose selector matches its
    labels (``confbus.distributor.targets``); one published for every node replaces them all.
    Written by the rollout driver before it promotes."""

    entries: list[ScopedProduction] = []


decode_scopes: LazyDecoder[ProductionScopes] = LazyDecoder(ProductionScopes)

NODES = "node.*"


def node_key(node: str) -> str:
    return f"node.{check_name(node, 'node id')}"


class NodeRecord(msgspec.Struct, frozen=True, kw_only=True):
    node: NodeId
    labels: dict[str, str] = {}
    namespaces: list[NamespaceState] = []
    interval_s: float = 2.0
    last_heartbeat: datetime | None = None
    started_at: datetime | None = None
    liveness: str = "live"  # live | away | gone (confbus.schemas.api.dist.Liveness)
    since: datetime | None = None  # when it entered that liveness


decode_node: LazyDecoder[NodeRecord] = LazyDecoder(NodeRecord)

# -- the health-watcher -----------------------------------------------------------------------


def alert_book_key(namespace: str) -> str:
    return f"health.alerts.{check_name(namespace, 'namespace')}"


class FiringAlert(msgspec.Struct, frozen=True, kw_only=True):
    alert_id: str
    version: int
    rule: str
    value: float | None = None
    threshold: float | None = None
    nodes: list[str] = []
    summary: str = ""
    since: float = 0.0  # unix seconds: start of the first bad window
    published: bool = False


class AlertBook(msgspec.Struct, frozen=True, kw_only=True):
    firing: dict[str, FiringAlert] = {}  # "<version>:<rule>" -> alert
    epoch: int = 0  # of the namespace's lease, as its last writer held it


decode_alert_book: LazyDecoder[AlertBook] = LazyDecoder(AlertBook)

# -- the rollbacker ---------------------------------------------------------------------------
LEDGERS = "rollback.*"
_LEDGER = "rollback."


def ledger_key(namespace: str) -> str:
    return f"{_LEDGER}{check_name(namespace, 'namespace')}"


def ledger_of(key: str) -> str:
    """The namespace of a ``rollback.<ns>`` key."""
    return _tail(key, _LEDGER)


RollbackState = Literal["running", "completed", "stuck", "refused"]
RollbackStep = Literal["create", "batches", "promote", "done"]
RollbackTrigger = Literal["alert", "manual"]


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    nodes: list[str]  # planned for this batch
    switched: list[str] = []  # committed on (or found already on) the new version
    txids: list[str] = []
    verdict: str = ""  # pass | fail | no_data | unavailable | skipped
    healthy_share: float | None = None
    samples: int = 0
    unhealthy: list[str] = []  # named unhealthy by the verdict
    committed_at: datetime | None = None


class Rollback(msgspec.Struct, frozen=True, kw_only=True):
    rollback_id: str
    namespace: str
    trigger: RollbackTrigger
    alert_id: str | None = None
    actor: str = ""
    reason: str = ""
    from_version: int | None = None
    to_version: int
    to_sha256: str = ""
    change_id: str
    new_version: int | None = None
    strategy: str
    state: RollbackState = "running"
    step: RollbackStep = "create"
    batches: list[list[str]] = []
    done: list[BatchResult] = []
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    detail: str = ""  # why it is stuck or was refused
    owner: str = ""  # the replica driving it
    epoch: int = 0  # of lease.rollbacker.<ns>, as its owner holds it (0: not driven yet)
    # The suspect version that was the last known good: it loses its mark (the store's pointer
    # goes back to ``to_version``) before anything is switched.
    revokes_last_good: int | None = None

    @property
    def counts_for_limits(self) -> bool:
        """Rollbacks that actually started count for the cooldown and the cap."""
        return self.state != "refused"


class SeenAlert(msgspec.Struct, frozen=True, kw_only=True):
    alert_id: str
    at: datetime
    outcome: str  # started | ignored | cooldown | cap | refused | busy | held
    rollback_id: str | None = None
    detail: str = ""


class Ledger(msgspec.Struct, frozen=True, kw_only=True):
    """A namespace's rollbacks: the one being driven (if any), the recent ones (for the
    cooldown and the cap) and the recent alert ids (for idempotency)."""

    namespace: str
    active: str | None = None  # rollback_id being driven
    rollbacks: list[Rollback] = []  # oldest first
    alerts: list[SeenAlert] = []  # oldest first

    def find(self, rollback_id: str) -> Rollback | None:
        for r in reversed(self.rollbacks):
            if r.rollback_id == rollback_id:
                return r
        return None

    def seen(self, alert_id: str) -> SeenAlert | None:
        for a in reversed(self.alerts):
            if a.alert_id == alert_id:
                return a
        return None

    @property
    def running(self) -> Rollback | None:
        return self.find(self.active) if self.active else None

    def holding(self, version: int | None) -> Rollback | None:
        """A stuck rollback waits for an operator: automatic rollbacks of versions up to the
        one it created are held until then (a newer version is a new situation)."""
        for r in reversed(self.rollbacks):
            if r.state == "stuck":
                top = r.new_version if r.new_version is not None else r.from_version
                if version is None or top is None or version <= top:
                    return r
                return None
            if r.state in ("running", "completed"):
                return None
        return None


decode_ledger: LazyDecoder[Ledger] = LazyDecoder(Ledger)

# -- the coordinator --------------------------------------------------------------------------
ALIVE = "coord.alive.*"


def alive_key(instance: str) -> str:
    return f"coord.alive.{_token(instance, 'instance')}"


class Alive(msgspec.Struct, frozen=True):
    instance: str
    at: float  # wall clock seconds of the writer


decode_alive: LazyDecoder[Alive] = LazyDecoder(Alive)

# -- CFG_TXN_HEAD -----------------------------------------------------------------------------
HEADS = ">"


def head_key(namespace: str) -> str:
    """The key of a namespace's transaction head: the namespace itself."""
    return check_name(namespace, "namespace")
