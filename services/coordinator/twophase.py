"""One atomic switch: prepare → votes → a decision written once → agents apply (docs/design.md §4).

Per namespace, at most one transaction is undecided at a time, and it is the one named on
the head. That makes "abort every undecided transaction" on a takeover one compare-and-set,
and lets anyone answer "what happened to txid X?" from the head and the decision record.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import anyio
import msgspec
import nats.errors
from nats.aio.msg import Msg

from confbus.coordinator.decisions import decision_of, publish_decision, read_decision
from confbus.coordinator.epochs import EpochMarkers, PrepareRefused
from confbus.coordinator.head import Head, Heads
from confbus.coordinator.liveness import Liveness
from confbus.coordinator.metrics import CoordinatorMetrics
from confbus.coordinator.requests import DECIDED, answer, remembered, started_for
from confbus.coordinator.variants import LabelsOf, check_fits, prepared_variants
from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.concurrency import settle
from confbus.runtime.errors import (
    ConfbusError,
    Conflict,
    Fenced,
    InvalidInput,
    NotFound,
    Unavailable,
)
from confbus.runtime.failpoints import failpoint
from confbus.schemas import subjects
from confbus.schemas.api import store as store_api
from confbus.schemas.api.txn import ResolveReply, SwitchReply
from confbus.schemas.base import DECODE_ERRORS, utcnow
from confbus.schemas.events import VoteRecord
from confbus.schemas.names import Format
from confbus.schemas.sealing import content_sha256
from confbus.schemas.signing import Signature
from confbus.schemas.txn import Decision, Prepare, TxnHead, Vote, VoteAck, decode_vote

log = logging.getLogger("confbus.coordinator")

# An undecided transaction is aborted by a recoverer only this long past its own timeout:
# the leader judges the deadline on its monotonic clock; a recoverer on another machine
# reads wall time, so it leaves room for skew. Early would still be safe (compare-and-set),
# only less live.
RECOVERY_GRACE_S = 2.0


def new_txid(epoch: int) -> str:
    return f"e{epoch}-{secrets.token_hex(8)}"


class _Fetched(NamedTuple):
    """A version as the store gave it for a prepare."""

    content: bytes
    sha256: str
    format: Format
    signatures: list[Signature]


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
        claim: Callable[[str], Awaitable[bool]] | None = None,
        labels_of: LabelsOf | None = None,
    ) -> None:
        self.bus = bus
        self.liveness = liveness or Liveness(None, instance)
        self.heads = heads
        self.instance = instance
        self.metrics = metrics
        self.default_timeout_s = default_timeout_s
        # With leases (several replicas): may we lead this namespace now? None: judge by the
        # leader's liveness alone (a single replica, or tests of takeovers).
        self.claim = claim
        # The participants' labels, for a version with overlays (None: every node has none).
        self.labels_of = labels_of
        self._epochs: dict[str, int] = {}  # namespaces we lead, and with which epoch
        self._locks: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)
        self._announced: set[str] = set()  # txids whose decision record we know exists
        self.markers = EpochMarkers(bus, heads, instance)

    async def announce(self, head: TxnHead, votes: list[VoteRecord] | None = None) -> Decision:
        if head.txid in self._announced:
            return decision_of(head)
        # No prepare of an older epoch may follow this decision in the stream.
        await self.markers.cover(head.namespace, head.epoch)
        decision = await publish_decision(self.bus, head, votes, actor=self.instance)
        if len(self._announced) > 10_000:  # bounded: it is only a shortcut
            self._announced.clear()
        self._announced.add(decision.txid)
        return decision

    # -- leadership ------------------------------------------------------------------------

    def forget(self, namespace: str) -> None:
        """Our term on ``namespace`` is over (its lease was lost): leading it again bumps the
        epoch, so nothing of this term can be written afterwards."""
        self._epochs.pop(namespace, None)

    async def lead(self, namespace: str, guess: Head | None = None) -> Head:
        """A head at our epoch with nothing undecided on it.

        Taking over bumps the epoch by compare-and-set, then aborts whatever the previous
        leader left undecided: from here on nothing of the older epoch can be written.
        ``guess``: the head as we believe it is, tried first instead of a read — any
        compare-and-set on it fails if it is out of date, and the loop reads it then.
        """
        for _ in range(5):
            head = guess if guess is not None else await self.heads.get(namespace)
            guess = None
            if self._epochs.get(namespace) != head.value.epoch:
                bumped = msgspec.structs.replace(
                    head.value, epoch=head.value.epoch + 1, leader=self.instance
                )
                try:
                    head = await self.heads.cas(head, bumped)
                    # The epoch's marker, before anything is decided at it: from here on the
                    # stream refuses the prepares of every older epoch.
                    await self.markers.open(namespace, bumped.epoch)
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
        txids: list[str] | None = None,
        sha256: str | None = None,
        request_id: str | None = None,
    ) -> SwitchReply:
        """``txids`` collects the txid(s) this call wrote on the head, for a caller that must
        answer even when the switch is cut short. ``sha256``: the version's, as the caller
        read it — the transaction starts while the bytes are fetched (see below).
        ``request_id``: a request sent again gets the outcome of the transaction started for
        it, never a second one (``confbus.coordinator.requests``)."""
        if not nodes:
            raise InvalidInput("a switch needs at least one participant", where="nodes")
        await failpoint("coordinator.switch_taken")
        participants = sorted(set(nodes))
        timeout = timeout_s if timeout_s is not None else self.default_timeout_s

        def fetch() -> Awaitable[_Fetched]:
            return _riding_out(
                lambda: self._fetch(namespace, version), f"fetching {namespace} v{version}"
            )

        fetched = None
        if sha256 is None:
            fetched = await fetch()
            sha256 = fetched[1]
        want: str = sha256
        async with self._locks[namespace]:
            ours: list[str] = []  # the txid we wrote, once we did (maybe without hearing so)
            replayed: list[SwitchReply] = []  # the request was sent before: its outcome

            async def begin() -> Head:
                # First try the head as we last wrote or read it, without a read: the usual
                # case, we lead the namespace and nobody else writes its head. A
                # compare-and-set that finds it out of date is answered by reading it.
                guess = None if ours else self.heads.known(namespace)
                while True:
                    head = guess or await self.heads.get(namespace)
                    h = head.value
                    if ours and h.txid == ours[0] and self._epochs.get(namespace) == h.epoch:
                        return head  # our write landed though its reply was lost: carry on
                    head = await self.lead(namespace, head)
                    # Sent before (its taker died)? Its transaction, settled by ``lead``, is
                    # the answer; the write below is over this very revision, so none is missed.
                    if started_for(head.value, request_id):
                        reply = answer(head.value, request_id or "")
                        if reply is None:
                            raise Unavailable(f"request {request_id} is under way, retry")
                        replayed.append(reply)
                        return head
                    ours[:] = [new_txid(head.value.epoch)]
                    if txids is not None:
                        txids.append(ours[0])
                    try:
                        return await self.heads.cas(
                            head,
                            TxnHead(
                                namespace=namespace,
                                epoch=head.value.epoch,
                                leader=self.instance,
                                txid=ours[0],
                                state="preparing",
                                version=version,
                                sha256=want,
                                participants=participants,
                                started_at=utcnow(),
                                timeout_s=timeout,
                                request_id=request_id,
                                earlier=remembered(head.value),
                            ),
                        )
                    except Fenced:
                        if guess is None:
                            raise
                    # Not written (the head moved since we saw it): read it, go again.
                    if txids is not None:
                        txids.remove(ours[0])
                    ours.clear()
                    guess = None

            starting = _riding_out(begin, f"starting a transaction on {namespace}")
            if fetched is None:
                # The head and the bytes at once. Bytes that cannot be fetched, or are not the
                # ones the caller named, abort the transaction before any prepare is sent.
                got, began = await settle(fetch(), starting)
                if isinstance(began, Exception):
                    raise began
                if replayed:
                    return replayed[0]
                head = began
                if isinstance(got, Exception) or got[1] != want:
                    why = (
                        f"cannot fetch {namespace} v{version}: {got}"
                        if isinstance(got, Exception)
                        else f"{namespace} v{version} is sha256 {got[1]}, not {want} as asked"
                    )
                    await self._decide(head, "abort", why, [])
                    raise got if isinstance(got, Exception) else Conflict(why)
                fetched = got
            else:
                head = await starting
                if replayed:
                    return replayed[0]
            content, _, fmt, signatures = fetched
            txid = ours[0]
            try:
                variants = await prepared_variants(content, fmt, participants, self.labels_of)
                json_schema = await self._json_schema(namespace) if variants else None
                prepare = encode(
                    Prepare(
                        txid=txid,
                        namespace=namespace,
                        version=version,
                        sha256=sha256,
                        format=fmt,
                        # With variants, each participant's bytes are in its own entry.
                        content=b"" if variants else content,
                        participants=participants,
                        epoch=head.value.epoch,
                        timeout_s=timeout,
                        signatures=signatures,
                        variants=variants,
                        json_schema=json_schema,
                    )
                )
                if variants:  # the store bounds each content, not their sum
                    check_fits(namespace, version, variants, len(prepare), self.bus.nc.max_payload)
            except ConfbusError as exc:
                # Nothing was prepared yet: the transaction is aborted before any vote.
                await self._decide(head, "abort", str(exc), [])
                raise
            ballot = _Ballot(frozenset(participants))
            started = anyio.current_time()
            sub = await self.bus.nc.subscribe(
                subjects.txn_votes(namespace, txid), cb=self._vote_handler(head.value, ballot)
            )
            try:
                await failpoint("coordinator.before_prepare_sent")
                await _riding_out(
                    lambda: self.markers.publish_prepare(
                        namespace,
                        head.value.epoch,
                        subjects.txn_prepare(namespace, txid),
                        prepare,
                        msg_id=f"{txid}:prepare",
                    ),
                    f"publishing the prepare of {txid}",
                )
                await failpoint("coordinator.after_prepare_sent")
                # The deadline is ours, on the monotonic clock; agents never judge it.
                with anyio.move_on_after(timeout):
                    await ballot.done.wait()
            except PrepareRefused as exc:
                # A newer epoch leads the namespace: we lost it while paused or cut off. Stop;
                # its leader aborts our transaction (the decision below is fenced, and says so).
                log.warning(
                    "prepare refused by the stream: another coordinator leads",
                    extra={"namespace": namespace, "txid": txid, "epoch": exc.epoch},
                )
                self.metrics.prepares_refused.inc()
                self.forget(namespace)
                decided = await self._decide(head, "abort", str(exc), [])
                return SwitchReply(txid=txid, outcome=decided.outcome)
            finally:
                # Also when cancelled (the lease was lost): no subscription may leak.
                with anyio.CancelScope(shield=True):
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
        mine = head

        async def write() -> Head:
            try:
                return await self.heads.cas(
                    mine, msgspec.structs.replace(mine.value, state=state, reason=reason)
                )
            except Fenced:
                current = await self.heads.get(mine.value.namespace)
                if current.value.txid == mine.value.txid and current.value.state == state:
                    return current  # our compare-and-set landed (repeated here); reply lost
                raise

        try:
            head = await _riding_out(write, f"deciding {head.value.txid}")
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
        decided = head.value
        try:
            decision = await _riding_out(
                lambda: self.announce(decided, votes), f"announcing {decided.txid}"
            )
        except Unavailable:
            # Decided all the same (the head says so); the recovery sweep publishes the record.
            log.warning("decision not announced yet", extra={"txid": decided.txid})
            decision = decision_of(decided)
        await failpoint("coordinator.after_decision_published")
        return decision

    def _vote_handler(self, head: TxnHead, ballot: _Ballot):  # type: ignore[no-untyped-def]
        async def on_vote(msg: Msg) -> None:
            try:
                vote = decode_vote(msg.data)
            except DECODE_ERRORS as exc:
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

    async def _fetch(self, namespace: str, version: int) -> _Fetched:
        reply = await call(
            self.bus, store_api.GET, store_api.GetRequest(namespace=namespace, ref=str(version))
        )
        info = reply.info
        if info.status in ("draft", "rejected"):
            raise Conflict(
                f"{namespace} v{version} is {info.status}; only approved versions are switched"
            )
        if reply.content is None:
            raise NotFound(f"{namespace} v{version} has no content")
        # Invariant 4 starts here: bytes that do not match their hash never leave.
        # (A sealed secret's sha256 is its plaintext's, declared by the intact envelope: the
        # agents check the decryption against it.)
        if content_sha256(reply.content) != info.sha256:
            raise Conflict(f"{namespace} v{version}: stored bytes do not match sha256")
        return _Fetched(reply.content, info.sha256, info.format, reply.signatures)

    async def _json_schema(self, namespace: str) -> dict[str, Any] | None:
        # Read at each variant prepare, not cached: a policy changed since publish must hold.
        policy = await _riding_out(
            lambda: call(
                self.bus, store_api.POLICY_GET, store_api.PolicyGetRequest(namespace=namespace)
            ),
            f"reading the policy of {namespace}",
        )
        return policy.json_schema

    # -- recovery -----------------------------------------------------------------------------

    async def outcome_of(self, namespace: str, txid: str) -> Decision | None:
        """The decision on ``txid`` if one was made (by anyone), else None."""
        record = await read_decision(self.bus, namespace, txid)
        if record is not None:
            return record
        h = (await self.heads.get(namespace)).value
        return decision_of(h) if h.txid == txid and h.state in DECIDED else None

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
            # The abort opens a new epoch: whoever started this transaction (a leader that is
            # paused, cut off, or whose lease has not run out yet) is fenced from here on, and
            # agents that learn this decision refuse its prepares. The lease holder, if alive,
            # simply starts its next term above it.
            head = await self.heads.cas(
                head,
                msgspec.structs.replace(
                    h,
                    epoch=h.epoch + 1,
                    leader=self.instance,
                    state="aborted",
                    reason="no decision before the deadline (presumed abort)",
                ),
            )
        except Fenced:
            return await self.resolve(namespace, txid)  # the leader decided meanwhile
        self.metrics.decisions.labels("abort").inc()
        return _reply(await self.announce(head.value))

    def _settled(self, h: TxnHead) -> bool:
        """Nothing for the sweep in this head: nothing undecided, its decision announced."""
        if h.txid is None:
            return True
        if h.state == "preparing":
            return False
        return h.state not in DECIDED or h.txid in self._announced

    async def recover_all(self) -> float:
        """One sweep: settle expired undecided transactions and unpublished decisions.
        Returns the age of the oldest undecided transaction (for the metric)."""
        oldest = 0.0
        for ns in await self.heads.unsettled(self._settled):
            head = await self.heads.get(ns)
            h = head.value
            if h.state == "preparing" and h.txid is not None:
                if self._locks[ns].locked():
                    continue  # our own transaction in flight
                oldest = max(oldest, _age(h))
                if self.claim is not None:
                    # Held by us with nothing of ours in flight, or free (its leader went
                    # away): settle it. Held by another: its leader decides, or presumed abort.
                    if await self.claim(ns):
                        async with self._locks[ns]:
                            await self.lead(ns)
                    elif _expired(h):
                        await self.resolve(ns, h.txid)
                elif h.leader != self.instance and not await self.liveness.alive(h.leader):
                    # Its coordinator stopped heartbeating (crashed, paused, partitioned):
                    # take the namespace over — the epoch bump fences it if it comes back.
                    async with self._locks[ns]:
                        await self.lead(ns)
                elif _expired(h):
                    await self.resolve(ns, h.txid)
            elif h.state in DECIDED and h.txid is not None and h.txid not in self._announced:
                await self.announce(h)
        return oldest


# How long one step of a switch rides out the bus failing under it (a stream electing a new
# leader after a server died takes a few seconds) before the caller is told to retry.
RIDE_OUT_S = 15.0
T = TypeVar("T")


async def _riding_out(step: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``step``, again on a transient bus error, for up to ``RIDE_OUT_S``; then
    ``Unavailable``. Every step is safe to repeat: reads, compare-and-sets that tell a write of
    their own that landed (its reply lost) from another's, and publishes deduplicated by their
    message id."""
    delay = 0.1
    deadline = anyio.current_time() + RIDE_OUT_S
    while True:
        try:
            return await step()
        except (nats.errors.Error, Unavailable, TimeoutError) as exc:
            if anyio.current_time() + delay > deadline:
                raise Unavailable(f"{what}: the bus did not answer ({exc!r}), retry") from exc
            log.info("riding out a bus error", extra={"step": what, "error": repr(exc)})
        await anyio.sleep(delay)
        delay = min(delay * 2, 1.0)


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
