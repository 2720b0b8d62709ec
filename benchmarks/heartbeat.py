"""Heartbeats: the CPU an agent spends on each heartbeat it sends, and the distributor on each
one it receives, with nothing else in flight.

A fleet of real agents in one host process (``benchmarks.fleets``; each agent its own live
file, state directory and heartbeat, as one agent per process would send it) with the
version-store, the distributor and the coordinator, after one rollout per namespace (so the
distributor holds each namespace's lease, production version and targets: the throughput
benchmark's idle). Then, in a few windows with nothing in flight, each process's CPU time
beside the heartbeats counted on the bus (messages and bytes):

- **agent**: the host's CPU per heartbeat sent (everything else it does idle included — the
  in-doubt sweep, its consumers — so an upper bound);
- **distributor**: its CPU per heartbeat received (its idle lease renewals and membership
  sweep included; also an upper bound); and what each heartbeat more costs it, from its CPU per
  second with the raw beats (below) at the agents' rate and at ``FAST`` times that rate.

Baselines, same run: ``benchmarks/raw_heartbeats.py`` — a plain nats-py process publishing the
agents' own captured heartbeat bytes, one task per node at the agents' rate, on as many
connections (with the agents stopped, in windows of their own); and a plain subscriber that
decodes every heartbeat (untyped JSON), alongside the distributor in every window.

Interleaved A/B against another checkout: run this module with that checkout's interpreter
from this tree (``/other/.venv/bin/python -m benchmarks.heartbeat``): the agents, the services
and the benchmark itself then import that checkout's confbus.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from benchmarks.fleets import AgentFleet, AgentSpec, wait_heartbeats
from benchmarks.processes import REPO, Context, CpuMeter, open_bus, rss_kb
from benchmarks.report import Figure, stats
from benchmarks.switch import Watch, timed_publish
from confbus.runtime.bus import Bus
from confbus.schemas import subjects

BENCH = "heartbeat"
FAST = 4  # the raw beats' second rate, × the agents': the slope gives the per-heartbeat cost
RAW = REPO / "benchmarks" / "raw_heartbeats.py"


@dataclass(frozen=True)
class Shape:
    namespaces: int
    agents_per_ns: int
    interval_s: float
    windows: int
    window_s: float


FULL = Shape(namespaces=10, agents_per_ns=20, interval_s=2.0, windows=4, window_s=5.0)
SMOKE = Shape(namespaces=2, agents_per_ns=3, interval_s=0.5, windows=2, window_s=1.0)


class BeatCounter:
    """Heartbeats on the bus: how many, how many bytes, and each node's last one."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.last: dict[str, bytes] = {}

    async def start(self, bus: Bus) -> BeatCounter:
        async def on_beat(msg: Any) -> None:
            self.count += 1
            self.bytes += len(msg.data)
            self.last[msg.subject] = msg.data

        await bus.nc.subscribe(subjects.HEARTBEATS_ALL, cb=on_beat)
        await bus.nc.flush()
        return self


@dataclass
class Windows:
    """Per window: each group's CPU µs per heartbeat and ms per second, heartbeats/s, bytes/s."""

    per_beat: dict[str, list[float]]
    per_s: dict[str, list[float]]
    rate: list[float]
    volume: list[float]

    def per_beat_median(self) -> dict[str, float]:
        return {k: round(stats(v).median, 1) for k, v in self.per_beat.items()}


async def _windows(shape: Shape, groups: dict[str, Sequence[int]], beats: BeatCounter) -> Windows:
    per_beat: dict[str, list[float]] = {name: [] for name in groups}
    per_s: dict[str, list[float]] = {name: [] for name in groups}
    rate: list[float] = []
    volume: list[float] = []
    for _ in range(shape.windows):
        meter = CpuMeter(groups)
        n0, b0, t0 = beats.count, beats.bytes, time.perf_counter()
        with meter.span():
            await anyio.sleep(shape.window_s)
        took = time.perf_counter() - t0
        n, b = beats.count - n0, beats.bytes - b0
        for name, sec in meter.spent.items():
            per_beat[name].append(sec * 1e6 / max(n, 1))
            per_s[name].append(sec * 1e3 / took)
        rate.append(n / took)
        volume.append(b / took)
    return Windows(per_beat, per_s, rate, volume)


def marginal_us(slow: Windows, fast: Windows, group: str) -> float:
    """CPU µs per heartbeat more: the growth of ``group``'s CPU per second from ``slow`` to
    ``fast`` over that of the heartbeat rate — what each heartbeat costs it, without the
    work it does per second whatever the rate (leases, sweeps, idle consumers)."""
    d_cpu = stats(fast.per_s[group]).median - stats(slow.per_s[group]).median
    d_rate = stats(fast.rate).median - stats(slow.rate).median
    return round(d_cpu * 1e3 / max(d_rate, 1e-9), 1)


async def run(ctx: Context) -> list[Figure]:
    shape = SMOKE if ctx.smoke else FULL
    nats = ctx.start_nats()
    assert nats.proc is not None
    names = [f"hb{i:02d}" for i in range(shape.namespaces)]
    specs = [AgentSpec(f"{ns}-n{j:02d}", (ns,)) for ns in names for j in range(shape.agents_per_ns)]
    bus = await open_bus(nats.url, "bench-heartbeat")
    try:
        watches = {ns: await Watch(bus, ns).start() for ns in names}
        ctx.version_store(nats.url, "hb")
        dist = ctx.service("distributor", nats.url)
        ctx.service("coordinator", nats.url)
        listener = ctx.proc("raw-listen", [sys.executable, str(RAW), "listen", nats.url])
        fleet = AgentFleet(
            ctx,
            nats.url,
            ctx.path("fleet"),
            specs,
            processes=1,
            connections=2,
            heartbeat_interval=shape.interval_s,
        ).start()
        await wait_heartbeats(bus, [s.node for s in specs], timeout=120.0)
        async with anyio.create_task_group() as tg:
            for ns in names:
                tg.start_soon(timed_publish, bus, watches[ns], ns, 1, shape.agents_per_ns, 120.0)
        beats = await BeatCounter().start(bus)
        await anyio.sleep(2 * shape.interval_s)  # past the apply's own heartbeats
        groups: dict[str, Sequence[int]] = {
            "agent": fleet.pids(),
            "distributor": [dist.pid],
            "raw listener": [listener.pid],
            "nats-server": [nats.proc.pid],
        }
        agents = await _windows(shape, groups, beats)
        payloads = {s: data.decode() for s, data in beats.last.items()}
        agent_rss_mb = (rss_kb(fleet.pids()[0]) or 0) / 1024
        fleet.stop()

        # -- the raw floor: the same bytes, the same rate, the same connections ----------------
        plan = ctx.path("raw") / "payloads.json"
        plan.write_text(json.dumps(payloads))
        rates: list[Windows] = []
        for interval in (shape.interval_s, shape.interval_s / FAST):
            argv = [sys.executable, str(RAW), "beat", nats.url, str(plan), str(interval), "2"]
            raw = ctx.proc(f"raw-beat-{len(rates)}", argv)
            await anyio.sleep(2 * interval)  # every node past its first, spread beat
            groups = {
                "raw beater": [raw.pid],
                "distributor": [dist.pid],
                "raw listener": [listener.pid],
                "nats-server": [nats.proc.pid],
            }
            rates.append(await _windows(shape, groups, beats))
            raw.stop()
        floor, fast = rates
    finally:
        await bus.close()

    size = stats(agents.volume).median / max(stats(agents.rate).median, 1e-9)
    marginal = {g: marginal_us(floor, fast, g) for g in ("distributor", "raw listener")}
    params: dict[str, Any] = {
        "agents": len(specs),
        "interval_s": shape.interval_s,
        "heartbeats_per_s": round(stats(agents.rate).median, 1),
        "raw_heartbeats_per_s": round(stats(floor.rate).median, 1),
        "raw_fast_heartbeats_per_s": round(stats(fast.rate).median, 1),
        "heartbeat_bytes": round(size),
        "bus_bytes_per_s": round(stats(agents.volume).median),
        "cpu_us_per_heartbeat": agents.per_beat_median(),
        "cpu_ms_per_s": {k: round(stats(v).median, 1) for k, v in agents.per_s.items()},
        "raw_cpu_us_per_heartbeat": floor.per_beat_median(),
        "marginal_cpu_us_per_heartbeat": {
            **marginal,
            "nats-server": marginal_us(floor, fast, "nats-server"),
        },
        "agent_host_rss_mb": round(agent_rss_mb, 1),
        "python": sys.executable,
    }
    common = (
        f"{len(specs)} agents in one host process (2 connections), heartbeat every "
        f"{shape.interval_s:g} s, nothing in flight; {params['heartbeats_per_s']:g} heartbeats/s "
        f"of {params['heartbeat_bytes']} bytes"
    )
    nats_note = (
        f"; nats-server {params['cpu_us_per_heartbeat']['nats-server']:.0f} µs per heartbeat "
        f"(raw beats: {params['raw_cpu_us_per_heartbeat']['nats-server']:.0f})"
    )
    return [
        Figure(
            benchmark=BENCH,
            name="agent host CPU per heartbeat sent [µs]",
            unit="µs",
            value=stats(agents.per_beat["agent"]),
            baseline=stats(floor.per_beat["raw beater"]),
            baseline_name="raw nats-py publish of the agents' captured bytes, same rate",
            params=params,
            notes=common + nats_note,
        ),
        Figure(
            benchmark=BENCH,
            name="distributor CPU per heartbeat received [µs]",
            unit="µs",
            value=stats(agents.per_beat["distributor"]),
            baseline=stats(agents.per_beat["raw listener"]),
            baseline_name="raw nats-py subscriber decoding each (untyped JSON), same beats",
            params={"marginal_cpu_us_per_heartbeat": marginal},
            notes=common
            + " (its lease renewals and membership sweep included); each heartbeat more, from "
            f"the raw beats at 1× and {FAST}× the rate: distributor {marginal['distributor']:g} "
            f"µs, raw listener {marginal['raw listener']:g} µs",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    from benchmarks.processes import run_alone

    return run_alone(BENCH, run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
