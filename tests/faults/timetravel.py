"""Time travel under faults: ``status --at`` against what was on every agent's disk.

A randomized workload runs against the whole confbus as real processes — nats-server,
version-store, coordinator, distributor, health-watcher, rollbacker, historian — and real agents
writing real files: publishes (some waited for, some superseded by the next), versions one node
refuses (aborted switches, failed rollouts), agents SIGKILLed and restarted later (catch-ups),
rollbacks asked by an operator and by Alertmanager alerts. Meanwhile a sampler records, again
and again, every agent's disk and the stream's sequence. Afterwards, for every sample,
``status --at <seq>`` (the reader, with the historian's checkpoints) must give every node the
version and sha256 its disk held, and ``status --at <time>`` the same.

**The moment of a sample** is a stream sequence S: read the stream's last sequence, read every
agent's disk, note the time, read the last sequence again. If events were stored in between,
the sample is kept only when none was a ``node.applied`` of the namespace (then nothing the
disks could show changed in the stream) and its time is not used. An apply is on disk before its
event is stored, so a node's disk is compared only when the agent's own state record says the
apply it holds was announced: the live file's sha256 is the record's applied sha256, and the
record says ``announced`` (written only after ``node.applied`` was acknowledged, so that event's
sequence is below S). A sample in which some node is in between — renamed but not yet recorded,
or installed but not announced (killed in between, until its restart announces it) — is not
taken; the sampler tries again. That judgement uses only the agents' disks, never the stream, so
the comparison is exact rather than racy, and a reader bug cannot hide in it.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from confbus.agent.record import _parse as parse_slot  # read-only: no fsync, no write
from confbus.agent.state import decode_state
from confbus.client import Client
from confbus.client import _reconstruct as timeline
from confbus.client._fleet import fleet_at
from confbus.runtime.errors import ConfbusError
from confbus.runtime.http import http_post
from confbus.schemas import fold as fold_module
from confbus.schemas import subjects
from confbus.schemas.events import TxnCommitted
from confbus.schemas.fleet import AppliedFact, FleetState
from confbus.schemas.policy import Policy, RollbackPolicy
from confbus.schemas.streams import CFG_EVENTS
from tests.cli.procs import arun_confbus
from tests.distributor.e2e import rollout_stack
from tests.e2e.stack import Agent, Stack
from tests.faults.results import Figures, finish

NS = "web"
Disk = tuple[int, str] | None  # (version, sha256) the node's live file holds; None: no file


@dataclass(frozen=True)
class Sample:
    seq: int
    wall: datetime | None  # a time at which exactly the events up to seq were stored
    disk: dict[str, Disk]


@dataclass
class Run:
    stack: Stack
    rng: random.Random
    samples: list[Sample] = field(default_factory=list)
    ops: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)  # samples not taken, and why
    down: set[str] = field(default_factory=set)
    done: bool = False

    def done_once(self, op: str) -> bool:
        """Whether ``op`` has gone through at least once (not refused, not timed out)."""
        return self.ops[op] > self.ops[f"{op} refused or timed out"]


def node_disk(agent: Agent) -> tuple[Disk, bool]:
    """What the node's live file holds, and whether its state record says that apply was
    announced (settled) — read without writing anything."""
    live = agent.files[NS]
    data = live.read_bytes() if live.exists() else None
    live_sha = hashlib.sha256(data).hexdigest() if data is not None else None
    state_dir = live.parent.parent / "state" / NS
    best: tuple[int, bytes] | None = None
    for slot in ("state.a", "state.b"):
        path = state_dir / slot
        got = parse_slot(path.read_bytes() if path.exists() else None)
        if got is not None and (best is None or got[0] > best[0]):
            best = got
    st = decode_state(best[1]) if best is not None else None
    applied = st.applied if st is not None else None
    if applied is None:
        return None, live_sha is None
    settled = applied.sha256 == live_sha and applied.announced and st is not None
    settled = settled and st.installing is None  # type: ignore[union-attr]
    return (applied.version, applied.sha256), settled


async def last_seq(client: Client) -> int:
    return (await client.bus.js.stream_info(CFG_EVENTS.name)).state.last_seq


async def applied_between(client: Client, lo: int, hi: int) -> bool:
    for seq in range(lo + 1, hi + 1):
        msg = await client.bus.js.get_msg(CFG_EVENTS.name, seq)
        if (msg.subject or "").startswith(subjects.event(NS, "node.applied") + "."):
            return True
    return False


async def take_sample(run: Run, client: Client) -> Sample | None:
    before = await last_seq(client)
    disks: dict[str, Disk] = {}
    for name, agent in run.stack.agents.items():
        disk, settled = node_disk(agent)
        if not settled:
            run.retries["in flight"] += 1
            return None
        disks[name] = disk
    wall = datetime.now(UTC)
    after = await last_seq(client)
    if after != before:
        if await applied_between(client, before, after):
            run.retries["applied during the read"] += 1
            return None
        wall = None  # type: ignore[assignment]
    return Sample(after, wall, disks)


async def sampler(run: Run, client: Client) -> None:
    while not run.done:
        sample = await take_sample(run, client)
        if sample is not None and (not run.samples or run.samples[-1].seq != sample.seq):
            run.samples.append(sample)
        # Pacing between samples, not synchronisation: any moment will do.
        await anyio.sleep(run.rng.uniform(0.005, 0.03))


# -- the workload ------------------------------------------------------------------------------


def content(i: int, extra: str = "") -> bytes:
    return json.dumps({"release": i, "pool": 8 + i % 9, "note": extra}).encode() + b"\n"


def alert_webhook(i: int) -> bytes:
    alert = {
        "status": "firing",
        "labels": {"alertname": "HighErrorRate", "confbus_namespace": NS},
        "annotations": {"summary": f"5xx above 20% ({i})"},
        "startsAt": f"2026-11-26T16:{i // 60 % 60:02d}:{i % 60:02d}Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"fp{i:06d}",
    }
    return json.dumps({"version": "4", "status": "firing", "alerts": [alert]}).encode()


async def restart_later(run: Run, node: str, delay: float) -> None:
    await anyio.sleep(delay)  # how long the node stays down: part of the workload
    await anyio.to_thread.run_sync(run.stack.agents[node].proc.start)
    run.down.discard(node)
    run.ops["restart"] += 1


async def operate(run: Run, client: Client, tg: anyio.abc.TaskGroup, i: int) -> None:
    rng, stack = run.rng, run.stack
    op = rng.choices(
        ["publish", "publish_wait", "refused", "kill", "rollback", "alert"],
        weights=[4, 3, 1, 1.5, 0.7, 0.7],
    )[0]
    run.ops[op] += 1
    try:
        if op in ("publish", "publish_wait", "refused"):
            victim = rng.choice(sorted(stack.agents))
            body = content(i, f"reject-{victim}" if op == "refused" else "")
            strategy = rng.choice(["all-at-once", "linear:34%", "canary:1"])
            info = await client.publish(NS, body, change_id=f"c{i}", strategy=strategy)
            if op == "publish_wait":
                rollout = await client.wait_rollout(NS, info.version, timeout=30)
                if rollout.state == "completed" and rng.random() < 0.6:
                    await client.mark_good(NS, info.version, actor="test", reason="checked")
        elif op == "kill":
            alive = [n for n in sorted(stack.agents) if n not in run.down]
            if len(run.down) < 2 and alive:
                node = rng.choice(alive)
                stack.agents[node].proc.kill()
                run.down.add(node)
                tg.start_soon(restart_later, run, node, rng.uniform(0.3, 3.0))
        elif op == "rollback":
            await client.rollback(NS, reason="time travel workload")
        else:
            ready = stack.services["health_watcher"].ready or {}
            await http_post("127.0.0.1", int(ready["alertmanager_port"]), "/alertmanager",
                            alert_webhook(i))  # fmt: skip
    except (ConfbusError, TimeoutError) as exc:
        run.ops[f"{op} refused or timed out"] += 1
        del exc


async def workload(
    run: Run,
    client: Client,
    seconds: float,
    until_samples: int = 0,
    until_ops: tuple[str, ...] = (),
) -> None:
    """Operations for ``seconds``, and on (within twice that) until the sampler has
    ``until_samples`` samples and each operation in ``until_ops`` has been done."""
    await client.set_policy(
        Policy(
            namespace=NS, bake_s=0.3, vote_timeout_s=2.0,
            rollback=RollbackPolicy(cooldown_s=0.0, max_per_window=10_000, cap_window_s=1.0,
                                    strategy="batches:2", batch_delay_s=0.1),
        ),
        actor="test",
    )  # fmt: skip
    start = time.monotonic()

    def going() -> bool:
        elapsed = time.monotonic() - start
        short = len(run.samples) < until_samples or not all(map(run.done_once, until_ops))
        return elapsed < seconds or (short and elapsed < 2 * seconds)

    async with anyio.create_task_group() as tg:
        i = 0
        while going():
            i += 1
            with anyio.move_on_after(40):
                await operate(run, client, tg, i)
            # Think time between operations: the workload's pace, not synchronisation.
            await anyio.sleep(run.rng.uniform(0.05, 0.6))
    for node in list(run.down):  # every restart has run: nobody is left down
        assert run.stack.agents[node].proc.alive()


async def settle(run: Run, client: Client, timeout: float = 60.0) -> bool:
    """Let the fleet converge (samples go on meanwhile): every node on production."""
    with anyio.move_on_after(timeout):
        while True:
            try:
                prod = (await client.get(NS, "production", content=False)).info
                rollout = await client.rollout_info(NS)
            except ConfbusError:
                prod, rollout = None, None
            disks = [node_disk(a) for a in run.stack.agents.values()]
            quiet = rollout is None or not rollout.active
            if (
                prod is not None
                and quiet
                and all(s and d is not None and d[0] >= prod.version for d, s in disks)
            ):
                return True
            await anyio.sleep(0.2)  # polling the disks until they converge, with a deadline
    return False


# -- the check -----------------------------------------------------------------------------------


def applied_on(view_nodes: list[Any]) -> dict[str, Disk]:
    return {n.node: (n.version, n.sha256) if n.applied == "known" else None for n in view_nodes}


async def check(run: Run, client: Client, fig: Figures) -> None:
    mismatches: list[str] = []
    time_mismatches = timed = from_checkpoint = 0
    for k, s in enumerate(run.samples):
        view = await client.status_at(NS, s.seq)
        from_checkpoint += view.checkpoint_seq > 0
        got = applied_on(view.nodes)
        for node, disk in s.disk.items():
            if got.get(node) != disk:
                mismatches.append(f"seq {s.seq} {node}: disk {disk}, status --at {got.get(node)}")
        if s.wall is not None and k % 4 == 0:
            timed += 1
            by_time = await client.status_at(NS, s.wall)
            if by_time.seq != s.seq or applied_on(by_time.nodes) != got:
                time_mismatches += 1
    for s in run.samples[:: max(1, len(run.samples) // 3)][:3]:  # and through the CLI itself
        done = await arun_confbus(
            "--nats-url", run.stack.url, "status", NS, "--at", str(s.seq), "--json"
        )
        nodes = json.loads(done.stdout)["nodes"] if done.returncode == 0 else []
        got = {n["node"]: (n["version"], n["sha256"]) if n["version"] else None for n in nodes}
        if done.returncode != 0 or any(got.get(k) != v for k, v in s.disk.items()):
            mismatches.append(f"seq {s.seq} through the CLI: {done.stderr or got}")
    fig.divergent = len(mismatches)
    fig.safety = {"time_mismatches": time_mismatches}
    fig.notes.update(
        samples=len(run.samples),
        node_states_compared=sum(len(s.disk) for s in run.samples),
        samples_by_time=timed,
        from_checkpoint=from_checkpoint,
        first_mismatches="; ".join(mismatches[:3]),
    )


def applied_on_commit(state: FleetState, seq: int, at: datetime | None, ev: Any) -> None:
    """A deliberate bug: a committed transaction taken for its participants' applies."""
    original_decided(state, seq, at, ev)
    created = state.versions.get(ev.version)
    for name in ev.participants:
        sha = created.sha256 if created and created.sha256 else ""
        state.nodes[name].applied = AppliedFact(version=ev.version, sha256=sha, seq=seq)


original_decided: Callable[..., None] = fold_module._HANDLERS[TxnCommitted]


async def check_with_bug(run: Run, client: Client, fig: Figures) -> None:
    """The same samples through a fold with a deliberate bug: the check must see it."""
    edges = await timeline.bounds(client)
    fold_module._HANDLERS[TxnCommitted] = applied_on_commit
    try:
        wrong = 0
        for s in run.samples:
            rec = await timeline.reconstruct(client, NS, s.seq, edges, checkpoints=False)
            got = applied_on(fleet_at(rec.state, at=None).nodes)
            wrong += sum(got.get(node) != disk for node, disk in s.disk.items())
    finally:
        fold_module._HANDLERS[TxnCommitted] = original_decided
    fig.divergent = wrong
    fig.notes.update(samples=len(run.samples))


async def event_counts(client: Client) -> dict[str, int]:
    counts: Counter[str] = Counter()
    async for item in client.events(subjects.events_of(NS)):
        ev = item.event
        if ev is None:
            continue
        kind = ev.__struct_config__.tag
        counts[str(kind)] += 1
    return {
        "events": sum(counts.values()),
        "versions": counts["version.created"],
        "committed": counts["txn.committed"],
        "aborted": counts["txn.aborted"],
        "catch_ups": counts["node.catchup"],
        "superseded": counts["rollout.superseded"],
        "failed_rollouts": counts["rollout.failed"],
        "rollbacks": counts["rollback.started"],
    }


# -- the scenario ------------------------------------------------------------------------------


def start(root: Path, nodes: int) -> Stack:
    names = [f"n{i}" for i in range(1, nodes + 1)]
    # Each node refuses a version that names it (the workload's refusals).
    refuse = {n: ("--validate", f"sh -c '! grep -q reject-{n} \"$CONFBUS_STAGED\"'") for n in names}
    services = ("version_store", "coordinator", "health_watcher", "rollbacker")
    historian = ("historian", "--every", "40", "--idle", "0.5")
    return rollout_stack(root, names, services=services, agent_args=refuse, last=[historian])


async def scenario(
    root: Path,
    *,
    seconds: float,
    nodes: int = 6,
    seed: int | None = None,
    tier: str = "ci",
    budget_s: float | None = None,
    with_bug: bool = True,
    until_samples: int = 0,
    until_ops: tuple[str, ...] = (),
) -> tuple[Figures, Figures | None]:
    started = time.monotonic()
    seed = seed if seed is not None else random.randrange(1 << 30)
    print(f"time travel scenario: seed={seed}")
    stack = start(root, nodes)
    run = Run(stack, random.Random(seed))
    try:
        async with Client(stack.url, name="timetravel-test") as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sampler, run, client)
                await workload(run, client, seconds, until_samples, until_ops)
                converged = await settle(run, client)
                run.done = True
            fig = Figures(
                scenario="timetravel",
                title="status --at vs every agent's disk (publishes, refusals, kills, "
                "supersedes, rollbacks)",
                tier=tier,  # type: ignore[arg-type]
                runs=1,
                ok=sum(v for k, v in run.ops.items() if "refused" not in k),
                failed=sum(v for k, v in run.ops.items() if "refused" in k),
                budget_s=budget_s,
            )
            fig.notes.update(await event_counts(client))
            fig.notes.update(seed=seed, converged=str(converged), agent_kills=run.ops["kill"])
            for why, count in run.retries.items():
                fig.notes[f"not_taken_{why.replace(' ', '_')}"] = count
            await check(run, client, fig)
            bug = None
            if with_bug:
                bug = Figures(
                    scenario="timetravel", title=fig.title, tier="bug",
                    bug="applied_on_commit", runs=1,
                )  # fmt: skip
                await check_with_bug(run, client, bug)
    finally:
        stack.stop()
    finish(fig, started)
    if bug is not None:
        finish(bug, started)
    return fig, bug
