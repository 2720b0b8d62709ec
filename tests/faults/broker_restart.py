"""The broker dies under ``confbus up`` and comes back: how soon is the fleet switching again?

``confbus up`` (single server, or ``--ha``) with agents as real processes writing real files.
A scenario SIGKILLs a nats-server — the embedded one, which ``up`` restarts on the same port and
store, or in ``--ha`` the node most agents are connected to — and runs ``confbus publish --wait``
as CI would. What it measures is *kill → applied*: from the kill to the last agent's
``node.applied`` event of the new version (stream time, the machine's wall clock).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import nats.errors
from nats.js.api import StreamInfo

from confbus.client import Client
from confbus.schemas.events import NodeApplied, RolloutCompleted, RolloutWave, VersionCreated
from confbus.schemas.streams import CFG_CHANGES, CFG_TXN
from tests.cli.procs import arun_confbus
from tests.faults.results import Figures, finish
from tests.ha.hastack import HaStack, start_up

NS = "web"


def content(label: str) -> bytes:
    return json.dumps({"release": label}).encode()


def start_agents(stack: HaStack, root: Path, n: int) -> list[str]:
    nodes = [f"n{i}" for i in range(1, n + 1)]
    for node in nodes:
        stack.start_agent(node, NS, root)
    return nodes


async def publish(stack: HaStack, root: Path, label: str, *, timeout: float = 90.0) -> str:
    """``confbus publish web FILE --wait``; returns its stdout, asserting exit 0."""
    path = root / f"{label}.json"
    path.write_bytes(content(label))
    done = await arun_confbus(
        "--nats-url", stack.url, "publish", NS, str(path), "--wait", "--timeout", str(timeout),
        timeout=timeout + 30,
    )  # fmt: skip
    assert done.returncode == 0, f"publish {label}: exit {done.returncode}\n{done.stderr}"
    return done.stdout


def on_every_node(stack: HaStack, nodes: Sequence[str], label: str) -> None:
    want = content(label)
    wrong = {n: stack.agents[n].read() for n in nodes if stack.agents[n].read() != want}
    assert not wrong, f"not on {label}: {wrong}"


async def applied_at(url: str, version: int, nodes: Sequence[str], since: datetime) -> datetime:
    """When the last of ``nodes`` announced ``version`` applied (the stream's time)."""
    seen: dict[str, datetime] = {}
    async with Client(url, name="test-applied") as client:
        async for item in client.events(f"cfg.event.{NS}.node.applied.>", since=since):
            ev = item.event
            if isinstance(ev, NodeApplied) and ev.version == version and item.time is not None:
                seen.setdefault(ev.node, item.time)
    missing = set(nodes) - set(seen)
    assert not missing, f"no node.applied for v{version} from {sorted(missing)}"
    return max(seen.values())


def version_of(stdout: str) -> int:
    """``web v7 sha256=… production on 3 node(s) …`` → 7."""
    first = stdout.split()
    assert len(first) > 1 and first[0] == NS and first[1].startswith("v"), stdout
    return int(first[1][1:])


# -- the faults --------------------------------------------------------------------------------


def kill_embedded(stack: HaStack) -> None:
    """SIGKILL the nats-server ``confbus up`` runs (it restarts it)."""
    os.kill(int(stack.state()["nats_pid"]), signal.SIGKILL)


def busiest_node(stack: HaStack, nodes: Sequence[str]) -> str:
    """The nats-server (``nats-1``..``nats-3``) that most of the agents are connected to."""
    counts: dict[str, int] = {}
    for i, monitor in enumerate(stack.state()["cluster"]["monitor"], start=1):
        with urllib.request.urlopen(f"{monitor}/connz?limit=1024", timeout=5) as r:
            conns = json.loads(r.read())["connections"]
        names = {c.get("name", "") for c in conns}
        counts[f"nats-{i}"] = sum(1 for n in nodes if f"confbus-agent-{n}" in names)
    return max(sorted(counts), key=lambda k: counts[k])


# The streams a publish goes through, on its way to every node.
PATH_STREAMS = ("CFG_CHANGES", "CFG_EVENTS", "CFG_TXN", "KV_CFG_STATE", "KV_CFG_TXN_HEAD")


def _meta_leader(monitor: str) -> str:
    with urllib.request.urlopen(f"{monitor}/jsz", timeout=5) as r:
        return str(json.loads(r.read()).get("meta_cluster", {}).get("leader", ""))


async def led_by(stack: HaStack, node: str) -> list[str]:
    """The raft groups on a publish's path that the cluster node ``node`` leads: JetStream's
    meta group (which every consumer creation needs), the streams, the services' durable
    consumers. Losing a leader costs an election that
    nats-server begins only 4-9 s later (``minElectionTimeoutDefault``..``max…`` in its
    server/raft.go) — out of confbus's reach."""
    monitor = stack.state()["cluster"]["monitor"][int(node.rsplit("-", 1)[1]) - 1]
    led = ["meta"] if await anyio.to_thread.run_sync(_meta_leader, monitor) == node else []
    async with Client(stack.url, name="test-leaders") as client:
        js = client.bus.js
        for stream in PATH_STREAMS:
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader == node:
                led.append(stream)
            for consumer in await js.consumers_info(stream):
                durable = consumer.config.durable_name  # a service's, replicated
                if durable and consumer.cluster is not None and consumer.cluster.leader == node:
                    led.append(f"{stream}/{durable}")
    return led


async def kill_then_publish(
    stack: HaStack,
    root: Path,
    nodes: Sequence[str],
    label: str,
    kill: str | None = None,
    after_s: float = 1.0,
) -> float:
    """Kill the broker (the embedded one, or the cluster node named by ``kill``), publish
    ``label`` with ``--wait`` ``after_s`` later; return kill → applied on every node."""
    kill_wall = datetime.now(UTC)
    kill_at = time.monotonic()
    if kill is None:
        kill_embedded(stack)
    else:
        os.kill(stack.pid(kill), signal.SIGKILL)
    # The scenario's schedule (a CI step that starts a second later), not a synchronisation.
    await anyio.sleep(max(0.0, kill_at + after_s - time.monotonic()))
    out = await publish(stack, root, label)
    on_every_node(stack, nodes, label)
    done = await applied_at(stack.url, version_of(out), nodes, kill_wall - timedelta(seconds=5))
    return (done - kill_wall).total_seconds()


# -- the loop: many kills while CI keeps publishing ---------------------------------------------


@dataclass
class Publish:
    label: str
    started: float  # wall clock (time.time())
    ended: float = 0.0
    code: int | None = None
    stdout: str = ""
    stderr: str = ""

    @property
    def superseded(self) -> bool:
        return self.code == 1 and " superseded" in self.stderr


@dataclass
class Starts:
    """Tells the kill loop when the next publish starts."""

    next: anyio.Event | None = None

    async def wait(self) -> None:
        self.next = anyio.Event()
        await self.next.wait()

    def starting(self) -> None:
        if self.next is not None:
            self.next.set()
            self.next = None


async def _publisher(
    stack: HaStack,
    root: Path,
    name: str,
    out: list[Publish],
    stop: anyio.Event,
    starts: Starts,
) -> None:
    """CI publishing again and again: ``confbus publish --id <name>-<i> --wait``."""
    i = 0
    while not stop.is_set():
        i += 1
        label = f"{name}-{i}"
        path = root / f"{label}.json"
        path.write_bytes(content(label))
        p = Publish(label, time.time())
        out.append(p)
        starts.starting()
        done = await arun_confbus(
            "--nats-url", stack.url, "publish", NS, str(path), "--id", label, "--wait",
            "--timeout", "120", timeout=180,
        )  # fmt: skip
        p.ended, p.code, p.stdout, p.stderr = time.time(), done.returncode, done.stdout, done.stderr


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if s else 0.0


@dataclass(frozen=True)
class Loop:
    """One shape of the kill loop: what is killed, by how many CI jobs publishing at once."""

    scenario: str
    title: str
    ha: bool = False
    jobs: tuple[str, ...] = ("ci-a", "ci-b")
    # Kill as a publish starts (the CI step that lands in the election), not at any moment.
    at_publish: bool = False


EMBEDDED = Loop(
    "broker_restart",
    "Embedded nats-server SIGKILLed under confbus up while CI publishes (3 agents)",
)
# One CI job: nothing supersedes its versions, so every publish must exit 0.
EMBEDDED_ONE_JOB = Loop(
    "broker_restart_one_job",
    "Embedded nats-server SIGKILLed under confbus up, one CI job publish --wait-ing (3 agents)",
    jobs=("ci",),
    at_publish=True,
)
HA_LEADER = Loop(
    "broker_restart_ha_leader",
    "up --ha: the nats-server leading CFG_CHANGES and CFG_TXN SIGKILLed, one CI job "
    "publish --wait-ing (3 agents)",
    ha=True,
    jobs=("ci",),
    at_publish=True,
)

# What a restarted cluster node needs to be back in every raft group on a publish's path.
SETTLE_S = 90.0


async def kill_loop(
    root: Path, *, kills: int, tier: str, seed: int = 25, loop: Loop = EMBEDDED
) -> Figures:
    """``kills`` SIGKILLs of a nats-server under ``confbus up`` (3 agents) — the embedded one,
    or in ``--ha`` the node leading ``CFG_CHANGES`` and ``CFG_TXN`` — each at a random moment
    while CI jobs keep publishing with ``--wait``; ``up`` restarts it each time. Then the
    checks: every publish exited 0 or was superseded by a newer version, every acknowledged
    version is stored with its bytes and once, every agent holds the newest."""
    rng = random.Random(seed)
    print(f"\nseed {seed}")
    started = time.monotonic()
    fig = Figures(scenario=loop.scenario, title=loop.title, tier=tier)  # type: ignore[arg-type]
    stack = start_up(root / "data", *(["--ha"] if loop.ha else []))
    publishes: list[Publish] = []
    kill_times: list[float] = []
    victims: list[str] = []
    try:
        nodes = start_agents(stack, root, 3)
        await publish(stack, root, "first")
        stop = anyio.Event()
        starts = Starts()
        async with anyio.create_task_group() as tg:
            for name in loop.jobs:
                tg.start_soon(_publisher, stack, root, name, publishes, stop, starts)
            for _ in range(kills):
                # The fault schedule (a random moment of the publishing), not a synchronisation.
                await anyio.sleep(rng.uniform(0.5, 3.0))
                if loop.at_publish:
                    with anyio.fail_after(300):
                        await starts.wait()
                if loop.ha:
                    victim = await _lead_both(stack)
                    victims.append(victim)
                else:
                    victim = "nats-server"
                lines = len(stack.proc.err.lines)
                kill_times.append(time.time())
                if loop.ha:
                    os.kill(stack.pid(victim), signal.SIGKILL)
                else:
                    kill_embedded(stack)
                await anyio.to_thread.run_sync(
                    stack.proc.err.wait_for, f"{victim} ready again", 60.0, lines
                )
                if loop.ha:
                    await _settled(stack)
            stop.set()  # the publishes under way finish
        await _check(fig, stack, nodes, publishes, kill_times)
    finally:
        stack.cleanup()
    fig.runs = kills
    fig.notes["kills"] = kills
    if victims:
        fig.notes["victims"] = ",".join(victims)
    fig.notes["seed"] = seed
    return finish(fig, started)


async def _lead_both(stack: HaStack) -> str:
    """The cluster node leading ``CFG_CHANGES``, made to lead ``CFG_TXN`` too (a stepdown of
    ``CFG_TXN`` naming it preferred) so that one kill takes both leaders."""
    async with Client(stack.url, name="test-leaders") as client:
        js, nc = client.bus.js, client.bus.nc
        with anyio.fail_after(SETTLE_S):
            while True:
                changes = await js.stream_info(CFG_CHANGES.name)
                txn = await js.stream_info(CFG_TXN.name)
                assert changes.cluster is not None and txn.cluster is not None
                want, have = changes.cluster.leader, txn.cluster.leader
                if want and want == have:
                    return str(want)
                if want and have:
                    placement = json.dumps({"placement": {"preferred": want}}).encode()
                    with contextlib.suppress(nats.errors.Error):
                        await nc.request(
                            f"$JS.API.STREAM.LEADER.STEPDOWN.{CFG_TXN.name}", placement, timeout=5
                        )
                await anyio.sleep(0.5)  # poll the leaders while the election runs


async def _settled(stack: HaStack) -> None:
    """Until every stream on a publish's path has a leader and all its replicas current: the
    restarted node has caught up, and the next kill does not cost a quorum."""
    async with Client(stack.url, name="test-settled") as client:
        js = client.bus.js
        with anyio.fail_after(SETTLE_S):
            while True:
                try:
                    infos = [await js.stream_info(s) for s in PATH_STREAMS]
                except nats.errors.Error:
                    infos = []
                if infos and all(_current(i) for i in infos):
                    return
                await anyio.sleep(0.5)  # poll the cluster's view while it catches up


def _current(info: StreamInfo) -> bool:
    c = info.cluster
    if c is None or not c.leader:
        return False
    replicas = c.replicas or []
    return len(replicas) == 2 and all(r.current and not r.offline for r in replicas)


async def _check(
    fig: Figures,
    stack: HaStack,
    nodes: Sequence[str],
    publishes: Sequence[Publish],
    kill_times: Sequence[float],
) -> None:
    ok = [p for p in publishes if p.code == 0]
    superseded = [p for p in publishes if p.superseded]
    failed = [p for p in publishes if p.code != 0 and not p.superseded]
    for p in failed:
        print(f"FAILED {p.label}: exit {p.code}\n{p.stderr[-2000:]}")
    fig.ok, fig.failed = len(ok), len(failed)
    async with Client(stack.url, name="test-check") as client:
        history = await client.history(NS, limit=10_000)
        by_change: dict[str, list[int]] = {}
        for v in history:
            by_change.setdefault(v.change_id, []).append(v.version)
        fig.duplicates = sum(len(vs) - 1 for vs in by_change.values())
        # Acknowledged (it printed its version): stored, with these bytes.
        lost = 0
        for p in ok:
            version = version_of(p.stdout)
            got = await client.get(NS, version)
            if got.content != content(p.label) or got.info.change_id != p.label:
                lost += 1
        fig.lost = lost
        newest = max(history, key=lambda v: v.version)
        want = content(newest.change_id)
        fig.divergent = sum(1 for n in nodes if stack.agents[n].read() != want)
        # Superseded only by a newer version.
        fig.safety["superseded_by_nothing_newer"] = sum(
            1 for p in superseded if by_change.get(p.label, [newest.version])[0] >= newest.version
        )
        completed, retried = await _rollout_events(client, kill_times[0] - 5 if kill_times else 0)
    durations = [p.ended - p.started for p in publishes if p.code is not None]
    fig.notes["publishes"] = len(publishes)
    fig.notes["superseded"] = len(superseded)
    fig.notes["publish_median_s"] = round(_median(durations), 2)
    fig.notes["publish_max_s"] = round(max(durations, default=0.0), 2)
    # Per kill: until a version published after it was on every node.
    gaps = []
    for k in kill_times:
        after = [t for created, t in completed if created > k]
        if after:
            gaps.append(min(after) - k)
    if gaps:
        fig.notes["kill_to_applied_median_s"] = round(_median(gaps), 2)
        fig.notes["kill_to_applied_max_s"] = round(max(gaps), 2)
    fig.notes["waves_retried_unanswered"] = retried


async def _rollout_events(client: Client, since: float) -> tuple[list[tuple[float, float]], int]:
    """(version created, rollout completed) wall times per completed rollout; the number of
    wave attempts no node ready to vote answered (retried)."""
    created: dict[int, float] = {}
    completed: list[tuple[float, float]] = []
    retried = 0
    start = datetime.fromtimestamp(since, UTC)
    async for item in client.events(f"cfg.event.{NS}.>", since=start):
        ev, at = item.event, item.time
        if ev is None or at is None:
            continue
        if isinstance(ev, VersionCreated):
            created[ev.version] = at.timestamp()
        elif isinstance(ev, RolloutCompleted) and ev.version in created:
            completed.append((created[ev.version], at.timestamp()))
        elif isinstance(ev, RolloutWave) and ev.outcome == "retrying" and "ready" in ev.reason:
            retried += 1
    return completed, retried
