"""``cfg.api.txn.*``: the coordinator's request/reply API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from confbus.schemas.events import VoteRecord
from confbus.schemas.names import Namespace, NodeId, Sha256, TxId, VersionNumber
from confbus.schemas.txn import Decision

SERVICE = "txn"


class SwitchRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Run one atomic switch: ``version`` of ``namespace`` on ``nodes`` (one wave)."""

    namespace: Namespace
    version: VersionNumber
    nodes: list[NodeId]
    timeout_s: float | None = None  # the vote deadline; None: the policy's
    actor: str = ""
    reason: str = ""
    # The version's sha256 as the caller read it, if it did: the coordinator then starts the
    # transaction while it fetches the bytes, and aborts it if the store's differ.
    sha256: Sha256 | None = None


class SwitchReply(msgspec.Struct, frozen=True, kw_only=True):
    txid: TxId
    outcome: Literal["commit", "abort"]
    votes: list[VoteRecord] = []


class ResolveRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An in-doubt participant asks for the decision; past the timeout, ABORT is written."""

    namespace: Namespace
    txid: TxId
    node: NodeId | None = None


class ResolveReply(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["committed", "aborted", "pending"]
    decision: Decision | None = None


class InDoubtRequest(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace | None = None


class InDoubtTxn(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace
    txid: TxId
    version: int
    epoch: int
    participants: list[NodeId]
    started_at: datetime | None
    age_s: float


class InDoubtReply(msgspec.Struct, frozen=True, kw_only=True):
    txns: list[InDoubtTxn]
