"""Recording and checking what the two-phase commit did, from the outside.

While a scenario runs, ``TxnRecorder`` keeps every revision of the namespace's transaction
head (the KV stream, so no revision is missed even if the bucket's history is short) and every
vote (core request on ``cfg.txn.<ns>.<txid>.vote.<node>``). Afterwards ``audit_2pc`` reads the
decision records and events and the agents' live files and ``applied`` log lines, and counts:

- ``flipped``: a txid with two different outcomes anywhere (head, decision record, event);
- ``duplicate records``: a txid with more than one decision record (write-once broken);
- ``divergent``: nodes whose live bytes are not their own bytes of their target (the newest
  committed version of a transaction that named them: each node its own variant), or that
  applied a transaction whose decision is abort;
- ``other bytes``: a ``node.applied`` whose sha256 is not that node's own bytes of the version
  (another variant installed, even if a later version covered it up);
- ``double applies``: a node that applied the same version twice;
- ``stale writes``: a head revision, decision record or txn event carrying epoch *e* written
  after epoch *e' > e* existed (fencing broken);
- ``stale yes votes``: a yes vote for a prepare of epoch *e* that sits in ``CFG_TXN`` after a
  decision of a higher epoch (agents read the stream in order, so they had seen it).

The decision of a transaction is the head's compare-and-set (``decisions.py``); a transaction
whose head never reached a decided state is aborted (presumed abort).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy

from confbus.runtime.bus import Bus
from confbus.schemas import subjects
from confbus.schemas.events import (
    AnyEvent,
    NodeApplied,
    TxnAborted,
    TxnCommitted,
    VersionCreated,
    decode_event,
)
from confbus.schemas.streams import CFG_EVENTS, CFG_TXN, CFG_TXN_HEAD
from confbus.schemas.txn import (
    Decision,
    EpochMarker,
    Prepare,
    TxnHead,
    Vote,
    decode_epoch_marker,
    decode_head,
    decode_txn,
    decode_vote,
)
from tests.faults.stack import Node


@dataclass(frozen=True)
class Stored:
    seq: int
    at: datetime
    subject: str
    data: bytes


async def read_stream(bus: Bus, stream: str, subject: str, timeout: float = 30.0) -> list[Stored]:
    """Every message of ``stream`` on ``subject``, in stream order, with its metadata."""
    info = None
    with anyio.fail_after(timeout):
        while info is None:
            try:
                info = await bus.js.stream_info(stream)
            except (nats.errors.Error, TimeoutError):
                await anyio.sleep(0.2)  # a node of the cluster still catching up: retry
    if info.state.messages == 0:
        return []
    out: list[Stored] = []
    sub = None
    with anyio.fail_after(timeout):
        while sub is None:
            try:
                sub = await bus.js.subscribe(
                    subject,
                    stream=stream,
                    ordered_consumer=True,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
                )
            except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
                # After a heal or a leader kill the stream's group (503) or the meta leader
                # (no answer to the consumer create) may still be electing: retry. Seen in a
                # fresh-clone run: the create timed out right after the third leader kill.
                await anyio.sleep(0.2)
    try:
        with anyio.fail_after(timeout):
            while True:
                try:
                    msg = await sub.next_msg(timeout=2.0)
                except nats.errors.TimeoutError:
                    return out  # nothing on this subject (or nothing more)
                md = msg.metadata
                out.append(Stored(md.sequence.stream, md.timestamp, msg.subject, msg.data))
                if md.num_pending == 0:
                    return out
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def read_events(bus: Bus, ns: str) -> list[tuple[Stored, AnyEvent]]:
    out = []
    for m in await read_stream(bus, CFG_EVENTS.name, subjects.events_of(ns)):
        try:
            out.append((m, decode_event(m.data)))
        except msgspec.ValidationError:
            continue  # an event type this build does not know
    return out


@dataclass(frozen=True)
class HeadRev:
    rev: int
    at: datetime
    head: TxnHead


@dataclass
class TxnRecorder:
    """Started before the workload, stopped after the drain."""

    bus: Bus
    ns: str
    heads: list[HeadRev] = field(default_factory=list)
    votes: list[Vote] = field(default_factory=list)
    # The txid of every prepare published, as a core subscriber hears it: whether the stream
    # stored it or refused it.
    published: list[str] = field(default_factory=list)
    _subs: list[Subscription] = field(default_factory=list)

    async def start(self) -> TxnRecorder:
        async def on_head(msg: Msg) -> None:
            md = msg.metadata
            if msg.data:  # a delete or purge marker has no value
                self.heads.append(HeadRev(md.sequence.stream, md.timestamp, decode_head(msg.data)))

        async def on_vote(msg: Msg) -> None:
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                self.votes.append(decode_vote(msg.data))

        self._subs.append(
            await self.bus.js.subscribe(
                f"$KV.{CFG_TXN_HEAD.name}.{self.ns}",
                stream=f"KV_{CFG_TXN_HEAD.name}",
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
                cb=on_head,
            )
        )

        async def on_prepare(msg: Msg) -> None:
            self.published.append(msg.subject.split(".")[3])

        self._subs.append(await self.bus.nc.subscribe(f"cfg.txn.{self.ns}.*.vote.*", cb=on_vote))
        self._subs.append(
            await self.bus.nc.subscribe(f"cfg.txn.{self.ns}.*.prepare", cb=on_prepare)
        )
        return self

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()


@dataclass
class TxnFacts:
    """Everything known about the namespace's transactions after the run."""

    heads: list[HeadRev]
    votes: list[Vote]
    prepares: list[tuple[Stored, Prepare]]
    decisions: list[tuple[Stored, Decision]]
    events: list[tuple[Stored, AnyEvent]]
    markers: list[tuple[Stored, EpochMarker]] = field(default_factory=list)
    published: list[str] = field(default_factory=list)  # txids of the prepares published


async def collect(bus: Bus, recorder: TxnRecorder) -> TxnFacts:
    prepares: list[tuple[Stored, Prepare]] = []
    decisions: list[tuple[Stored, Decision]] = []
    for m in await read_stream(bus, CFG_TXN.name, subjects.txn_of(recorder.ns)):
        rec = decode_txn(m.data)
        if isinstance(rec, Prepare):
            prepares.append((m, rec))
        else:
            decisions.append((m, rec))
    markers = [
        (m, decode_epoch_marker(m.data))
        for m in await read_stream(bus, CFG_TXN.name, subjects.txn_epoch(recorder.ns))
    ]
    return TxnFacts(
        heads=sorted(recorder.heads, key=lambda h: h.rev),
        votes=list(recorder.votes),
        prepares=prepares,
        decisions=decisions,
        events=await read_events(bus, recorder.ns),
        markers=markers,
        published=list(recorder.published),
    )


@dataclass
class Audit:
    flipped: int = 0
    duplicate_records: int = 0
    divergent_nodes: list[str] = field(default_factory=list)
    aborted_applies: int = 0
    double_applies: int = 0
    stale_writes: int = 0
    stale_yes_votes: int = 0
    # Prepares stored after a marker or a decision of a newer epoch, in stream order: the
    # stream must refuse them (epoch markers, docs/design.md §4.1).
    stale_prepares_reached_stream: int = 0
    prepares_refused: int = 0  # published, never stored: refused by the stream
    # Prepares of an old epoch stored after the head's newer epoch existed, but before its
    # marker: decided by the successor's abort.
    stale_prepares: int = 0
    # ...of which the transaction committed: must be none. A stale prepare's head was taken over
    # (the epoch bump) before it reached the stream, so only the successor's abort can decide it.
    stale_prepares_committed: int = 0
    unannounced_applies: int = 0  # applies without a node.applied event
    other_bytes_applies: int = 0  # a node announced bytes that are not its own of the version
    committed: int = 0
    aborted: int = 0
    undecided_heads: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)

    def safety(self) -> dict[str, int]:
        return {
            "aborted_applies": self.aborted_applies,
            "stale_writes": self.stale_writes,
            "stale_yes_votes": self.stale_yes_votes,
            "stale_prepares_committed": self.stale_prepares_committed,
            "stale_prepares_reached_stream": self.stale_prepares_reached_stream,
            # Invariant 8: every apply is in the audit log (agents announce after a restart).
            "applies_without_event": self.unannounced_applies,
            "applied_other_bytes": self.other_bytes_applies,
        }


def decided_outcome(head: TxnHead) -> str | None:
    return {"committed": "commit", "aborted": "abort"}.get(head.state)


def audit_2pc(
    facts: TxnFacts,
    nodes: Mapping[str, Node],
    contents: Mapping[int, Mapping[str, bytes]],
    ns: str,
) -> Audit:
    """``contents``: each version's bytes on each node (its own variant)."""
    a = Audit()
    seen: defaultdict[str, set[str]] = defaultdict(set)
    authority: dict[str, str] = {}
    info: dict[str, tuple[int, list[str], int]] = {}  # txid -> (version, participants, epoch)

    # -- the head: the decision is its compare-and-set --------------------------------------
    max_epoch = 0
    epoch_first_at: dict[int, datetime] = {}
    for h in facts.heads:
        v = h.head
        if v.epoch < max_epoch:
            a.stale_writes += 1  # a revision from an older epoch after a newer one existed
        max_epoch = max(max_epoch, v.epoch)
        epoch_first_at.setdefault(v.epoch, h.at)
        if v.txid is None or v.version is None:
            continue
        info.setdefault(v.txid, (v.version, list(v.participants), v.epoch))
        out = decided_outcome(v)
        if out is not None:
            seen[v.txid].add(out)
            authority.setdefault(v.txid, out)

    def newer_epoch_before(epoch: int, at: datetime) -> bool:
        return any(e > epoch and t < at for e, t in epoch_first_at.items())

    # -- decision records: written once, never from a fenced epoch ---------------------------
    per_txid = Counter(d.txid for _, d in facts.decisions)
    a.duplicate_records = sum(n - 1 for n in per_txid.values() if n > 1)
    for m, d in facts.decisions:
        seen[d.txid].add(d.outcome)
        info.setdefault(d.txid, (d.version, list(d.participants), d.epoch))
        if newer_epoch_before(d.epoch, m.at):
            a.stale_writes += 1
    stale_txids: set[str] = set()
    for m, p in facts.prepares:
        info.setdefault(p.txid, (p.version, list(p.participants), p.epoch))
        if newer_epoch_before(p.epoch, m.at):
            a.stale_prepares += 1
            stale_txids.add(p.txid)

    # -- events ------------------------------------------------------------------------------
    announced: set[tuple[str, int]] = set()
    for m, ev in facts.events:
        if isinstance(ev, TxnCommitted | TxnAborted):
            seen[ev.txid].add("commit" if isinstance(ev, TxnCommitted) else "abort")
            if newer_epoch_before(ev.epoch, m.at):
                a.stale_writes += 1
        elif isinstance(ev, NodeApplied):
            announced.add((ev.node, ev.version))
            own = contents.get(ev.version, {}).get(ev.node)
            if own is not None and hashlib.sha256(own).hexdigest() != ev.sha256:
                a.other_bytes_applies += 1
    a.flipped = sum(1 for outs in seen.values() if len(outs) > 1)

    for txid in info:
        if txid not in authority:
            a.undecided_heads += 1  # never decided on the head: presumed abort
    final = {txid: authority.get(txid, "abort") for txid in info}
    a.outcomes = final
    a.committed = sum(1 for o in final.values() if o == "commit")
    a.aborted = len(final) - a.committed
    a.stale_prepares_committed = sum(1 for t in stale_txids if final[t] == "commit")

    # -- the stream: no prepare after a marker or a decision of a newer epoch ---------------
    fences = [(m.seq, d.epoch) for m, d in facts.decisions] + [
        (m.seq, k.epoch) for m, k in facts.markers
    ]
    for m, p in facts.prepares:
        if any(s < m.seq and e > p.epoch for s, e in fences):
            a.stale_prepares_reached_stream += 1
    a.prepares_refused = len(set(facts.published) - {p.txid for _, p in facts.prepares})

    # -- votes: an agent must refuse a prepare older than a decision it has read ------------
    decision_epochs = [(m.seq, d.epoch) for m, d in facts.decisions]
    prepare_at = {p.txid: (m.seq, p.epoch) for m, p in facts.prepares}
    for vote in facts.votes:
        if vote.vote != "yes" or vote.txid not in prepare_at:
            continue
        seq, epoch = prepare_at[vote.txid]
        if any(s < seq and e > epoch for s, e in decision_epochs):
            a.stale_yes_votes += 1

    # -- the nodes ---------------------------------------------------------------------------
    divergent: set[str] = set()
    for name, node in nodes.items():
        applied = node.applies()
        counts = Counter(int(r.get("version", -1)) for r in applied)
        a.double_applies += sum(n - 1 for n in counts.values() if n > 1)
        for r in applied:
            txid = str(r.get("txid"))
            if final.get(txid, "abort") != "commit":
                a.aborted_applies += 1
                divergent.add(name)
        mine = [
            version
            for txid, (version, participants, _) in info.items()
            if final[txid] == "commit" and name in participants
        ]
        target = max(mine) if mine else None
        expected = contents.get(target, {}).get(name) if target is not None else None
        if node.read(ns) != expected:
            divergent.add(name)
        else:
            # Participants apply every committed version in stream order; each apply must be
            # in the audit log (invariant 8).
            a.unannounced_applies += sum(1 for v in mine if (name, v) not in announced)
    a.divergent_nodes = sorted(divergent)
    return a


def created_events(events: list[tuple[Stored, AnyEvent]]) -> Counter[int]:
    """How many ``version.created`` events each version has."""
    return Counter(ev.version for _, ev in events if isinstance(ev, VersionCreated))


def as_notes(a: Audit) -> dict[str, Any]:
    return {
        "committed": a.committed,
        "aborted": a.aborted,
        "stale_prepares_before_marker": a.stale_prepares,
        "prepares_refused": a.prepares_refused,
    }
