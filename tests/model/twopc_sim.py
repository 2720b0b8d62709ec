"""A simulated world for the two-phase commit (docs/design.md §4), step by step, for the
Hypothesis model.

What is simulated, and what is real:

- **The bus**: ``CFG_TXN`` is an append-only list read in order by each agent from its persisted
  position (a decision subject is written once: ``Nats-Expected-Last-Subject-Sequence: 0``);
  the head is a value with a revision and compare-and-set; epoch markers sit on their own
  subject, each written over the last one's sequence and only over a lower epoch, and a prepare
  is stored only while its epoch's marker is the last (else the stream refuses it); votes
  travel in a bag from which the model drops, duplicates and delivers in any order. A vote
  reaches a coordinator only while it is collecting that transaction's votes (the subject is
  per txid).
- **Coordinators**: a faithful re-implementation of ``confbus.coordinator.twophase``, cut into
  the steps between which a real process can crash or stall: ``lead`` (bump the epoch by CAS,
  then settle what is undecided: abort a preparing head, announce a decided one), ``begin``
  (CAS the head to *preparing*), ``send_prepare``, collecting votes, ``decide`` (CAS the head:
  the decision), ``announce`` (the write-once record), ``recover`` and ``resolve``. A crashed
  coordinator forgets everything; a paused one (a zombie) keeps its stale view and may act
  again later. Liveness (who may take over) only says who should try; the CAS decides.
- **Agents**: a faithful re-implementation of ``confbus.agent.node`` message handling over
  the REAL ``confbus.agent.disk.NamespaceDisk`` in a temp directory (the sync API: stage,
  seal, commit, abort, apply, observe_epoch, save_stream_seq, load), crashing at the agent's
  failpoints (after stage, before/after the vote, before/after the apply) and restarting from
  what is on disk.

``Bugs`` switches on deliberate protocol bugs, so that the model's invariants can be seen to
fail (tests/model/test_2pc_model.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec

from confbus.agent.disk import NamespaceDisk
from confbus.agent.state import CommitOutcome, Refused
from confbus.schemas.txn import Decision, Prepare, PreparedVariant, Vote

NS = "web"
Outcome = Literal["commit", "abort"]
CrashAt = Literal["none", "after_stage", "before_vote", "after_vote", "before_apply", "after_apply"]
SEQ_SAVE_EVERY = 200  # as services.agent.node


# Every version has variants (docs/design.md §2.6): n1 and n2 run one, n3 another, so a
# prepare carries two entries and each node stages bytes of its own.
VARIANT_OF = {"n1": "a", "n2": "a", "n3": "b"}


def content_for(version: int, node: str | None = None) -> bytes:
    """A node's bytes of ``version``; without a node, the version's own (whose sha256 the
    head and the decisions name, as a version with overlays is named by its envelope's)."""
    variant = VARIANT_OF.get(node, "-") if node else "version"
    return f'{{"version": {version}, "pool": {version * 10}, "variant": "{variant}"}}\n'.encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Violation(AssertionError):
    """An invariant of docs/design.md §8 does not hold."""


@dataclass(frozen=True)
class Bugs:
    publish_before_decide: bool = False  # the record goes out before the head's CAS
    apply_on_prepare: bool = False  # an agent installs as soon as it voted yes
    blind_head_writes: bool = False  # the head is written without compare-and-set
    unfenced_prepares: bool = False  # prepares published without their epoch marker's check


@dataclass(frozen=True)
class HeadValue:
    epoch: int = 0
    leader: str = ""
    txid: str | None = None
    state: str = "idle"  # idle | preparing | committed | aborted
    version: int | None = None
    participants: tuple[str, ...] = ()


class Fenced(Exception):
    pass


@dataclass
class World:
    nodes: tuple[str, ...]
    bugs: Bugs = field(default_factory=Bugs)
    head: HeadValue = field(default_factory=HeadValue)
    rev: int = 0
    stream: list[Prepare | Decision] = field(default_factory=list)
    decision_at: dict[str, int] = field(default_factory=dict)  # txid -> index in the stream
    votes: list[Vote] = field(default_factory=list)  # in flight
    decided: dict[str, Outcome] = field(default_factory=dict)  # by the head's CAS
    decided_epoch: dict[str, int] = field(default_factory=dict)
    max_epoch: int = 0
    next_txid: int = 0
    next_version: int = 0
    stale_records: int = 0  # records of an older epoch written after a newer one existed
    # cfg.txn.<ns>.epoch: the last marker's epoch and sequence (0: none yet)
    marker_epoch: int = 0
    marker_seq: int = 0
    # the newest epoch of a marker or decision in the stream so far: no prepare of an older one
    # may be stored after it
    fence_epoch: int = 0
    stale_prepares_stored: int = 0
    prepares_refused: int = 0
    lease: str = ""  # which coordinator should lead (liveness only; the head decides)

    # -- the head: compare-and-set on the revision ------------------------------------------

    def cas(self, rev: int, new: HeadValue) -> int:
        if rev != self.rev and not self.bugs.blind_head_writes:
            raise Fenced
        if new.epoch < self.max_epoch:
            raise Violation(
                f"fenced: head written at epoch {new.epoch} after epoch {self.max_epoch} existed"
            )
        self.max_epoch = max(self.max_epoch, new.epoch)
        if new.txid is not None and new.state in ("committed", "aborted"):
            out: Outcome = "commit" if new.state == "committed" else "abort"
            prior = self.decided.get(new.txid)
            if prior is not None and prior != out:
                raise Violation(f"flipped: {new.txid} decided {prior}, then {out}")
            self.decided[new.txid] = out
            self.decided_epoch.setdefault(new.txid, new.epoch)
        self.head = new
        self.rev += 1
        return self.rev

    # -- CFG_TXN ------------------------------------------------------------------------------

    def publish_marker(self, epoch: int, expect_seq: int) -> int:
        """Stored only over the sequence read (``Nats-Expected-Last-Subject-Sequence``)."""
        if expect_seq != self.marker_seq:
            raise Fenced
        self.marker_seq += 1
        self.marker_epoch = epoch
        self.fence_epoch = max(self.fence_epoch, epoch)
        return self.marker_seq

    def publish_prepare(self, p: Prepare, expect_marker: int | None) -> bool:
        """Stored only while the marker expected is the last (``None``: no check); False when
        the stream refuses it."""
        if expect_marker is not None and expect_marker != self.marker_seq:
            self.prepares_refused += 1
            return False
        if p.epoch < self.fence_epoch:
            self.stale_prepares_stored += 1
        self.stream.append(p)
        return True

    def publish_decision(self, d: Decision) -> Decision:
        """Write-once: the first record of a txid stays; returns the one that is there."""
        at = self.decision_at.get(d.txid)
        if at is not None:
            existing = self.stream[at]
            assert isinstance(existing, Decision)
            return existing
        if d.epoch < self.max_epoch:
            self.stale_records += 1
        self.decision_at[d.txid] = len(self.stream)
        self.stream.append(d)
        self.fence_epoch = max(self.fence_epoch, d.epoch)
        return d

    def record(self, txid: str) -> Decision | None:
        at = self.decision_at.get(txid)
        if at is None:
            return None
        d = self.stream[at]
        assert isinstance(d, Decision)
        return d

    def prepare_of(self, txid: str) -> Prepare | None:
        for r in reversed(self.stream):
            if isinstance(r, Prepare) and r.txid == txid:
                return r
        return None

    def new_txid(self, epoch: int) -> str:
        self.next_txid += 1
        return f"e{epoch}-t{self.next_txid}"


def decision_of(h: HeadValue) -> Decision:
    assert h.txid is not None and h.version is not None
    assert h.state in ("committed", "aborted")
    return Decision(
        txid=h.txid,
        namespace=NS,
        version=h.version,
        sha256=sha(content_for(h.version)),
        epoch=h.epoch,
        outcome="commit" if h.state == "committed" else "abort",
        participants=list(h.participants),
    )


@dataclass
class Ballot:
    head: HeadValue
    rev: int
    votes: dict[str, str] = field(default_factory=dict)
    prepared: bool = False  # the prepare is in the stream; votes are being collected
    decided: HeadValue | None = None  # after our CAS: what to announce


@dataclass
class Coordinator:
    """One coordinator process (``confbus.coordinator.twophase.Coordinator``)."""

    name: str
    alive: bool = True
    paused: bool = False
    epoch: int | None = None  # _epochs[ns]: the epoch we lead with
    ballot: Ballot | None = None
    announced: set[str] = field(default_factory=set)
    marker: tuple[int, int] | None = None  # the newest marker we know: (epoch, seq)

    def crash(self) -> None:
        self.alive, self.paused = False, False
        self.epoch, self.ballot = None, None
        self.announced = set()
        self.marker = None

    def restart(self, incarnation: int) -> None:
        # A new process: a new instance id, nothing remembered.
        self.name = f"{self.name.split('#')[0]}#{incarnation}"
        self.alive = True

    @property
    def acting(self) -> bool:
        return self.alive and not self.paused

    # -- leadership ------------------------------------------------------------------------

    def raise_marker(self, w: World, epoch: int) -> tuple[int, int]:
        """``EpochMarkers._raise_to``: the last marker once it is of ``epoch`` or newer."""
        if w.marker_epoch < epoch:
            w.publish_marker(epoch, w.marker_seq)
        self.marker = (w.marker_epoch, w.marker_seq)
        return self.marker

    def open_marker(self, w: World, epoch: int) -> int:
        got, seq = self.raise_marker(w, epoch)
        if got > epoch:
            raise Fenced
        return seq

    def announce(self, w: World, h: HeadValue) -> Decision:
        assert h.txid is not None
        if self.marker is None or self.marker[0] < h.epoch:
            self.raise_marker(w, h.epoch)  # ``cover``: no older prepare after this decision
        d = w.publish_decision(decision_of(h))
        self.announced.add(h.txid)
        return d

    def lead(self, w: World) -> tuple[HeadValue, int]:
        """One pass of ``lead``: a head at our epoch with nothing undecided (or Fenced)."""
        h, rev = w.head, w.rev
        if self.epoch != h.epoch:
            bumped = HeadValue(h.epoch + 1, self.name, h.txid, h.state, h.version, h.participants)
            rev = w.cas(rev, bumped)
            self.open_marker(w, bumped.epoch)
            self.epoch, h = bumped.epoch, bumped
        if h.state == "preparing":
            h = HeadValue(h.epoch, h.leader, h.txid, "aborted", h.version, h.participants)
            rev = w.cas(rev, h)
        if h.state in ("committed", "aborted") and h.txid not in self.announced:
            self.announce(w, h)
        return h, rev

    # -- the switch, step by step -------------------------------------------------------------

    def begin(self, w: World, version: int, participants: tuple[str, ...]) -> None:
        """``lead`` then the CAS to *preparing* (a switch that is fenced fails at once)."""
        h, rev = self.lead(w)
        txid = w.new_txid(h.epoch)
        new = HeadValue(h.epoch, self.name, txid, "preparing", version, participants)
        rev = w.cas(rev, new)
        self.ballot = Ballot(new, rev)

    def send_prepare(self, w: World) -> None:
        b = self.ballot
        assert b is not None and not b.prepared and b.decided is None
        h = b.head
        assert h.txid is not None and h.version is not None
        groups: dict[bytes, list[str]] = {}
        for node in h.participants:
            groups.setdefault(content_for(h.version, node), []).append(node)
        expect: int | None = None
        if not w.bugs.unfenced_prepares:
            if self.marker is not None and self.marker[0] == h.epoch:
                expect = self.marker[1]
            elif w.head.epoch == h.epoch:  # ``_reopen``: the head says we still lead
                try:
                    expect = self.open_marker(w, h.epoch)
                except Fenced:
                    expect = -1
            else:
                expect = -1  # refused without a write: a newer epoch leads
        stored = w.publish_prepare(
            Prepare(
                txid=h.txid,
                namespace=NS,
                version=h.version,
                sha256=sha(content_for(h.version)),
                format="json",
                content=b"",
                participants=list(h.participants),
                epoch=h.epoch,
                timeout_s=1.0,
                variants=[
                    PreparedVariant(name=f"v{i}", sha256=sha(data), content=data, nodes=nodes)
                    for i, (data, nodes) in enumerate(sorted(groups.items()))
                ],
            ),
            expect,
        )
        if not stored:
            # Refused by the stream: the namespace has a newer leader. Stop; it aborts ours.
            self.ballot, self.epoch = None, None
            return
        b.prepared = True

    def on_vote(self, v: Vote) -> None:
        b = self.ballot
        if b is None or not b.prepared or b.decided is not None:
            return
        if v.txid != b.head.txid or v.epoch != b.head.epoch or v.node not in b.head.participants:
            return
        b.votes.setdefault(v.node, v.vote)  # the first vote of a node counts

    def can_decide(self, timed_out: bool) -> bool:
        b = self.ballot
        if b is None or not b.prepared or b.decided is not None:
            return False
        everyone = len(b.votes) == len(b.head.participants)
        return timed_out or everyone or "no" in b.votes.values()

    def decide(self, w: World) -> None:
        """The head's compare-and-set *is* the decision; fenced → not ours to write."""
        b = self.ballot
        assert b is not None
        h = b.head
        all_yes = len(b.votes) == len(h.participants) and all(v == "yes" for v in b.votes.values())
        state = "committed" if all_yes else "aborted"
        new = HeadValue(h.epoch, h.leader, h.txid, state, h.version, h.participants)
        if w.bugs.publish_before_decide:
            self.announce(w, new)  # BUG: the agents hear it before it is decided
            b.decided = new
            return
        try:
            w.cas(b.rev, new)
        except Fenced:
            self.ballot = None  # someone decided first, or a newer epoch exists
            return
        b.decided = new

    def finish(self, w: World) -> None:
        """After the decision: announce it (write-once record)."""
        b = self.ballot
        assert b is not None and b.decided is not None
        if w.bugs.publish_before_decide:
            try:
                w.cas(b.rev, b.decided)  # BUG: decided only now (may be fenced)
            except Fenced:
                pass
        else:
            self.announce(w, b.decided)
        self.ballot = None

    # -- recovery ------------------------------------------------------------------------------

    def resolve(self, w: World, txid: str, expired: bool) -> tuple[str, Decision | None]:
        """``Coordinator.resolve``: the record, else — once the transaction is past its
        deadline (``expired``: the model's clock) — abort through the same CAS."""
        d = w.record(txid)
        if d is not None:
            return ("committed" if d.outcome == "commit" else "aborted", d)
        h, rev = w.head, w.rev
        if h.txid != txid:
            return ("aborted", None)
        if h.state in ("committed", "aborted"):
            d = self.announce(w, h)
            return ("committed" if d.outcome == "commit" else "aborted", d)
        if not expired:
            return ("pending", None)
        new = HeadValue(h.epoch, h.leader, h.txid, "aborted", h.version, h.participants)
        try:
            w.cas(rev, new)
        except Fenced:
            return ("pending", None)  # the leader decided meanwhile: ask again
        return ("aborted", self.announce(w, new))

    def recover(self, w: World, leader_alive: bool, expired: bool) -> None:
        """One ``recover_all`` sweep for the namespace."""
        if self.ballot is not None:
            return  # our own transaction in flight (the namespace lock)
        h = w.head
        if h.state == "preparing" and h.txid is not None:
            if h.leader != self.name and not leader_alive:
                try:
                    self.lead(w)
                except Fenced:
                    pass
            else:
                self.resolve(w, h.txid, expired)
        elif h.state in ("committed", "aborted") and h.txid not in self.announced:
            self.announce(w, h)


@dataclass
class Agent:
    """One node's agent (``confbus.agent.node``) over the real ``NamespaceDisk``."""

    name: str
    root: Path
    disk: NamespaceDisk = field(init=False)
    alive: bool = True
    pos: int = 0  # next index of the stream to read
    unsaved: int = 0
    applies: list[tuple[int, str]] = field(default_factory=list)  # (version, txid), observed
    yes_votes: list[tuple[str, int, int]] = field(default_factory=list)  # txid, epoch, seen

    def __post_init__(self) -> None:
        self.disk = NamespaceDisk(NS, self.root / "etc" / "web.json", self.root / "state", keep=3)
        self.load()

    def load(self) -> None:
        st = self.disk.load()
        self.pos = st.stream_seq  # the ordered consumer resumes after the saved sequence
        self.unsaved = 0
        self.alive = True

    def crash(self) -> None:
        # Memory is gone; the disk stays. A new NamespaceDisk is what a new process opens.
        self.alive = False
        self.disk = NamespaceDisk(NS, self.root / "etc" / "web.json", self.root / "state", keep=3)

    # -- reading CFG_TXN -------------------------------------------------------------------

    def step(self, w: World, crash_at: CrashAt) -> bool:
        """Handle the next record (False: nothing to read)."""
        if self.pos >= len(w.stream):
            return False
        record = w.stream[self.pos]
        seq = self.pos + 1
        if isinstance(record, Prepare):
            changed = self.on_prepare(w, record, crash_at)
        else:
            changed = self.on_decision(w, record, crash_at)
        if not self.alive:
            return True  # crashed mid-way: the sequence was not saved
        self.pos = seq
        self.unsaved += 1
        if changed or self.unsaved >= SEQ_SAVE_EVERY:
            self.disk.save_stream_seq(seq)
            self.unsaved = 0
        return True

    def on_prepare(self, w: World, p: Prepare, crash_at: CrashAt) -> bool:
        if self.name not in p.participants:
            return False
        seen = self.disk.snapshot().highest_epoch
        try:
            staged = self.disk.stage(p, self.name)
            if crash_at == "after_stage":
                self.crash()
                return True
            if not staged.already_prepared:
                try:
                    self.disk.seal(p.txid)
                except Exception:
                    self.disk.abort(p.txid)
                    raise
        except Refused as no:
            w.votes.append(self._vote(p, "no", no.reason))
            return True
        if crash_at == "before_vote":
            self.crash()
            return True
        self.yes_votes.append((p.txid, p.epoch, seen))
        w.votes.append(self._vote(p, "yes", ""))
        if (
            w.bugs.apply_on_prepare
            and self.disk.commit(p.txid, p.version, p.sha256) is CommitOutcome.APPLIED
        ):
            self.applies.append((p.version, p.txid))  # BUG: before the decision
        if crash_at == "after_vote":
            self.crash()
        return True

    def _vote(self, p: Prepare, vote: Literal["yes", "no"], reason: str) -> Vote:
        return Vote(
            txid=p.txid, namespace=NS, node=self.name, epoch=p.epoch, vote=vote, reason=reason
        )

    def on_decision(self, w: World, d: Decision, crash_at: CrashAt) -> bool:
        self.disk.observe_epoch(d.epoch)
        if self.name not in d.participants:
            return False
        if crash_at == "before_apply":
            self.crash()
            return True
        if d.outcome == "abort":
            return bool(self.disk.abort(d.txid))
        outcome = self.disk.commit(d.txid, d.version, d.sha256)
        if outcome is CommitOutcome.MISSING:
            # Never staged here: the prepare in the stream has the bytes (checked).
            p = w.prepare_of(d.txid)
            own = p.bytes_for(self.name) if p is not None and p.sha256 == d.sha256 else None
            if (
                own is not None
                and sha(own[0]) == own[1]
                and self.disk.apply(d.version, own[1], own[0])
            ):
                outcome = CommitOutcome.APPLIED
        if outcome is CommitOutcome.APPLIED:
            self.applies.append((d.version, d.txid))
            if crash_at == "after_apply":
                self.crash()  # before the apply is recorded (``flush``)
            else:
                self.disk.flush()  # as the agent does once it has announced the apply
        return True

    # -- in doubt ------------------------------------------------------------------------------

    def resolve(self, w: World, coordinator: Coordinator | None, expired: bool) -> None:
        """``NodeAgent._resolve``: the record, else ask the coordinator service."""
        prepared = self.disk.snapshot().prepared
        if prepared is None:
            return
        d = w.record(prepared.txid)
        if d is None:
            if coordinator is None:
                return  # nobody answers: stay in doubt, keep serving the old config
            state, d = coordinator.resolve(w, prepared.txid, expired)
            if state == "pending":
                return
            if d is None:  # presumed abort: it never reached a decision
                self.disk.abort(prepared.txid)
                return
        self.on_decision(w, d, "none")


def head_dump(w: World) -> str:
    return msgspec.json.encode(w.head.__dict__).decode()
