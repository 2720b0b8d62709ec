"""Model-based test of the two-phase commit (Hypothesis stateful testing).

Random interleavings of two coordinators (switches cut into their steps, crashes, restarts,
pauses: zombies) and three agents over the REAL ``NamespaceDisk`` (reading ``CFG_TXN`` in order,
crashing at each of their failpoints, re-reading after a restart, resolving doubts), over a bus
that drops, duplicates and reorders votes. See ``tests.model.twopc_sim`` for what is simulated.

Invariants, after every step:

- **atomic**: a node only ever applies a transaction the head decided *commit* (so never one
  that aborted, nor one not yet decided);
- **fenced**: the head is never written at an epoch lower than one it already had, a decision
  never flips, every decision record agrees with the head's decision, and no node votes yes on
  a prepare older than an epoch it has already seen;
- **integrity**: a node's live bytes hash to its applied version's sha256 (and are exactly that
  version's bytes for this node: every version has variants, each node stages its own);
- **never without config / forward-only**: the applied version never moves backward and its
  bytes are kept in the node's history.

After each run (``teardown``) the bus heals and everything drains: nothing is left in doubt,
and every participant of a committed transaction has applied it or a newer version.

CI runs ≥ 10,000 steps in total (counted); ``-m slow`` runs ten times more. The same machine
with a deliberate bug switched on must fail (``test_the_model_catches_*``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.faults.results import Figures, finish
from tests.model.twopc_sim import (
    Agent,
    Bugs,
    Coordinator,
    CrashAt,
    Fenced,
    Violation,
    World,
    content_for,
    sha,
)

NODES = ("n1", "n2", "n3")
STEPS: Counter[str] = Counter()  # rules executed, over every example of a test
SEEN: Counter[str] = Counter()  # what the runs came to: commits, aborts, applies, crashes…
CRASH_POINTS: list[CrashAt] = [
    "none",
    "none",
    "none",
    "none",
    "none",
    "none",
    "after_stage",
    "before_vote",
    "after_vote",
    "before_apply",
    "after_apply",
]
# Real file-system work, without paying for fsyncs on a shared CI disk: tmpfs if there is one.
TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

coords = st.integers(min_value=0, max_value=1)
nodes = st.sampled_from(NODES)
picks = st.integers(min_value=0, max_value=1_000)
# Time passing past a deadline: rare, or nothing would ever get the time to commit.
# (Hypothesis favours the first element of ``sampled_from`` and small integers: the common,
# harmless choice goes first.)
rarely = st.sampled_from([False] * 9 + [True])


class TwoPCMachine(RuleBasedStateMachine):
    BUGS = Bugs()

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="confbus-2pc-model-", dir=TMP_ROOT))
        self.w = World(NODES, bugs=self.BUGS)
        self.coords = [Coordinator("c1"), Coordinator("c2")]
        self.agents = {n: Agent(n, self.root / n) for n in NODES}
        self.incarnations = 0
        self.applied_max = dict.fromkeys(NODES, 0)

    def teardown(self) -> None:
        try:
            self.drain_and_check()
            SEEN.update(self.w.decided.values())
            SEEN["applies"] += sum(len(a.applies) for a in self.agents.values())
            SEEN["stale_records_fenced_by_write_once"] += self.w.stale_records
            SEEN["prepares_refused"] += self.w.prepares_refused
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _tick(self, name: str) -> None:
        STEPS[name] += 1

    def leader_alive(self) -> bool:
        return any(c.name == self.w.head.leader and c.acting for c in self.coords)

    def acting(self) -> Coordinator | None:
        return next((c for c in self.coords if c.acting), None)

    # -- coordinators ------------------------------------------------------------------------

    def claim(self, co: Coordinator) -> bool:
        """The lease: switches go to its holder; a replica takes it when the holder stopped
        (crashed or paused: it stopped renewing). It only says who should lead."""
        holder = next((c for c in self.coords if c.name == self.w.lease), None)
        if holder is None or not holder.acting:
            self.w.lease = co.name
        return self.w.lease == co.name

    @rule(
        c=coords,
        participants=st.sets(nodes, min_size=1, max_size=3),
        older=picks,
        rogue=rarely,
    )
    def start_switch(self, c: int, participants: set[str], older: int, rogue: bool) -> None:
        """A switch request reaches the lease holder — or, ``rogue``, another replica that
        misjudged the lease (clock skew): the epoch must keep that safe."""
        self._tick("start_switch")
        co = self.coords[c]
        if not co.acting or co.ballot is not None or not (self.claim(co) or rogue):
            return
        if older % 5 == 0 and self.w.next_version > 1:
            version = 1 + older % self.w.next_version  # a switch to an older version
        else:
            self.w.next_version += 1
            version = self.w.next_version
        try:
            co.begin(self.w, version, tuple(sorted(participants)))
        except Fenced:
            event("switch fenced at begin")

    @rule(c=coords, timed_out=rarely)
    def coordinator_step(self, c: int, timed_out: bool) -> None:
        """The next step of the coordinator's switch: send the prepare, decide (all votes
        in, a no, or its deadline passed), announce the decision."""
        self._tick("coordinator_step")
        co = self.coords[c]
        b = co.ballot
        if not co.acting or b is None:
            return
        if not b.prepared:
            co.send_prepare(self.w)
        elif b.decided is None:
            if co.can_decide(timed_out):
                co.decide(self.w)
                if co.ballot is None:
                    event("fenced at decide")
        else:
            event(f"decided {b.decided.state}")
            co.finish(self.w)

    @rule(c=coords, expired=rarely)
    def recover(self, c: int, expired: bool) -> None:
        self._tick("recover")
        co = self.coords[c]
        if co.acting:
            self.claim(co)
            co.recover(self.w, self.leader_alive(), expired)

    @rule(c=coords, fault=st.sampled_from(["resume", "restart", "pause", "crash"]))
    def coordinator_fault(self, c: int, fault: str) -> None:
        """SIGKILL, a restart (a new instance), SIGSTOP / SIGCONT: a paused coordinator keeps
        its stale view and may act again later (a zombie)."""
        self._tick("coordinator_fault")
        co = self.coords[c]
        if fault == "crash":
            co.crash()
        elif fault == "restart" and not co.alive:
            self.incarnations += 1
            co.restart(self.incarnations)
        elif co.alive:
            co.paused = fault == "pause"

    # -- the lossy, duplicating, reordering vote bus ------------------------------------------

    @rule(i=picks, count=st.integers(min_value=1, max_value=3))
    def deliver_votes(self, i: int, count: int) -> None:
        self._tick("deliver_votes")
        for k in range(count):
            if not self.w.votes:
                return
            vote = self.w.votes.pop((i + k) % len(self.w.votes))  # in any order
            for co in self.coords:
                if co.acting:
                    co.on_vote(vote)

    @rule(i=picks, duplicate=st.booleans())
    def bus_fault(self, i: int, duplicate: bool) -> None:
        """A vote is lost, or delivered twice."""
        self._tick("bus_fault")
        if self.w.votes:
            vote = self.w.votes[i % len(self.w.votes)]
            if duplicate:
                self.w.votes.append(vote)
            else:
                self.w.votes.remove(vote)

    # -- agents --------------------------------------------------------------------------------

    @rule(n=nodes, crash_at=st.sampled_from(CRASH_POINTS), count=st.integers(1, 4))
    def agent_step(self, n: str, crash_at: CrashAt, count: int) -> None:
        """The agent handles its next records of CFG_TXN (crashing at a failpoint, maybe)."""
        self._tick("agent_step")
        a = self.agents[n]
        for k in range(count):
            if not a.alive or not a.step(self.w, crash_at if k == count - 1 else "none"):
                return

    @rule(n=nodes, expired=rarely)
    def agent_resolve(self, n: str, expired: bool) -> None:
        self._tick("agent_resolve")
        a = self.agents[n]
        if a.alive:
            a.resolve(self.w, self.acting(), expired)

    @rule(n=nodes, fault=st.sampled_from(["restart", "rewind", "crash"]), back=st.integers(1, 6))
    def agent_fault(self, n: str, fault: str, back: int) -> None:
        """SIGKILL, a restart from what is on disk, or the stream delivering again what the
        agent already handled (duplicates)."""
        self._tick("agent_fault")
        a = self.agents[n]
        if fault == "crash":
            a.crash()
        elif fault == "restart":
            if not a.alive:
                a.load()
        elif a.alive:
            a.pos = max(0, a.pos - back)

    # -- fault-free progress -------------------------------------------------------------------

    @rule(rounds=st.integers(min_value=1, max_value=3))
    def progress(self, rounds: int) -> None:
        """Everything that is running does its next step, with nothing lost: without this, a
        switch would rarely get through all its steps between two faults (and commits would
        be rare). Faults still land between any two rounds."""
        self._tick("progress")
        for _ in range(rounds):
            for co in self.coords:
                if co.acting and co.ballot is not None:
                    b = co.ballot
                    if not b.prepared:
                        co.send_prepare(self.w)
                    elif b.decided is None:
                        if co.can_decide(False):
                            co.decide(self.w)
                    else:
                        co.finish(self.w)
            for a in self.agents.values():
                if a.alive:
                    while a.step(self.w, "none"):
                        pass
            for vote in self.w.votes:
                for co in self.coords:
                    if co.acting:
                        co.on_vote(vote)
            self.w.votes.clear()

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def atomic(self) -> None:
        for a in self.agents.values():
            for version, txid in a.applies:
                if self.w.decided.get(txid) != "commit":
                    raise Violation(
                        f"atomic: {a.name} applied v{version} of {txid}, whose decision is "
                        f"{self.w.decided.get(txid, 'not written')}"
                    )

    @invariant()
    def fenced(self) -> None:
        for txid, at in self.w.decision_at.items():
            record = self.w.stream[at]
            decided = self.w.decided.get(txid)
            if decided is None or getattr(record, "outcome", None) != decided:
                raise Violation(f"fenced: record of {txid} says {record!r}, the head {decided}")
        if self.w.stale_prepares_stored:
            raise Violation(
                "fenced: a prepare was stored after a marker or decision of a newer epoch"
            )
        for a in self.agents.values():
            for txid, epoch, seen in a.yes_votes:
                if epoch < seen:
                    raise Violation(
                        f"fenced: {a.name} voted yes on {txid} (epoch {epoch} < {seen})"
                    )

    @invariant()
    def integrity_and_forward_only(self) -> None:
        for a in self.agents.values():
            if not a.alive:
                continue
            s = a.disk.snapshot()
            if s.applied_version is None:
                if s.live_sha256 is not None:
                    raise Violation(f"integrity: {a.name} has a live file but nothing applied")
                continue
            want = sha(content_for(s.applied_version, a.name))  # its own variant's bytes
            if not (s.live_sha256 == s.applied_sha256 == want):
                raise Violation(f"integrity: {a.name} live bytes are not v{s.applied_version}")
            if s.applied_version < self.applied_max[a.name]:
                raise Violation(
                    f"forward-only: {a.name} went from v{self.applied_max[a.name]} "
                    f"to v{s.applied_version}"
                )
            self.applied_max[a.name] = s.applied_version
            if s.applied_version not in s.history:
                raise Violation(f"never without config: v{s.applied_version} not kept")

    # -- after the run: heal, drain, and check convergence ----------------------------------------

    def drain_and_check(self) -> None:
        w = self.w
        for co in self.coords:
            co.paused = False
            if not co.alive:
                self.incarnations += 1
                co.restart(self.incarnations)
        for a in self.agents.values():
            if not a.alive:
                a.load()
        for _ in range(50):  # bounded: each round settles at least one step if any is left
            before = (len(w.stream), w.rev, len(w.votes))
            for vote in list(w.votes):
                for co in self.coords:
                    co.on_vote(vote)
            w.votes.clear()
            for co in self.coords:
                if co.ballot is not None:
                    if not co.ballot.prepared:
                        co.send_prepare(w)
                    elif co.ballot.decided is None and co.can_decide(True):
                        co.decide(w)
                    if co.ballot is not None and co.ballot.decided is not None:
                        co.finish(w)
                co.recover(w, leader_alive=True, expired=True)
            for a in self.agents.values():
                while a.step(w, "none"):
                    pass
                a.resolve(w, self.coords[0], expired=True)
            self.atomic()
            self.fenced()
            self.integrity_and_forward_only()
            if before == (len(w.stream), w.rev, len(w.votes)) and not any(
                a.disk.snapshot().in_doubt for a in self.agents.values()
            ):
                break
        if w.head.state == "preparing":
            raise Violation(f"in doubt after the drain: head {w.head}")
        for a in self.agents.values():
            s = a.disk.snapshot()
            if s.in_doubt:
                raise Violation(f"in doubt after the drain: {a.name} holds {s.prepared}")
            committed = [
                d.version
                for txid in w.decision_at
                if (d := w.record(txid)) is not None
                and d.outcome == "commit"
                and a.name in d.participants
            ]
            target = max(committed, default=None)
            if s.applied_version != target:
                raise Violation(
                    f"atomic: {a.name} runs v{s.applied_version} after the drain, target {target}"
                )


def run_model(machine: type[TwoPCMachine], examples: int, steps: int) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            phases=[Phase.generate, Phase.shrink],
        ),
    )


def model_figures(tier: str, examples: int, started: float, bug: str = "") -> Figures:
    fig = Figures(
        scenario="model_2pc",
        title="2PC model (Hypothesis stateful, simulated lossy bus, real NamespaceDisk)",
        tier=tier,  # type: ignore[arg-type]
        bug=bug,
        runs=examples,
        budget_s={"ci": 10.0, "bug": 1.0}.get(tier),
    )
    fig.notes = {"steps": sum(STEPS.values()), **SEEN}
    fig.safety = {"invariant_violations": 0}
    return fig


def test_2pc_model_holds_its_invariants() -> None:
    """CI: ≥ 10,000 steps in total, no invariant violated."""
    STEPS.clear()
    SEEN.clear()
    started = time.monotonic()
    run_model(TwoPCMachine, examples=300, steps=100)
    total = sum(STEPS.values())
    print(f"\n2PC model: {total} steps, by rule: {dict(STEPS)}; outcomes: {dict(SEEN)}")
    assert total >= 10_000, f"only {total} steps ran"
    assert SEEN["commit"] > 0 and SEEN["applies"] > 0, "the model never got a switch through"
    finish(model_figures("ci", 300, started), started)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_2pc_model_holds_its_invariants_long() -> None:
    STEPS.clear()
    SEEN.clear()
    started = time.monotonic()
    run_model(TwoPCMachine, examples=3_000, steps=100)
    assert sum(STEPS.values()) >= 100_000
    finish(model_figures("slow", 3_000, started), started)


class PublishBeforeDecide(TwoPCMachine):
    BUGS = Bugs(publish_before_decide=True)


class ApplyOnPrepare(TwoPCMachine):
    BUGS = Bugs(apply_on_prepare=True)


class BlindHeadWrites(TwoPCMachine):
    BUGS = Bugs(blind_head_writes=True)


class UnfencedPrepares(TwoPCMachine):
    BUGS = Bugs(unfenced_prepares=True)


@pytest.mark.parametrize(
    "machine",
    [PublishBeforeDecide, ApplyOnPrepare, BlindHeadWrites, UnfencedPrepares],
    ids=lambda m: m.__name__,
)
def test_the_model_catches_a_deliberate_bug(machine: type[TwoPCMachine]) -> None:
    """A check that cannot fail is not a check: each bug must break an invariant."""
    started = time.monotonic()
    with pytest.raises(Violation) as caught:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=400,
                stateful_step_count=60,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                phases=[Phase.generate],
            ),
        )
    message = str(caught.value).splitlines()[0]
    print(f"\n{machine.__name__}: {message}")
    fig = model_figures("bug", 0, started, bug=machine.__name__)
    fig.safety = {"invariant_violations": 1}
    fig.notes = {"violation": message[:120]}
    finish(fig, started)
