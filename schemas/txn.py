"""``CFG_TXN`` and ``CFG_TXN_HEAD``: the two-phase commit (docs/design.md §4).

On the stream: ``Prepare`` on ``cfg.txn.<ns>.<txid>.prepare`` and ``Decision`` on
``cfg.txn.<ns>.<txid>.decision`` (written once: published with
``Nats-Expected-Last-Subject-Sequence: 0``); ``EpochMarker`` on ``cfg.txn.<ns>.epoch``, which
fences the prepares of older epochs. Votes are request/reply on
``cfg.txn.<ns>.<txid>.vote.<node>`` and never stored.

The head (KV ``CFG_TXN_HEAD``, key ``<ns>``) is the namespace's single point of decision:
every state change on it is a compare-and-set that requires the writer's epoch to be current,
so a zombie coordinator can write nothing once a newer epoch exists.
"""

from __future__ import annotations

import functools
import weakref
from datetime import datetime
from typing import Any, Literal

import msgspec

from confbus.schemas.base import Message, utcnow
from confbus.schemas.names import Epoch, Format, Namespace, NodeId, Sha256, TxId, VersionNumber
from confbus.schemas.signing import Signature

Outcome = Literal["commit", "abort"]
HeadState = Literal["idle", "preparing", "committed", "aborted"]


class PreparedVariant(msgspec.Struct, frozen=True, kw_only=True):
    """One distinct variant of a prepare: its bytes, their sha256, and the participants that
    stage it (docs/design.md §2.6). Each participant is in exactly one."""

    name: str
    sha256: Sha256
    content: bytes
    nodes: list[str]


class Prepare(Message, tag="txn.prepare", kw_only=True, frozen=True):
    txid: TxId
    namespace: Namespace
    version: VersionNumber
    sha256: Sha256
    format: Format
    content: bytes
    participants: list[NodeId]
    epoch: Epoch
    timeout_s: float
    created_at: datetime = msgspec.field(default_factory=utcnow)
    # The version's signatures as the store holds them; agents check them against their own
    # trust roots before voting (docs/design.md §7.6). ``content`` is sealed for a secret
    # namespace, and ``sha256`` is then the plaintext's.
    signatures: list[Signature] = []
    # A version with overlays: each distinct variant once, with the nodes it is for. ``content``
    # is then empty and ``sha256`` the version's (what the decision names); each node stages
    # its own entry's bytes, checked against that entry's sha256.
    variants: list[PreparedVariant] = []
    # A variant prepare carries the namespace's JSON Schema (None: it has none): the store
    # validated the variants of the members it knew at publish, not those of labels that
    # changed since, so each node checks its own entry against it before voting.
    json_schema: dict[str, Any] | None = None

    def bytes_for(self, node: str) -> tuple[bytes, str] | None:
        """The bytes ``node`` stages and their sha256 (None: a variant prepare without an entry
        for it)."""
        if not self.variants:
            return self.content, self.sha256
        for v in self.variants:
            if node in v.nodes:
                return v.content, v.sha256
        return None


class Decision(Message, tag="txn.decision", kw_only=True, frozen=True):
    txid: TxId
    namespace: Namespace
    version: VersionNumber
    sha256: Sha256
    epoch: Epoch
    outcome: Outcome
    participants: list[NodeId]
    reason: str = ""
    decided_at: datetime = msgspec.field(default_factory=utcnow)


class EpochMarker(Message, tag="txn.epoch", kw_only=True, frozen=True):
    """On ``cfg.txn.<ns>.epoch``: epoch ``epoch`` of the namespace is open. Published after the
    head's compare-and-set that opened it, before anything decided at it; markers on the subject
    only go up. A prepare is published expecting its coordinator's marker to be the subject's
    last (``Nats-Expected-Last-Subject-Sequence-Subject``), so once a newer epoch's marker is
    stored the stream refuses every prepare of an older one (docs/design.md §4.1)."""

    namespace: Namespace
    epoch: Epoch
    leader: str = ""
    opened_at: datetime = msgspec.field(default_factory=utcnow)


# What a transaction's subjects (``cfg.txn.<ns>.<txid>.*``) carry.
TxnMessage = Prepare | Decision
decode_txn = msgspec.json.Decoder(TxnMessage).decode
# Everything in the stream, markers too.
TxnStreamMessage = Prepare | Decision | EpochMarker
decode_epoch_marker = msgspec.json.Decoder(EpochMarker).decode


# An agent decodes every prepare and decision of its namespaces only to look for its own id in
# the participant list — a list the coordinator built from node ids it had already checked.
# Checking each id against its pattern again costs msgspec a regex call per id: 26 µs per
# record with 100 participants, 270 µs with 1,000, on every agent, twice per switch. These
# subclasses read the list as plain strings (every other field is checked as before) and are
# still a ``Prepare`` and a ``Decision`` to ``isinstance`` and to every function typed with them.
class _AgentPrepare(Prepare, tag="txn.prepare", kw_only=True, frozen=True, weakref=True):
    participants: list[str]


class _AgentDecision(Decision, tag="txn.decision", kw_only=True, frozen=True, weakref=True):
    participants: list[str]


_decode_for_agent = msgspec.json.Decoder(_AgentPrepare | _AgentDecision).decode
# Records decoded for agents, by their bytes, for as long as an agent holds one. The agents of
# one process (a benchmark's agent host: hundreds of them) each read the same record from
# CFG_TXN at about the same time; each decoding its own copy held a thousand-id list per agent
# at once (~60 KB each with 1,000 participants), a peak the process's RSS kept. Records are
# frozen, and equal bytes decode to equal records: one shared copy changes nothing else.
_decoded: weakref.WeakValueDictionary[bytes, TxnMessage] = weakref.WeakValueDictionary()


def decode_txn_for_agent(data: bytes) -> TxnMessage:
    """A ``CFG_TXN`` record as an agent reads it (the participants unchecked, see above): the
    copy another agent of this process holds already, if any."""
    record = _decoded.get(data)
    if record is None:
        record = _decoded[data] = _decode_for_agent(data)
    return record


# What it decodes with, for whoever inspects it (the decoders' fuzz test unwraps it).
functools.update_wrapper(decode_txn_for_agent, _decode_for_agent, assigned=(), updated=())


class Vote(Message, tag="txn.vote", kw_only=True, frozen=True):
    txid: TxId
    namespace: Namespace
    node: NodeId
    epoch: Epoch
    vote: Literal["yes", "no"]
    reason: str = ""


decode_vote = msgspec.json.Decoder(Vote).decode


class VoteAck(Message, tag="txn.vote_ack", kw_only=True, frozen=True):
    txid: TxId
    accepted: bool
    reason: str = ""


decode_vote_ack = msgspec.json.Decoder(VoteAck).decode


class EarlierRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A decided transaction's request, kept on the head after the head moved on."""

    request_id: str
    txid: TxId
    state: HeadState
    participants: list[NodeId] = []
    reason: str = ""


class TxnHead(msgspec.Struct, frozen=True, kw_only=True):
    """Value of ``CFG_TXN_HEAD[<ns>]``."""

    namespace: Namespace
    epoch: Epoch
    leader: str = ""
    txid: TxId | None = None
    state: HeadState = "idle"
    version: VersionNumber | None = None
    sha256: Sha256 | None = None
    participants: list[NodeId] = []
    started_at: datetime | None = None
    timeout_s: float = 0.0
    updated_at: datetime = msgspec.field(default_factory=utcnow)
    reason: str = ""  # why the decision went the way it did (set with the decision)
    # The switch request this transaction was started for (``SwitchRequest.request_id``), and
    # those of the few transactions before it: a request sent again (the replica that took it
    # died before answering) is answered from here instead of starting a second transaction.
    request_id: str | None = None
    earlier: list[EarlierRequest] = []


decode_head = msgspec.json.Decoder(TxnHead).decode
