"""Rollouts: how fast a returning node converges, and what a wave costs beyond its bake.

Real processes: nats-server, version-store (SQLite), coordinator, distributor, and one
``confbus agent`` per node (8; 4 in the smoke run), each following two namespaces:

- ``roll``: rolled out by the distributor (``linear:25%``: 4 waves, bake ``BAKE_S``);
- ``base``: its policy's selector matches no node, so the distributor refuses every rollout
  there and the benchmark switches it directly (``cfg.api.txn.switch``) — the raw atomic
  switch of the same nodes, measured in the same run.

Figures:

1. **returning node → converged**: a node is stopped, a version rolls out without it, the
   node is started again; from its first heartbeat (back on the bus) to its ``node.applied``
   of the target version (a one-node switch by the distributor). Baseline: a one-node atomic
   switch, request → ``node.applied``.
2. **wave time beyond its bake**: for each wave after the first, from the previous wave's
   commit to this wave's commit, minus the bake: the verdict request, the rollout record's
   compare-and-sets, the events, and the switch itself. Baseline: the atomic switch of a
   wave's worth of nodes (request → reply), and the figure's ``notes`` give the distributor's
   own part (median difference).

``python -m benchmarks.rollout [--smoke] [--out FILE]`` runs it alone and prints JSON; ``python
-m benchmarks rollout`` runs it with the others.
"""

from __future__ import annotations

import json
import sys
import time

import anyio
from nats.aio.msg import Msg

from benchmarks.fleets import AgentFleet, AgentSpec, wait_heartbeats
from benchmarks.processes import Context, open_bus, run_alone
from benchmarks.report import Figure, stats
from confbus.client import Client
from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.schemas import subjects
from confbus.schemas.api import txn as txn_api
from confbus.schemas.events import NodeApplied, RolloutBaked, RolloutWave, readable_event
from confbus.schemas.policy import Policy

BENCH = "rollout"
ROLL, BASE = "roll", "base"
HEARTBEAT_S = 0.5
BAKE_S = 0.5


def config(tag: str) -> bytes:
    return json.dumps({"release": tag, "pool": {"min": 4, "max": 64}}).encode() + b"\n"


class Applied:
    """``node.applied`` of a namespace as they come (core subscription), by (node, version)."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, int], float] = {}
        self.changed = anyio.Event()

    async def on_event(self, msg: Msg) -> None:
        now = time.perf_counter()
        if (ev := readable_event(msg.data)) is None:
            return
        if isinstance(ev, NodeApplied):
            self.at.setdefault((ev.node, ev.version), now)
            self.changed.set()

    async def wait(self, nodes: list[str], version: int, timeout: float = 30.0) -> float:
        with anyio.fail_after(timeout):
            while not all((n, version) in self.at for n in nodes):
                self.changed = anyio.Event()
                await self.changed.wait()
        return max(self.at[(n, version)] for n in nodes)


async def direct_switch(
    client: Client, applied: Applied, nodes: list[str], tag: str
) -> tuple[float, float]:
    """A version of ``base`` switched on ``nodes`` by the coordinator directly.
    Returns (request → reply, request → all applied) in seconds."""
    info = await client.publish(BASE, config(tag))
    started = time.perf_counter()
    reply = await call(
        client.bus,
        txn_api.SWITCH,
        txn_api.SwitchRequest(namespace=BASE, version=info.version, nodes=nodes, timeout_s=5.0),
    )
    replied = time.perf_counter()
    if reply.outcome != "commit":
        raise RuntimeError(f"baseline switch aborted: {reply.votes}")
    done = await applied.wait(nodes, info.version)
    return replied - started, done - started


async def first_heartbeat(bus: Bus, node: str, started: anyio.Event, out: list[float]) -> None:
    sub = await bus.nc.subscribe(subjects.heartbeat(node))
    started.set()
    try:
        await sub.next_msg(timeout=60)
        out.append(time.perf_counter())
    finally:
        await sub.unsubscribe()


async def wait_not_live(client: Client, node: str, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            st = await client.fleet_status(ROLL)
            if any(n.node == node and n.liveness != "live" for n in st.nodes):
                return
            await anyio.sleep(0.1)


async def run(ctx: Context) -> list[Figure]:
    n = 4 if ctx.smoke else 8
    rollouts = 1 if ctx.smoke else 4
    returns = 2 if ctx.smoke else 8
    nodes = [f"r{i:02d}" for i in range(n)]
    wave = n // 4
    nats = ctx.start_nats()
    bus = await open_bus(nats.url, "bench-rollout")
    try:
        applied = {ROLL: Applied(), BASE: Applied()}
        for ns, a in applied.items():
            await bus.nc.subscribe(subjects.events_of(ns), cb=a.on_event)
        db = ctx.path("store") / "store.db"
        ctx.service("version_store", nats.url, "--store", f"sqlite://{db}")
        ctx.service("coordinator", nats.url)
        ctx.service(
            "distributor",
            nats.url,
            "--heartbeat-interval",
            str(HEARTBEAT_S),
            "--lease-ttl",
            "2",
            "--catchup-base",
            "0.5",
            "--catchup-cap",
            "5",
        )
        fleet = AgentFleet(
            ctx,
            nats.url,
            ctx.path("fleet"),
            [AgentSpec(node, (ROLL, BASE)) for node in nodes],
            processes=n,
            heartbeat_interval=HEARTBEAT_S,
        ).start()
        await wait_heartbeats(bus, nodes)
        async with Client(nats.url, name="bench-rollout-client") as client:
            await client.set_policy(
                Policy(namespace=ROLL, bake_s=BAKE_S, max_excluded=0.5, vote_timeout_s=5.0)
            )
            await client.set_policy(Policy(namespace=BASE, selector={"bench": "never"}))
            first = await client.publish(ROLL, config("warm-up"))
            await client.wait_rollout(ROLL, first.version, timeout=60)

            # -- waves: rollout time per wave beyond the bake, beside the raw switch -----------
            beyond: list[float] = []
            bake_to_commit: list[float] = []
            wave_switch: list[float] = []
            for r in range(rollouts):
                v = await client.publish(ROLL, config(f"wave-{r}"), strategy="linear:25%")
                info = await client.wait_rollout(ROLL, v.version, timeout=120)
                if info.state != "completed":
                    raise RuntimeError(
                        f"rollout {info.rollout_id} ended {info.state}: {info.reason}"
                    )
                evs = [
                    e.event
                    async for e in client.events(f"cfg.event.{ROLL}.rollout.>")
                    if getattr(e.event, "rollout_id", None) == info.rollout_id
                ]
                commits = [e.at for e in evs if isinstance(e, RolloutWave)]
                bakes = [e.at for e in evs if isinstance(e, RolloutBaked)]
                for i in range(1, len(commits)):
                    beyond.append((commits[i] - commits[i - 1]).total_seconds() - BAKE_S)
                    bake_to_commit.append((commits[i] - bakes[i - 1]).total_seconds())
                for k in range(3):
                    reply_s, _ = await direct_switch(
                        client, applied[BASE], nodes[:wave], f"base-{r}-{k}"
                    )
                    wave_switch.append(reply_s)

            # -- a returning node ---------------------------------------------------------------
            converge: list[float] = []
            one_switch: list[float] = []
            from_start: list[float] = []
            back = nodes[-1]
            proc = fleet.procs[-1]
            for k in range(returns):
                proc.stop()
                await wait_not_live(client, back)
                v = await client.publish(ROLL, config(f"away-{k}"))
                info = await client.wait_rollout(ROLL, v.version, timeout=60)
                if info.state != "completed" or back in info.targets:
                    raise RuntimeError(f"rollout while {back} was away: {info.state}")
                heard: list[float] = []
                ready = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(first_heartbeat, bus, back, ready, heard)
                    await ready.wait()
                    launched = time.perf_counter()
                    proc.start()
                done = await applied[ROLL].wait([back], v.version, timeout=60)
                converge.append(done - heard[0])
                from_start.append(done - launched)
                _, applied_s = await direct_switch(client, applied[BASE], [back], f"one-{k}")
                one_switch.append(applied_s)
    finally:
        await bus.close()

    ms = [x * 1000 for x in beyond]
    conv = stats([x * 1000 for x in converge])
    return [
        Figure(
            benchmark=BENCH,
            name="returning node: first heartbeat → converged",
            unit="ms",
            value=conv,
            baseline=stats([x * 1000 for x in one_switch]),
            baseline_name="one-node atomic switch → applied",
            params={"agents": n, "heartbeat_s": HEARTBEAT_S},
            notes=(
                "from process start instead: median "
                f"{stats(from_start).median * 1000:.0f} ms (Python start-up and joining the bus)"
            ),
        ),
        Figure(
            benchmark=BENCH,
            name=f"wave time beyond its bake ({wave} nodes per wave)",
            unit="ms",
            value=stats(ms),
            baseline=stats([x * 1000 for x in wave_switch]),
            baseline_name=f"atomic switch of {wave} nodes (request → reply)",
            params={"agents": n, "waves": 4, "bake_s": BAKE_S, "rollouts": rollouts},
            notes=(
                "previous wave's commit → this wave's commit, minus the bake; bake end → next "
                f"commit median {stats(bake_to_commit).median * 1000:.0f} ms (verdict request, "
                "record compare-and-sets, events, and the switch)"
            ),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    return run_alone(BENCH, run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
