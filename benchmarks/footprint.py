"""Footprint: resident memory (RSS) of the agent.

- **per agent process**: real ``confbus agent`` processes, each following one namespace,
  measured after they have applied a few switches (their steady state), their bytecode
  written by an agent before them (as an installed package has it);
- **per agent when 1000 share processes**: 4 hosts × 250 ``NodeAgent``s on 2 connections each,
  the hosts' total RSS divided by the agents, after the same switches.

Baseline, same run and layout: the raw subscriber processes of ``benchmarks.baselines`` (Python,
nats-py, one connection, the subscriptions) — the floor of any Python process on the bus.

The version's bytes come from an in-process stub of ``cfg.api.store.get``: the store's memory
is not the agent's, and the benchmark needs no version-store for it.
"""

from __future__ import annotations

import anyio

from benchmarks.baselines import SubscriberFleet
from benchmarks.fleets import AgentFleet, AgentSpec, wait_heartbeats
from benchmarks.processes import Context, open_bus, rss_kb
from benchmarks.report import Figure, stats
from benchmarks.switch import StubStore, Watch, config_bytes, timed_switch
from confbus.runtime.bus import Bus

BENCH = "footprint"


async def _switches(bus: Bus, stub: StubStore, watch: Watch, nodes: list[str], count: int) -> None:
    for v in range(1, count + 1):
        await stub.add(v, config_bytes(v))
        await timed_switch(bus, watch, stub.namespace, v, nodes, 30.0)


async def run(ctx: Context) -> list[Figure]:
    singles = 1 if ctx.smoke else 5
    shared = 20 if ctx.smoke else 1000
    hosts = 1 if ctx.smoke else 4
    switches = 2 if ctx.smoke else 3
    settle = 0.2 if ctx.smoke else 1.0  # seconds after the last switch before measuring
    nats = ctx.start_nats()
    bus = await open_bus(nats.url, "bench-footprint")
    figures = []

    async def switched(
        name: str, ns: str, nodes: list[str], processes: int, heartbeats_s: float = 60.0
    ) -> tuple[AgentFleet, SubscriberFleet, StubStore]:
        """Agents of ``ns`` on ``nodes`` in ``processes`` processes, and raw subscribers in the
        same layout, after ``switches`` switches and ``settle`` seconds: their RSS is ready."""
        specs = [AgentSpec(node, (ns,)) for node in nodes]
        stub = await StubStore(bus, ns).start()
        watch = await Watch(bus, ns).start()
        fleet = AgentFleet(ctx, nats.url, ctx.path(name), specs, processes=processes).start()
        floor = SubscriberFleet(
            ctx, nats.url, ctx.path(f"{name}-floor"), specs, processes=processes
        )
        floor.start()
        await wait_heartbeats(bus, nodes, timeout=heartbeats_s)
        await _switches(bus, stub, watch, nodes, switches)
        await anyio.sleep(settle)
        return fleet, floor, stub

    try:
        ctx.service("coordinator", nats.url)

        # A first agent (and raw subscriber) writes the bytecode every later process reads
        # (``Context.env``), as pip does at install: an agent that compiled modules itself
        # keeps the compiler's leftovers in its heap — ~0.9 MB more RSS in the agents that
        # started together and raced to compile, the figure's spread and most of its p50.
        fleet, floor, stub = await switched("warm", "fp0", ["warm0"], 1)
        fleet.stop()
        floor.stop()
        await stub.stop()

        # -- one agent per process ----------------------------------------------------------------
        solo = [f"solo{i}" for i in range(singles)]
        fleet, floor, stub = await switched("solo", "fp1", solo, singles)
        agent_mb = [kb / 1024 for kb in fleet.rss_kb()]
        floor_mb = [kb / 1024 for p in floor.procs if (kb := rss_kb(p.pid)) is not None]
        figures.append(
            Figure(
                benchmark=BENCH,
                name="RSS per agent process (`confbus agent`, one namespace)",
                unit="MB",
                value=stats(agent_mb),
                baseline=stats(floor_mb),
                baseline_name="raw Python + nats-py subscriber process",
                params={"processes": singles, "switches_applied": switches},
                notes="MB = MiB of VmRSS, after the agent applied "
                f"{switches} switches and heartbeats",
            )
            .target_ratio(3.0)
            .target_median(30.0, "each")
        )
        fleet.stop()
        floor.stop()
        await stub.stop()

        # -- many agents per process --------------------------------------------------------------
        many = [f"s{i:04d}" for i in range(shared)]
        fleet, floor, stub = await switched("shared", "fp2", many, hosts, heartbeats_s=120.0)
        per_agent_kb = sum(fleet.rss_kb()) / shared
        per_floor_kb = sum(r for p in floor.procs if (r := rss_kb(p.pid)) is not None) / shared
        host_mb = [kb / 1024 for kb in fleet.rss_kb()]
        figures.append(
            Figure(
                benchmark=BENCH,
                name=f"RSS per agent, {shared} agents sharing {hosts} processes",
                unit="MB",
                value=stats([per_agent_kb / 1024]),
                baseline=stats([per_floor_kb / 1024]),
                baseline_name="raw subscribers, same layout",
                params={
                    "agents": shared,
                    "processes": hosts,
                    "host_rss_mb": host_mb,
                    "layout": fleet.describe(),
                },
                notes=f"{fleet.describe()}; hosts' RSS "
                + ", ".join(f"{m:.0f}" for m in host_mb)
                + " MB",
            )
        )
        fleet.stop()
        floor.stop()
        await stub.stop()
    finally:
        await bus.close()
    return figures
