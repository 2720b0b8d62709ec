"""``cfg.api.txn.*``: the coordinator's request/reply API."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from confbus.schemas.api.operation import Deadline, Operation, seconds
from confbus.schemas.events import VoteRecord
from confbus.schemas.names import Namespace, NodeId, Sha256, TxId, VersionNumber
from confbus.schemas.txn import Decision

SERVICE = "txn"

# The vote deadline of a switch that does not give one (the coordinator's --vote-timeout and
# a policy's vote_timeout_s default to it too).
DEFAULT_VOTE_TIMEOUT_S = 5.0


RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def new_request_id() -> str:
    return secrets.token_hex(12)


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
    # One per request, the same when ``call`` sends it again: the coordinator starts at most
    # one transaction per request id and answers a repeat with that transaction's outcome.
    request_id: RequestId = msgspec.field(default_factory=new_request_id)


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


# -- the operations -------------------------------------------------------------------------------


def switch_deadline_s(vote_timeout_s: float | None) -> float:
    """How long a switch may take to answer: the coordinator runs one switch of a namespace at
    a time, so a request may wait for the one in front of it (its votes) before its own."""
    return 2 * (vote_timeout_s or DEFAULT_VOTE_TIMEOUT_S) + 15.0


# A forwarded switch waits for the votes at the replica that holds the namespace, plus this
# much: less than its caller's deadline, so that when that replica froze the forwarding one
# can still take over the namespace and answer in time.
FORWARD_MARGIN_S = 10.0

_SWITCH_IDEMPOTENT = (
    "one transaction per request_id: a request sent again gets the outcome of the transaction "
    "started for it (the head keeps the last few request ids)"
)

SWITCH = Operation(
    SERVICE,
    "switch",
    SwitchRequest,
    SwitchReply,
    Deadline(
        rule=lambda req: switch_deadline_s(req.timeout_s),
        doc=f"2 × timeout_s (default {DEFAULT_VOTE_TIMEOUT_S:g}) + 15 s: a switch may queue "
        "behind the namespace's switch under way",
    ),
    "Switch nodes to a version atomically (two-phase commit): commit, or abort with the votes.",
    acts=True,
    idempotent=_SWITCH_IDEMPOTENT,
    acknowledged=True,
)
SWITCH_AT = Operation(
    SERVICE,
    "switch_{replica}",
    SwitchRequest,
    SwitchReply,
    Deadline(
        rule=lambda req: (req.timeout_s or DEFAULT_VOTE_TIMEOUT_S) + FORWARD_MARGIN_S,
        doc=f"timeout_s (default {DEFAULT_VOTE_TIMEOUT_S:g}) + {FORWARD_MARGIN_S:g} s",
    ),
    "A switch forwarded to the coordinator replica that leads the namespace.",
    acts=True,
    idempotent=_SWITCH_IDEMPOTENT,
    acknowledged=True,
)
RESOLVE = Operation(
    SERVICE,
    "resolve",
    ResolveRequest,
    ResolveReply,
    seconds(10.0),
    "The decision of a transaction for an in-doubt participant; past its deadline an "
    "undecided one is aborted.",
    acts=True,
    idempotent="a transaction is decided once (compare-and-set): asking again reads that decision",
)
IN_DOUBT = Operation(
    SERVICE,
    "in_doubt",
    InDoubtRequest,
    InDoubtReply,
    seconds(5.0),
    "The transactions prepared and not yet decided, with their age.",
)

OPERATIONS: tuple[Operation[Any, Any], ...] = (SWITCH, SWITCH_AT, RESOLVE, IN_DOUBT)
