"""The HA shape under faults: ``confbus up --ha``, three agents, and a publish stream
going through the real version-store (on etcd), distributor and coordinator replicas.

One at a time, with full redundancy restored in between, kill -9: the nats-server leading
``CFG_CHANGES``, the etcd leader (``CONFBUS_HA_KILL_ROUNDS``, 20 by default, rounds of
everything in the slow test), the coordinator replica leading the namespace, the distributor
replica driving it, the health-watcher replica judging it (the agents' health samples flow
all along, so one holds ``lease.health.web``), and the rollbacker replica when one holds a
lease for it. After each fault the test waits until a change published *after* the fault is
applied by every agent, that the last change acked *before* it was applied (or superseded by a
newer one that was), and, for a lease role, until the lease is held in a new term.

At the end:

- **nothing lost** — every acked change is a stored version with its bytes' sha256, versions
  numbered in publish order; every agent ends on the last one, byte for byte;
- **fenced** — in ``CFG_TXN`` order no decision carries an epoch older than one already
  written; no agent applied a transaction that was not committed; no agent saw an epoch beyond
  the head's;
- **pauses** — the longest gap between publish acks, and between the agents' applies, around
  each fault, printed as a table;
- **fail-over figures** — per kill, the seconds from it to each step of the recovery
  (``tests/ha/failover.py``), written to the fault results (``ha_failover``, tier ``ci`` for
  the secure one-round run, ``slow`` for the rounds) for RELIABILITY.md.

The one-round test runs twice: on the open stack and on ``confbus up --ha --secure`` (TLS on
every client, route, monitoring and etcd port; CI, agents and the probe each logged in as their
own user), where the restarted servers must take each other back with their certificates and
route credentials.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio
import nats.errors
import pytest

from confbus.client import Client
from confbus.coordinator.head import Heads
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError, Permanent
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.events import NodeApplied
from confbus.schemas.state import LeaseRecord
from confbus.schemas.streams import CFG_CHANGES, CFG_TXN_HEAD
from confbus.schemas.txn import Decision, Prepare
from tests.agent.support import record_bytes
from tests.e2e.helpers import events, txn_records
from tests.faults.results import Figures, Tier, finish
from tests.ha.failover import (
    NATS,
    TARGETS,
    Fault,
    load_notes,
    logged_at,
    now_fault,
    samples,
    taken_back,
)
from tests.ha.hastack import (
    HaStack,
    etcd_leader,
    health_samples,
    lease_expiry,
    lease_holder,
    lease_record,
    needs_etcd,
    start_ha,
    stream_leader,
)
from tests.helpers import eventually

pytestmark = [pytest.mark.anyio, needs_etcd]

NS = "web"
NODES = ("n1", "n2", "n3")
PACE_S = 0.3  # between publishes: a CI job's rate, not a benchmark
PUBLISHES_PER_ROUND = 300  # the stream is bounded whatever happens (~100 in a round here)
RECOVERY_TIMEOUT_S = 90.0


@dataclass
class Ack:
    sent: float  # its first try
    at: float
    i: int
    version: int
    sha256: str


@dataclass
class Run:
    acks: list[Ack] = field(default_factory=list)
    applied: list[tuple[float, int]] = field(default_factory=list)  # (time, min i on all)
    retries: int = 0
    # Set as the next change is sent: the kills land while a publish is under way, so that
    # "changes sent before it stored" measures one every time (it was 0, vacuously).
    sending: anyio.Event = field(default_factory=anyio.Event)

    def started_send(self) -> None:
        sending, self.sending = self.sending, anyio.Event()
        sending.set()

    def last_applied(self) -> int:
        return self.applied[-1][1] if self.applied else -1

    def last_acked(self) -> int:
        return self.acks[-1].i if self.acks else -1


def content_of(i: int) -> bytes:
    return json.dumps({"i": i, "pool": 10 + i % 7}).encode()


def index_of(data: bytes | None) -> int:
    if not data:
        return -1
    try:
        return int(json.loads(data)["i"])
    except (ValueError, KeyError):
        return -1


async def publish_stream(
    client: Client, run: Run, stop: anyio.Event, as_user: str, most: int
) -> None:
    """Changes one after another (``most`` at most), as a CI job: with ``as_user`` (a secured
    stack) through the version-store's pinned ``propose`` as that user, as ``confbus publish``
    does then."""
    for i in range(most):
        if stop.is_set():
            return
        content = content_of(i)
        sent = time.monotonic()
        change = ChangeProposed(namespace=NS, change_id=f"c{i}", content=content)
        run.started_send()
        while True:
            try:
                if as_user:
                    info = await client.propose_as(as_user, change, timeout=60)
                else:
                    info = await client.publish(NS, content, change_id=f"c{i}", timeout=60)
                break
            except (ConfbusError, nats.errors.Error) as exc:
                # A CI job retries with the same change id: a no-op if it was stored. (While a
                # stream elects a leader, the publish may also fail with "no response", and
                # the store's status call with a 500 that wraps a JetStream 503.)
                if isinstance(exc, Permanent):
                    raise
                run.retries += 1
                await anyio.sleep(0.1)  # the retry interval of a CI job's loop
        run.acks.append(Ack(sent, time.monotonic(), i, info.version, info.sha256))
        with anyio.move_on_after(PACE_S):
            await stop.wait()


async def watch_agents(stack: HaStack, run: Run, stop: anyio.Event) -> None:
    while not stop.is_set():
        low = min(index_of(a.read()) for a in stack.agents.values())
        if low > run.last_applied():
            run.applied.append((time.monotonic(), low))
        with anyio.move_on_after(0.05):  # the sampling interval of the measurement
            await stop.wait()


def longest_gap(times: list[float], since: float, until: float) -> float:
    before = [t for t in times if t <= since]
    window = [*(before[-1:] or [since]), *(t for t in times if since < t <= until)]
    return max((b - a for a, b in itertools.pairwise(window)), default=until - since)


@dataclass(frozen=True)
class Target:
    name: str
    role: str  # its figures' key (failover.NATS, "etcd leader", a lease role)
    process: str  # the process killed: nats-2, etcd-e1, coordinator-1 ...
    restarted: str  # the stack's line once it serves again
    lease: str = ""  # the lease it held (lease.<lease>.web), for the timeline


async def inject(stack: HaStack, bus: Bus, run: Run, t: Target) -> Fault:
    mark = len(stack.proc.err.lines)
    old = await lease_record(bus, t.lease, NS) if t.lease else None
    expiry = await lease_expiry(bus, t.lease, old) if t.lease and old else None
    pid = stack.pid(t.process)
    await run.sending.wait()  # the next change is on its way: it is sent before the kill
    fault = now_fault(t.name, t.role, t.process, t.restarted, run.last_acked())
    os.kill(pid, signal.SIGKILL)
    if old is not None and old.holder == t.process:
        fault.old_lease = expiry

    async def recovered() -> bool:
        after = [a.i for a in run.acks if a.at > fault.killed_at]
        return bool(after) and run.last_applied() >= max(after[0], fault.acked_before)

    async with anyio.create_task_group() as tg:
        if t.role == NATS:
            tg.start_soon(watch_leader, bus, fault)
        await eventually(recovered, timeout=RECOVERY_TIMEOUT_S, every=0.05,
                         what=f"progress after killing {t.process} ({t.name})")  # fmt: skip
        fault.recovered_at = time.monotonic()
        tg.cancel_scope.cancel()
    if old is not None and old.holder == t.process:
        # A lease off the apply path (the health-watcher's) may be taken over after the
        # recovery: the timeline waits for the new term.
        epoch = old.epoch

        async def new_term() -> LeaseRecord | None:
            new = await lease_record(bus, t.lease, NS)
            return new if new is not None and new.epoch > epoch else None

        new = await eventually(new_term, timeout=RECOVERY_TIMEOUT_S,
                               what=f"{t.lease} held in a new term")  # fmt: skip
        fault.new_lease, fault.new_holder = new.acquired_at, new.holder
    # Full redundancy again before the next fault: the stack restarted what we killed (after
    # a backoff that doubles only for one that dies soon after its start: services/cli/stack.py).
    await anyio.to_thread.run_sync(stack.proc.err.wait_for, t.restarted, 60.0, mark)
    up_log = stack.data_dir / "logs" / "up.log"
    fault.restarted_wall = logged_at(up_log, t.restarted, fault.killed_wall)
    return fault


async def watch_leader(bus: Bus, fault: Fault) -> None:
    """When ``CFG_CHANGES`` names a leader other than the one killed (polled every 0.1 s)."""
    while True:
        with anyio.move_on_after(1.0):
            try:
                if await stream_leader(bus, CFG_CHANGES.name) != fault.target:
                    fault.leader_at = time.monotonic()
                    return
            except (nats.errors.Error, AssertionError):
                pass  # no leader yet, or no answer: ask again
        await anyio.sleep(0.1)


async def warm(run: Run, n: int = 3) -> None:
    """A few changes acked and applied since now: the stream is flowing."""
    start = run.last_acked()

    async def flowing() -> bool:
        return run.last_acked() >= start + n and run.last_applied() >= start + n

    await eventually(flowing, timeout=RECOVERY_TIMEOUT_S, what="the publish stream flowing")


# CI kills in the secure shape (what production runs, and what issue-level tests ask of it); the
# open shape's run is in the slow tier, beside the five-round run.
@pytest.fixture(params=["secure", pytest.param("open", marks=pytest.mark.slow)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HaStack]:
    secure = ["--secure", *(f"--agent={node}" for node in NODES)]
    s = start_ha(tmp_path / "data", *(secure if request.param == "secure" else []))
    try:
        for node in NODES:
            s.start_agent(node, NS, tmp_path / "nodes")
        yield s
    finally:
        s.cleanup()


FaultPlan = Callable[[HaStack, Bus], Awaitable[Target | None]]


async def nats_stream_leader(stack: HaStack, bus: Bus) -> Target | None:
    server = await stream_leader(bus, CFG_CHANGES.name)
    return Target("nats-server leading CFG_CHANGES", NATS, server, f"{server} ready again")


def etcd_member(leader: bool) -> FaultPlan:
    async def plan(stack: HaStack, bus: Bus) -> Target | None:
        member = await anyio.to_thread.run_sync(
            etcd_leader, stack.store_url, not leader, stack.etcd_tls
        )
        label = "etcd leader" if leader else "etcd follower"
        return Target(label, label, f"etcd-{member}", f"etcd {member} ready again")

    return plan


def lease_leader(role: str, label: str) -> FaultPlan:
    async def plan(stack: HaStack, bus: Bus) -> Target | None:
        held = await lease_holder(bus, role, NS)
        if held is None:
            return None  # this role leads nothing here now (or is not built yet)
        return Target(f"{label} leading {NS}", label, held[0], f"{held[0]} ready again", role)

    plan.label = label  # type: ignore[attr-defined]
    return plan


def plans(etcd_leader: bool) -> tuple[FaultPlan, ...]:
    return (
        nats_stream_leader,
        etcd_member(leader=etcd_leader),
        lease_leader("coordinator", "coordinator"),
        lease_leader("distributor", "distributor"),
        lease_leader("health", "health-watcher"),
        # It holds lease.rollbacker.web only while it drives a rollback, which this stream
        # never asks for (a rollback would fight the publish stream for the namespace): listed,
        # so the figures say it was not killed here. Its kill is timed mid-rollback by
        # tests/rollbacker/test_failover_timed.py (scenario rollbacker_failover).
        lease_leader("rollbacker", "rollbacker"),
    )


async def test_kill_one_of_each_with_a_publish_stream_going(
    stack: HaStack, request: pytest.FixtureRequest
) -> None:
    # The etcd *leader*: the harder case (it once stopped the version-store for good). The
    # secure shape's run (CI) records its fail-over figures.
    secure = request.node.callspec.params["stack"] == "secure"
    await kill_in_turn(stack, plans(etcd_leader=True), "ci" if secure else None)


# Kills of each leader in the slow tier: issue 23 asks for >= 20 per role. Each round is one of
# each (~40 s here); the run stops starting rounds after its budget.
ROUNDS = int(os.environ.get("CONFBUS_HA_KILL_ROUNDS", "20"))
ROUNDS_BUDGET_S = 30 * 60.0


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the budget, the last round, the checks
@pytest.mark.parametrize("stack", ["open"], indirect=True)
async def test_kill_each_leader_many_rounds(stack: HaStack) -> None:
    """The same faults ``CONFBUS_HA_KILL_ROUNDS`` rounds in a row on one stack (20 by default),
    killing the etcd *leader* each time (``-m slow``): the fail-over figures of RELIABILITY.md."""
    await kill_in_turn(stack, plans(etcd_leader=True), "slow", ROUNDS, ROUNDS_BUDGET_S)


async def kill_in_turn(
    stack: HaStack,
    round_of: tuple[FaultPlan, ...],
    tier: Tier | None,
    rounds: int = 1,
    budget_s: float = math.inf,
) -> None:
    """``rounds`` rounds of ``round_of`` (none started after ``budget_s``); the figures go to
    the results as tier ``tier`` (none when None)."""
    started = time.monotonic()
    run = Run()
    faults: list[Fault] = []
    skipped: list[str] = []
    stop = anyio.Event()
    done = 0
    bus = await stack.bus("service", name="test-probe")
    try:
        async with stack.client("ci", name="test-ci") as client, anyio.create_task_group() as tg:
            as_user = "ci" if stack.tls_ca else ""
            tg.start_soon(publish_stream, client, run, stop, as_user, PUBLISHES_PER_ROUND * rounds)
            tg.start_soon(watch_agents, stack, run, stop)
            tg.start_soon(health_samples, bus, NS, NODES, stop)
            try:
                await warm(run)
                while done < rounds and time.monotonic() - started < budget_s:
                    for plan in round_of:
                        target = await plan(stack, bus)
                        if target is None:
                            skipped.append(getattr(plan, "label", plan.__name__))
                            continue
                        faults.append(await inject(stack, bus, run, target))
                        await warm(run, 2)
                    done += 1
            finally:
                stop.set()
            last = run.acks[-1]
            await eventually(lambda: _all_hold(stack, last.i), timeout=RECOVERY_TIMEOUT_S,
                             what=f"every agent on change {last.i}")  # fmt: skip
            await check_nothing_lost(client, stack, run)
        prepares = await check_fenced(bus, stack)
    finally:
        await bus.close()
    report(run, faults, skipped)
    assert {f.target.split("-")[0] for f in faults} >= {"nats", "etcd", "coordinator"}
    if tier is not None:
        record(run, faults, skipped, prepares, tier, done, started)


def record(
    run: Run,
    faults: list[Fault],
    skipped: list[str],
    prepares: list[datetime],
    tier: Tier,
    rounds: int,
    started: float,
) -> None:
    """The fail-over figures, written once every check above passed (so the safety counts
    are 0)."""
    ack_times = [a.at for a in run.acks]
    fig = Figures(
        scenario="ha_failover",
        title="up --ha: SIGKILL of each leader under a CI publish stream (3 agents)",
        tier=tier,
        runs=len(faults),
        ok=len(run.acks),
        longest_unavailable_s=round(
            max((longest_gap(ack_times, f.killed_at, f.recovered_at) for f in faults), default=0),
            2,
        ),
        samples=samples(
            faults, [(a.sent, a.at) for a in run.acks], [t for t, _ in run.applied], prepares
        ),
        targets=TARGETS,
        notes={
            "rounds": rounds,
            "publish_retries": run.retries,
            **load_notes(faults),
            **taken_back(faults),
            **({"not_injected": ", ".join(sorted(set(skipped)))} if skipped else {}),
        },
    )
    finish(fig, started)


async def _all_hold(stack: HaStack, i: int) -> bool:
    return all(a.read() == content_of(i) for a in stack.agents.values())


async def check_nothing_lost(client: Client, stack: HaStack, run: Run) -> None:
    versions = [a.version for a in run.acks]
    assert versions == sorted(set(versions)), "acked changes are not distinct, ordered versions"
    for ack in run.acks:
        reply = await client.get(NS, ack.version)
        assert reply.content == content_of(ack.i), f"change c{ack.i}: v{ack.version} differs"
        assert reply.info.sha256 == hashlib.sha256(content_of(ack.i)).hexdigest()


async def check_fenced(bus: Bus, stack: HaStack) -> list[datetime]:
    """Checks the fencing; returns when each prepare was created (the fail-over timeline)."""
    highest = 0
    prepares: list[datetime] = []
    committed: dict[str, Decision] = {}
    for record in await txn_records(bus, NS):
        if isinstance(record, Decision):
            assert record.epoch >= highest, (
                f"decision {record.txid} at epoch {record.epoch} written after epoch {highest}"
            )
            if record.outcome == "commit":
                committed[record.txid] = record
        if isinstance(record, Prepare):
            prepares.append(record.created_at)
        highest = max(highest, record.epoch) if isinstance(record, Decision | Prepare) else highest
    applied = [e for e in await events(bus, NS) if isinstance(e, NodeApplied)]
    assert applied, "no node.applied events"
    not_committed = [e.txid for e in applied if e.txid and e.txid not in committed]
    assert not not_committed, f"applied transactions that were never committed: {not_committed}"
    head = (await Heads(await bus.kv(CFG_TXN_HEAD.name)).get(NS)).value
    assert head.epoch >= highest
    for agent in stack.agents.values():
        state = json.loads(record_bytes(agent.path.parents[1] / "state" / NS) or b"")
        assert state["highest_epoch"] <= head.epoch, (agent.node, state["highest_epoch"])
    return prepares


def report(run: Run, faults: list[Fault], skipped: list[str]) -> None:
    ack_times = [a.at for a in run.acks]
    apply_times = [t for t, _ in run.applied]
    lines = [
        "",
        f"{len(run.acks)} changes acked ({run.retries} publish retries), "
        f"{len(run.applied)} apply advances; longest pause around each fault:",
        f"{'fault':<36} {'killed':<16} {'publish pause':>14} {'apply pause':>12} {'recovered':>10}",
    ]
    for f in faults:
        ack_gap = longest_gap(ack_times, f.killed_at, f.recovered_at)
        apply_gap = longest_gap(apply_times, f.killed_at, f.recovered_at)
        lines.append(
            f"{f.name:<36} {f.target:<16} {ack_gap:>13.2f}s {apply_gap:>11.2f}s "
            f"{f.recovered_at - f.killed_at:>9.2f}s"
        )
    if skipped:
        lines.append(f"not injected (no lease held for {NS}): {', '.join(sorted(set(skipped)))}")
    print("\n".join(lines))
