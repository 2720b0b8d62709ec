"""Throughput: committed changes per second across 50 independent namespaces × 10 agents.

A *committed change* is one whose all-at-once switch committed and that every one of its 10
agents has applied. 50 loops run at once, one per namespace, each with one change in flight
(a namespace holds one undecided transaction at a time), for a fixed window, a few times:

- **publish → all applied**: the change published on ``cfg.change.<ns>``, stored by the
  version-store, rolled out by the distributor, switched by the coordinator;
- **switch request → all applied**: the version stored first (publish → ``version.created``),
  then ``cfg.api.txn.switch`` directly (no distributor).

Counted per committed change: fsynced JetStream writes (messages stored in every stream and
bucket: with ``sync_interval: always`` each one is fsynced before its ack), SQLite commits
(the version-store's group commits plus its promotions), and the agents' own fsyncs (counted
in the agent hosts). Compared with this disk's measured fsync rate. Each process's CPU time
per change over the windows, and per second with every fleet up and nothing in flight (its
heartbeats, leases and timers, which a slower run carries more of per change).

Baseline, same window and concurrency: 50 loops of the raw floor of a switch (one fsynced
JetStream publish + two request/reply fan-out rounds to 10 subscribers doing the file work).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from benchmarks.baselines import SubscriberFleet, ensure_bench_stream, switch_floor
from benchmarks.fleets import AgentFleet, AgentSpec, gather_host_stats, wait_heartbeats
from benchmarks.pathtrace import PathTrace
from benchmarks.processes import (
    Context,
    CpuMeter,
    fsync_probe,
    open_bus,
    version_store_available,
)
from benchmarks.report import Figure, stats
from benchmarks.switch import (
    Profiler,
    StubStore,
    Watch,
    config_bytes,
    store_version,
    timed_publish,
    timed_switch,
)
from confbus.procs.proc import Proc
from confbus.runtime.bus import Bus
from confbus.schemas.api import txn as txn_api

BENCH = "throughput"


@dataclass(frozen=True)
class Shape:
    namespaces: int
    agents_per_ns: int
    window_s: float
    windows: int
    processes: int = 4
    connections: int = 2
    max_per_loop: int = 500  # a bound on each loop, whatever the window


# Makes a namespace's loop body: one change, measured in a window.
BodyOf = Callable[[str], Callable[[], Awaitable[None]]]

FULL = Shape(50, 10, window_s=6.0, windows=3)
SMOKE = Shape(3, 2, window_s=1.0, windows=1, processes=1, connections=1)
IDLE_S = 4.0  # two heartbeat intervals of the fleet's agents, no change in flight


async def _window(
    loops: list[Callable[[], Awaitable[None]]], window_s: float, max_per_loop: int
) -> tuple[int, float]:
    """Run every loop body repeatedly until the window closes; (changes done, seconds)."""
    done = 0
    deadline = time.monotonic() + window_s

    async def loop(body: Callable[[], Awaitable[None]]) -> None:
        nonlocal done
        for _ in range(max_per_loop):
            if time.monotonic() >= deadline:
                return
            await body()
            done += 1

    started = time.perf_counter()
    with anyio.fail_after(window_s + 120.0):
        async with anyio.create_task_group() as tg:
            for body in loops:
                tg.start_soon(loop, body)
    return done, time.perf_counter() - started


async def _js_messages(bus: Bus) -> dict[str, int]:
    """Messages ever stored in each stream (KV buckets are streams too): each one fsynced."""
    return {
        info.config.name: info.state.last_seq
        for info in await bus.js.streams_info()
        if info.config.name != "BENCH_BASE" and info.config.name is not None
    }


def _per_s(before: dict[str, int], after: dict[str, int], took: float) -> dict[str, float]:
    """Messages stored per second in each stream that grew (the writes a window cost)."""
    return {
        name: round((n - before.get(name, 0)) / max(took, 1e-9), 1)
        for name, n in sorted(after.items())
        if n > before.get(name, 0)
    }


def _store_commits(store: Proc | None) -> float | None:
    """The version-store's group commits so far (``batch_size`` histogram count)."""
    if store is None or store.ready is None or "http_port" not in store.ready:
        return None
    import urllib.request

    url = f"http://127.0.0.1:{store.ready['http_port']}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("confbus_version_store_batch_size_count"):
            return float(line.split()[-1])
    return None


@dataclass
class Counters:
    js: dict[str, int]  # messages stored so far, per stream
    agent_fsyncs: int
    sqlite: float | None

    @classmethod
    async def read(cls, bus: Bus, fleet: AgentFleet, store: Proc | None) -> Counters:
        hosts = await gather_host_stats(bus, len(fleet.procs))
        return cls(
            js=await _js_messages(bus),
            agent_fsyncs=sum(int(h["fsyncs"]) for h in hosts),
            sqlite=_store_commits(store),
        )


async def run(ctx: Context) -> list[Figure]:
    shape = SMOKE if ctx.smoke else FULL
    nats = ctx.start_nats()
    root = ctx.path("fleet")
    names = [f"tp{i:02d}" for i in range(shape.namespaces)]
    members = {ns: [f"{ns}-n{j:02d}" for j in range(shape.agents_per_ns)] for ns in names}
    specs = [AgentSpec(node, (ns,)) for ns, nodes in members.items() for node in nodes]
    bus = await open_bus(nats.url, "bench-throughput")
    figures: list[Figure] = []
    stubs: list[StubStore] = []
    try:
        await ensure_bench_stream(bus)
        watches = {ns: await Watch(bus, ns).start() for ns in names}
        trace = await PathTrace(bus).start()
        real_store = version_store_available()
        store: Proc | None = None
        if real_store:
            store = ctx.service(
                "version_store", nats.url, "--store", f"sqlite://{ctx.path('store') / 'store.db'}"
            )
        else:
            # One stub answers for every namespace (the coordinator asks by namespace).
            stub = await StubStore(bus, "*").start()
            stubs.append(stub)
        coordinator = ctx.service("coordinator", nats.url)
        fleet = AgentFleet(
            ctx,
            nats.url,
            root,
            specs,
            processes=shape.processes,
            connections=shape.connections,
            tag="agents",
        ).start()
        subs = SubscriberFleet(
            ctx,
            nats.url,
            ctx.path("floor"),
            specs,
            processes=shape.processes,
            connections=shape.connections,
        ).start()
        await wait_heartbeats(bus, [s.node for s in specs], timeout=120.0)
        versions = dict.fromkeys(names, 0)
        vote_timeout = 15.0

        async def windows(body_of: BodyOf) -> tuple[list[float], int]:
            """``shape.windows`` timed windows of every namespace's body at once: the rate of
            each window, and the changes done in all."""
            rates: list[float] = []
            total = 0
            for _ in range(shape.windows):
                done, took = await _window(
                    [body_of(ns) for ns in names], shape.window_s, shape.max_per_loop
                )
                rates.append(done / took)
                total += done
            return rates, total

        assert nats.proc is not None
        nats_pid = nats.proc.pid
        services = {"coordinator": coordinator, "version_store": store}

        async def counted(
            body_of: BodyOf, *, promotions: bool
        ) -> tuple[list[float], int, dict[str, Any]]:
            """One warm-up change per namespace (first rollout: leadership, caches), then the
            windows, with what the fsync counters and each process's CPU time grew by per
            change (CPU time: a figure the other work on a shared machine moves far less than
            the rate)."""

            async def warm_up(ns: str) -> None:  # (a window of 0 s would run none)
                await body_of(ns)()

            async with anyio.create_task_group() as tg:
                for ns in names:
                    tg.start_soon(warm_up, ns)
            groups: dict[str, Sequence[int]] = {
                name: [p.pid] for name, p in services.items() if p is not None
            }
            groups.update({"agents": fleet.pids(), "nats-server": [nats_pid]})
            # The same processes with no change in flight first: what they spend per second
            # whatever the rate (heartbeats, leases, timers), which the windows' CPU per change
            # carries too.
            idle = CpuMeter(groups)
            stored = await _js_messages(bus)
            started = time.perf_counter()
            with idle.span():
                await anyio.sleep(1.0 if ctx.smoke else IDLE_S)
            idle_s = time.perf_counter() - started
            idle_writes = _per_s(stored, await _js_messages(bus), idle_s)
            cpu = CpuMeter(groups)
            before = await Counters.read(bus, fleet, store)
            started = time.perf_counter()
            with cpu.span():
                rates, total = await windows(body_of)
            took = time.perf_counter() - started
            after = await Counters.read(bus, fleet, store)
            per_change = _per_change(before, after, total, promotions=promotions)
            per_change.update(_cpu_split(cpu.spent, idle.spent, total, took, idle_s))
            per_change["js_writes_per_s_idle"] = idle_writes
            return rates, total, per_change

        # -- the raw floor, same concurrency -------------------------------------------------
        def floor_body(ns: str) -> Callable[[], Awaitable[None]]:
            async def body() -> None:
                await switch_floor(bus, ns, shape.agents_per_ns, config_bytes(1))

            return body

        floor_rates, _ = await windows(floor_body)
        floor = stats(floor_rates)

        def rate_figure(
            path: str, rates: list[float], total: int, per_change: dict[str, Any], notes: str
        ) -> Figure:
            """Committed changes/s along ``path`` (to all applied), against the raw floor."""
            return Figure(
                benchmark=BENCH,
                name=f"committed changes/s, {path} → all applied, "
                f"{shape.namespaces} ns × {shape.agents_per_ns} agents",
                unit="changes/s",
                better="higher",
                value=stats(rates),
                baseline=floor,
                baseline_name=f"raw floor, {shape.namespaces} loops",
                params={"window_s": shape.window_s, "changes": total, **per_change},
                notes=notes + _fsync_note(per_change),
            )

        # -- publish → all applied ------------------------------------------------------------
        e2e_rates: list[float] = []
        per_change: dict[str, Any] = {}
        # The smoke run leaves out the distributor path: the switch smoke covers it already.
        with_distributor = real_store and not ctx.smoke
        dist = ctx.try_service("distributor", nats.url) if with_distributor else None
        if dist is not None:
            services["distributor"] = dist

            def e2e_body(ns: str) -> Callable[[], Awaitable[None]]:
                async def body() -> None:
                    v = versions[ns] + 1
                    await timed_publish(
                        bus, watches[ns], ns, v, shape.agents_per_ns, vote_timeout + 60
                    )
                    versions[ns] = v

                return body

            profiler = _profiler({**services, "agent-host": fleet.procs[0]})
            trace.on = True
            e2e_rates, total, per_change = await counted(e2e_body, promotions=True)
            trace.on = False
            if profiler is not None:
                profiler.stop()
            dist.stop()
            del services["distributor"]
            started = {(ns, v): t for ns in names for v, t in watches[ns].started.items()}
            steps = trace.steps(started)
            writes = trace.writes_per_change(started)
            notes = "version-store + distributor + coordinator processes; "
            f = rate_figure("publish", e2e_rates, total, per_change, notes + _steps_note(steps))
            f.params["steps_median_ms"] = steps
            f.params["steps_p90_ms"] = trace.steps(started, quantile=0.9)
            f.params["rollout_record_writes_per_change"] = writes
            if writes is not None:
                f.notes += f"; {writes:g} writes of the rollout record per change"
            print(f"[throughput] publish path, {_steps_note(steps)}", file=sys.stderr)
            p90 = ", ".join(f"{k} {v:.0f}" for k, v in f.params["steps_p90_ms"].items())
            print(f"[throughput] publish path, p90 ms after the publish: {p90}", file=sys.stderr)
            figures.append(f.target_median(50.0))

        # -- switch request → all applied ----------------------------------------------------
        def switch_body(ns: str) -> Callable[[], Awaitable[None]]:
            async def body() -> None:
                content = config_bytes(versions[ns] + 1)
                if stubs:
                    v = versions[ns] + 1
                    await stubs[0].add_for(ns, v, content)
                else:
                    v = await store_version(bus, watches[ns], ns, content)
                versions[ns] = v
                await timed_switch(bus, watches[ns], ns, v, members[ns], vote_timeout)

            return body

        sw_rates: list[float] = []
        sw_per_change: dict[str, Any] = {}
        try:
            sw_rates, total, sw_per_change = await counted(switch_body, promotions=False)
        except Exception as exc:
            if not e2e_rates:
                raise
            # The publish path's figure stands; say why this one is missing (on a machine
            # busy with other work, a coordinator starved of CPU can lose its lease mid-switch).
            ctx.skipped.append(f"store + switch request path failed: {exc!r}"[:300])
        if sw_rates:
            notes = "no distributor: version stored (publish → version.created), then "
            notes += f"{txn_api.SWITCH.address}; "
            f = rate_figure("store + switch request", sw_rates, total, sw_per_change, notes)
            if not e2e_rates:  # no distributor: the target is judged on this path
                f.target_median(50.0)
            figures.append(f)

        # -- fsyncs per change, and this disk's fsync rate ---------------------------------------
        fsyncs = per_change or sw_per_change
        probe_dir = ctx.path("probe")
        count, reps = (50, 1) if ctx.smoke else (1000, 3)
        serial = [fsync_probe(probe_dir, count) for _ in range(reps)]
        parallel = [fsync_probe(probe_dir, count, threads=16) for _ in range(reps)]
        capacity = stats(parallel)
        rate = stats(e2e_rates or sw_rates).median
        used = rate * fsyncs["fsyncs_per_change"]
        figures.append(
            Figure(
                benchmark=BENCH,
                name="fsyncs per committed change (JetStream + SQLite + agents)",
                unit="fsyncs",
                value=stats([fsyncs["fsyncs_per_change"]]),
                params={
                    **fsyncs,
                    "fsyncs_per_s_used": used,
                    "disk_fsync_per_s_serial": stats(serial).median,
                    "disk_fsync_per_s_16_writers": capacity.median,
                },
                notes=f"{fmt_rate(rate)} changes/s × {fsyncs['fsyncs_per_change']:.1f} fsyncs "
                f"= {fmt_rate(used)} fsyncs/s used, against {fmt_rate(capacity.median)}/s this "
                f"disk sustains with 16 writers ({fmt_rate(stats(serial).median)}/s one at a "
                "time)",
            )
        )
        figures.append(
            Figure(
                benchmark=BENCH,
                name="disk fsync rate, new 1 KiB file + fsync",
                unit="fsync/s",
                better="higher",
                value=stats(serial),
                baseline=capacity,
                baseline_name="16 writers at once",
                params={"files": count, "serial": serial, "16_writers": parallel},
                notes="the baseline column is the same disk with 16 concurrent writers; the "
                "ratio is how much concurrency buys",
            )
        )
        subs.stop()
        fleet.stop()
    finally:
        for stub in stubs:
            await stub.stop()
        await bus.close()
    return figures


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _per_change(
    before: Counters, after: Counters, changes: int, *, promotions: bool
) -> dict[str, Any]:
    changes = max(1, changes)
    per_stream = {
        name: (n - before.js.get(name, 0)) / changes
        for name, n in sorted(after.js.items())
        if n > before.js.get(name, 0)
    }
    js = sum(per_stream.values())
    agents = (after.agent_fsyncs - before.agent_fsyncs) / changes
    sqlite: float | None = None
    if before.sqlite is not None and after.sqlite is not None:
        # Group commits, plus one commit per promotion (the distributor's ``promote``).
        sqlite = (after.sqlite - before.sqlite) / changes + (1.0 if promotions else 0.0)
    return {
        "js_fsynced_writes_per_change": js,
        "js_writes_per_change_by_stream": per_stream,
        "sqlite_commits_per_change": sqlite,
        "agent_fsyncs_per_change": agents,
        "fsyncs_per_change": js + agents + (sqlite or 0.0),
    }


def _cpu_split(
    spent: dict[str, float], idle: dict[str, float], changes: int, took: float, idle_s: float
) -> dict[str, dict[str, float]]:
    """CPU ms per change of each process group over the windows; its CPU ms per second with
    nothing in flight; and the first less the second's share of the windows (the work the
    changes themselves caused, per change)."""
    n = max(changes, 1)
    per_s = {name: sec * 1000 / max(idle_s, 1e-9) for name, sec in idle.items()}
    return {
        "cpu_ms_per_change": {name: round(sec * 1000 / n, 2) for name, sec in spent.items()},
        "cpu_ms_per_s_idle": {name: round(ms, 1) for name, ms in per_s.items()},
        "cpu_ms_per_change_less_idle": {
            name: round((sec * 1000 - per_s[name] * took) / n, 2) for name, sec in spent.items()
        },
    }


def _profiler(procs: dict[str, Proc | None]) -> Profiler | None:
    """``CONFBUS_BENCH_PROFILE=DIR``: py-spy samples the services on the publish path (the
    version-store, the distributor and the coordinator) and one agent host during its
    windows."""
    out = os.environ.get("CONFBUS_BENCH_PROFILE")
    if not out:
        return None
    pids = {name: p.pid for name, p in procs.items() if p is not None}
    profiler = Profiler(Path(out), pids)
    profiler.start()
    return profiler


def _steps_note(steps: dict[str, float]) -> str:
    """Where a change's time goes: each step's median ms after the publish (``PathTrace``)."""
    if not steps:
        return ""
    return (
        "median ms after the publish: "
        + ", ".join(f"{step} {ms:.0f}" for step, ms in steps.items())
        + "; "
    )


def _fsync_note(p: dict[str, Any]) -> str:
    if not p:
        return ""
    sqlite = p["sqlite_commits_per_change"]
    streams = ", ".join(f"{k} {v:.1f}" for k, v in p["js_writes_per_change_by_stream"].items())
    return (
        f"per change: {p['js_fsynced_writes_per_change']:.1f} fsynced JetStream writes "
        f"({streams}), "
        f"{'?' if sqlite is None else f'{sqlite:.2f}'} SQLite commits, "
        f"{p['agent_fsyncs_per_change']:.1f} agent fsyncs"
    ) + _cpu_note(p)


def _cpu_note(p: dict[str, Any]) -> str:
    cpu = p.get("cpu_ms_per_change", {})
    if not cpu:
        return ""
    idle = p.get("cpu_ms_per_s_idle", {})
    net = p.get("cpu_ms_per_change_less_idle", {})
    return (
        "; CPU ms per change: "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
        + "; with nothing in flight, CPU ms per s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in idle.items())
        + "; per change less that: "
        + ", ".join(f"{k} {v:.1f}" for k, v in net.items())
        + "; with nothing in flight, JetStream writes per s: "
        + (", ".join(f"{k} {v:g}" for k, v in p.get("js_writes_per_s_idle", {}).items()) or "0")
    )
