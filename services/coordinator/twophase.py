"""One atomic switch: prepare → votes → a decision written once → agents apply (DESIGN §4).

Per namespace, at most one transaction is undecided at a time, and it is the one named on
the head. That makes "abort every undecided transaction" on a takeover one compare-and-set,
and lets anyone answer "what happened to txid X?" from the head and the decision record.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
import msgspec
from nats.aio.msg import Msg

from schemas import subjects
from schemas.api.store import GetRequest, VersionReply
from schemas.api.txn import ResolveReply, SwitchReply
from schemas.base import utcnow
from schemas.events import VoteRecord
from schemas.names import Format
from schemas.txn import Decision, Prepare, TxnHead, Vote, VoteAck, decode_vote
from services.coordinator.decisions import decision_of, publish_decision, read_decision
from services.coordinator.head import Fenced, Head, Heads
from services.coordinator.liveness import Liveness
from services.coordinator.metrics import CoordinatorMetrics
from services.runtime.api import call
from services.runtime.bus import Bus
from services.runtime.codec import encode
from services.runtime.errors import Conflict, InvalidInput, NotFound
from services.runtime.failpoints import failpoint

log = logging.getLogger("confbus.coordinator")

# An undecided transaction is aborted by a recoverer only this long past its own timeout:
# the leader judges the deadline on its monotonic clock; a recoverer on another machine
# reads wall time, so it leaves room for skew. Early would still be safe (compare-and-set),
# only less live.
RECOVERY_GRACE_S = 2.0
DECIDED = ("committed", "aborted")


def new_txid(epoch: int) -> str:
    return f"e{epoch}-{secrets.token_hex(8)}"


@dataclass
class _Ballot:
    """The votes of one transaction as they arrive."""

    participants: frozenset[str]
    votes: dict[str, Vote] = field(default_factory=dict)
    done: anyio.Event = field(default_factory=anyio.Event)

    def records(self) -> list[VoteRecord]:
        out = []
        for node in sorted(self.participants):
            v = self.votes.get(node)
            if v is None:
                out.append(
                    VoteRecord(node=node, vote="missing", reason="no vote before the deadline")
                )
            else:
                out.append(VoteRecord(node=node, vote=v.vote, reason=v.reason))
        return out

    def all_yes(self) -> bool:
        return len(self.votes) == len(self.participants) and all(
            v.vote == "yes" for v in self.votes.values()
        )


class Coordinator:
    def __init__(
        self,
        bus: Bus,
        heads: Heads,
        instance: str,
        metrics: CoordinatorMetrics,
        default_timeout_s: float = 5.0,
        liveness: Liveness | None = None,
    ) -> None:
        self.bus = bus
        self.liveness = liveness or Liveness(None, instance)
        self.heads = heads
        self.instance = instance
        self.metrics = metrics
        self.default_timeout_s = default_timeout_s
        self._epochs: dict[str, int] = {}  # namespaces we lead, and with which epoch
        self._locks: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)
        self._announced: set[str] = set()  # txids whose decision record we know exists

    async def announce(self, head: TxnHead, votes: list[VoteRecord] | None = None) -> Decision:
        if head.txid in self._announced:
            return decision_of(head)
        decision = await publish_decision(self.bus, head, votes, actor=self.instance)
        if len(self._announced) > 10_000:  # bounded: it is only a shortcut
            self._announced.clear()
        self._announced.add(decision.txid)
        return decision

    # -- leadership ------------------------------------------------------------------------

    async def lead(self, namespace: str) -> Head:
        """A head at our epoch with nothing undecided on it.

        Taking over bumps the epoch by compare-and-set, then aborts whatever the previous
        leader left undecided: from here on nothing of the older epoch can be written.
        """
        for _ in range(5):
            head = await self.heads.get(namespace)
            if self._epochs.get(namespace) != head.value.epoch:
                bumped = msgspec.structs.replace(
                    head.value, epoch=head.value.epoch + 1, leader=self.instance
                )
                try:
                    head = await self.heads.cas(head, bumped)
                except Fenced:
                    continue  # someone else moved it: read again
                self._epochs[namespace] = bumped.epoch
                self.metrics.takeovers.inc()
                log.info("leading namespace", extra={"namespace": namespace, "epoch": bumped.epoch})
            try:
                return await self._settle(
                    head, f"aborted by the new leader at epoch {head.value.epoch}"
                )
            except Fenced:
                continue
        raise Conflict(f"could not lead {namespace}: its head keeps moving (another coordinator?)")

    async def _settle(self, head: Head, reason: str) -> Head:
        """Decide what the head left undecided (abort) and make sure its record exists."""
        if head.value.state == "preparing":
            head = await self.heads.cas(
                head, msgspec.structs.replace(head.value, state="aborted", reason=reason)
            )
            self.metrics.decisions.labels("abort").inc()
        if head.value.state in DECIDED:
            await self.announce(head.value)
        return head

    # -- the switch --------------------------------------------------------------------------

    async def switch(
        self,
        namespace: str,
        version: int,
        nodes: list[str],
        timeout_s: float | None,
        actor: str = "",
        reason: str = "",
    ) -> SwitchReply:
        if not nodes:
            raise InvalidInput("a switch needs at least one participant", where="nodes")
        participants = sorted(set(nodes))
        timeout = timeout_s if timeout_s is not None else self.default_timeout_s
        content, sha256, fmt = await self._fetch(namespace, version)
        async with self._locks[namespace]:
            head = await self.lead(namespace)
            txid = new_txid(head.value.epoch)
            head = await self.heads.cas(
                head,
                TxnHead(
                    namespace=namespace,
                    epoch=head.value.epoch,
                    leader=self.instance,
                    txid=txid,
                    state="preparing",
                    version=version,
                    sha256=sha256,
                    participants=participants,
                    started_at=utcnow(),
                    timeout_s=timeout,
                ),
            )
            ballot = _Ballot(frozenset(participants))
            started = anyio.current_time()
            sub = await self.bus.nc.subscribe(
                subjects.txn_votes(namespace, txid), cb=self._vote_handler(head.value, ballot)
            )
            try:
                prepare = Prepare(
                    txid=txid,
                    namespace=namespace,
                    version=version,
                    sha256=sha256,
                    format=fmt,
                    content=content,
                    participants=participants,
                    epoch=head.value.epoch,
                    timeout_s=timeout,
                )
                await self.bus.publish(
                    subjects.txn_prepare(namespace, txid), prepare, msg_id=f"{txid}:prepare"
                )
                await failpoint("coordinator.after_prepare_sent")
                # The deadline is ours, on the monotonic clock; agents never judge it.
                with anyio.move_on_after(timeout):
                    await ballot.done.wait()
            finally:
                await sub.unsubscribe()
            await failpoint("coordinator.after_votes")
            self.metrics.vote_seconds.observe(anyio.current_time() - started)
            records = ballot.records()
            outcome = "commit" if ballot.all_yes() else "abort"
            why = reason or _summary(records, outcome)
            decided = await self._decide(head, outcome, why, records)
            return SwitchReply(txid=txid, outcome=decided.outcome, votes=records)

    async def _decide(
        self, head: Head, outcome: str, reason: str, votes: list[VoteRecord]
    ) -> Decision:
        state = "committed" if outcome == "commit" else "aborted"
        try:
            head = await self.heads.cas(
                head, msgspec.structs.replace(head.value, state=state, reason=reason)
            )
        except Fenced:
            # Someone decided first (a recoverer's abort) or a newer epoch exists. Either
            # way the decision is not ours to write; report what the head says.
            log.warning("fenced before deciding", extra={"txid": head.value.txid})
            self.metrics.fenced.inc()
            current = await self.heads.get(head.value.namespace)
            if current.value.txid == head.value.txid and current.value.state in DECIDED:
                return decision_of(current.value)
            return msgspec.structs.replace(
                decision_of(msgspec.structs.replace(head.value, state="aborted")), reason="fenced"
            )
        self.metrics.decisions.labels(outcome).inc()
        await failpoint("coordinator.after_decision_written")
        decision = await self.announce(head.value, votes)
        await failpoint("coordinator.after_decision_published")
        return decision

    def _vote_handler(self, head: TxnHead, ballot: _Ballot):  # type: ignore[no-untyped-def]
        async def on_vote(msg: Msg) -> None:
            try:
                vote = decode_vote(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                await _ack(msg, head.txid or "", False, f"malformed vote: {exc}")
                return
            node = msg.subject.rsplit(".", 1)[-1]
            if vote.node != node or node not in ballot.participants:
                await _ack(msg, vote.txid, False, f"{vote.node} is not a participant")
                return
            if vote.txid != head.txid or vote.epoch != head.epoch:
                await _ack(msg, vote.txid, False, "vote for another transaction or epoch")
                return
            # The first vote of a node counts; a duplicate is acknowledged, not recounted.
            ballot.votes.setdefault(node, vote)
            await _ack(msg, vote.txid, True, "")
            if vote.vote == "no" or len(ballot.votes) == len(ballot.participants):
                ballot.done.set()

        return on_vote

    async def _fetch(self, namespace: str, version: int) -> tuple[bytes, str, Format]:
        reply = await call(
            self.bus,
            "store",
            "get",
            GetRequest(namespace=namespace, ref=str(version)),
            VersionReply,
        )
        info = reply.info
        if info.status in ("draft", "rejected"):
            raise Conflict(
                f"{namespace} v{version} is {info.status}; only approved versions are switched"
            )
        if reply.content is None:
            raise NotFound(f"{namespace} v{version} has no content")
        # Invariant 4 starts here: bytes that do not match their hash never leave.
        if hashlib.sha256(reply.content).hexdigest() != info.sha256:
            raise Conflict(f"{namespace} v{version}: stored bytes do not match sha256")
        return reply.content, info.sha256, info.format

    # -- recovery -----------------------------------------------------------------------------

    async def resolve(self, namespace: str, txid: str) -> ResolveReply:
        """What happened to ``txid``? Past its timeout with no decision, decide ABORT —
        through the same compare-and-set as the leader, so exactly one decision wins."""
        record = await read_decision(self.bus, namespace, txid)
        if record is not None:
            return _reply(record)
        head = await self.heads.get(namespace)
        h = head.value
        if h.txid != txid:
            # The head moves on only after a decision is recorded: an unknown txid was never
            # decided, so it is aborted (presumed abort).
            return ResolveReply(state="aborted", decision=None)
        if h.state in DECIDED:
            return _reply(await self.announce(h))
        if not _expired(h):
            return ResolveReply(state="pending")
        try:
            head = await self.heads.cas(
                head,
                msgspec.structs.replace(
                    h, state="aborted", reason="no decision before the deadline (presumed abort)"
                ),
            )
        except Fenced:
            return await self.resolve(namespace, txid)  # the leader decided meanwhile
        self.metrics.decisions.labels("abort").inc()
        return _reply(await self.announce(head.value))

    async def recover_all(self) -> float:
        """One sweep: settle expired undecided transactions and unpublished decisions.
        Returns the age of the oldest undecided transaction (for the metric)."""
        oldest = 0.0
        for ns in await self.heads.namespaces():
            head = await self.heads.get(ns)
            h = head.value
            if h.state == "preparing" and h.txid is not None:
                if self._locks[ns].locked():
                    continue  # our own transaction in flight
                oldest = max(oldest, _age(h))
                if h.leader != self.instance and not await self.liveness.alive(h.leader):
                    # Its coordinator stopped heartbeating (crashed, paused, partitioned):
                    # take the namespace over — the epoch bump fences it if it comes back.
                    async with self._locks[ns]:
                        await self.lead(ns)
                elif _expired(h):
                    await self.resolve(ns, h.txid)
            elif h.state in DECIDED and h.txid is not None and h.txid not in self._announced:
                await self.announce(h)
        return oldest


def _age(h: TxnHead) -> float:
    if h.started_at is None:
        return 0.0
    return (datetime.now(UTC) - h.started_at).total_seconds()


def _expired(h: TxnHead) -> bool:
    return _age(h) > h.timeout_s + RECOVERY_GRACE_S


def _reply(d: Decision) -> ResolveReply:
    return ResolveReply(state="committed" if d.outcome == "commit" else "aborted", decision=d)


def _summary(records: list[VoteRecord], outcome: str) -> str:
    if outcome == "commit":
        return f"all {len(records)} participants voted yes"
    no = [f"{r.node}: {r.reason}" for r in records if r.vote == "no"]
    missing = [r.node for r in records if r.vote == "missing"]
    parts = []
    if no:
        parts.append("voted no: " + "; ".join(no))
    if missing:
        parts.append("missed the deadline: " + ", ".join(missing))
    return " | ".join(parts) or "aborted"


async def _ack(msg: Msg, txid: str, accepted: bool, reason: str) -> None:
    if msg.reply:
        await msg.respond(encode(VoteAck(txid=txid or "unknown", accepted=accepted, reason=reason)))
