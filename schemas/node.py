"""Heartbeats from agents, on ``cfg.node.<node>.heartbeat`` (core NATS, not stored)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS, LazyDecoder, Message, utcnow
from confbus.schemas.names import Epoch, Label, Namespace, NodeId, TxId


class NamespaceState(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    applied_version: int | None = None
    sha256: str | None = None  # of the live file as read back from disk (drift shows here)
    # of the applied version's bytes on this node: the version's sha256, or its variant's
    # (docs/design.md §2.6); None from agents before variants
    applied_sha256: str | None = None
    highest_epoch: Epoch = 0
    prepared_txid: TxId | None = None
    last_good: int | None = None
    status: str = "ok"  # ok | no-config | in-doubt | bus-down | failing: <reason>


class Heartbeat(Message, tag="node.heartbeat", kw_only=True, frozen=True):
    node: NodeId
    labels: dict[Label, Label] = {}
    namespaces: list[NamespaceState] = []
    interval_s: float = 2.0
    started_at: datetime | None = None
    at: datetime = msgspec.field(default_factory=utcnow)
    # Ready to vote: reading CFG_TXN live, so a prepare published now reaches it (false for
    # a moment after each reconnect, until its consumer is back). None: an agent from before.
    ready: bool | None = None
    # This agent's id, kept in its state dir (a restart on the same state is the same agent):
    # two agents heartbeating one node id are told apart by it (``keeps_node``).
    instance: str = ""
    # The last heartbeat of an agent stopping on purpose (SIGTERM/SIGINT): it is away now.
    leaving: bool = False
    # The agent forwards its app's health as samples (``--health-url``). False: no sample will
    # ever come from it, so a verdict need not wait for one. None: an agent from before.
    health_source: bool | None = None


decode_heartbeat: LazyDecoder[Heartbeat] = LazyDecoder(Heartbeat)


def own_heartbeat(subject: str, data: bytes) -> Heartbeat | None:
    """The heartbeat in ``data``, received on ``subject`` — None when it is not one, or when it
    came on another node's subject: a node may speak only for itself."""
    try:
        hb = decode_heartbeat(data)
    except DECODE_ERRORS:
        return None
    return hb if subject == subjects.heartbeat(hb.node) else None


_EPOCH = datetime.min.replace(tzinfo=UTC)


def claim(started_at: datetime | None, instance: str) -> tuple[datetime, str]:
    """How strong an agent's hold on its node id is: the agent started first keeps the node
    (a tie: the smaller instance id); a second agent with the same node id is a duplicate and is
    refused. The agents themselves and the distributor apply this same rule to the same two
    heartbeats, so they agree on which one that is (docs/design.md §5.6)."""
    at = started_at if started_at is not None else _EPOCH
    return (at if at.tzinfo else at.replace(tzinfo=UTC), instance)


def keeps_node(mine: Heartbeat, other: Heartbeat) -> bool:
    """Whether ``mine`` keeps the node id against ``other`` (another instance)."""
    return claim(mine.started_at, mine.instance) <= claim(other.started_at, other.instance)
