"""Switch latency: one atomic switch (2PC) of a whole fleet, all at once, 10 / 100 / 1000 agents.

Two figures per fleet size, both ending when the **last** agent has applied (renamed its
staged file over the live file, fsynced the directory, and announced ``node.applied``):

- **switch request → all applied**: ``cfg.api.txn.switch`` on a real coordinator process, the
  version already stored (pure 2PC: head CAS, fsynced prepare, votes, CAS, fsynced decision,
  agents apply);
- **publish → all applied** (when the version-store service exists): a change published on
  ``cfg.change.<ns>`` → version-store stores it (SQLite) → distributor plans the all-at-once
  rollout → coordinator 2PC → agents apply. The real services, each its own process.

The agents are real ``NodeAgent``s writing real files with fsync. 10 agents run as 10
``confbus agent`` processes; 100 and 1000 share 4 processes with 2 NATS connections each.

Baseline, interleaved with the switches so that both see the same noise: one fsynced
JetStream publish plus two rounds of plain request/reply fan-out to as many subscribers, in
the same process layout, doing the same file work (``benchmarks.baselines``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from nats.aio.msg import Msg

from benchmarks.baselines import SubscriberFleet, ensure_bench_stream, switch_floor
from benchmarks.fleets import AgentFleet, AgentSpec, wait_heartbeats
from benchmarks.processes import Context, CpuMeter, open_bus, version_store_available
from benchmarks.report import Figure, stats
from confbus.runtime.api import Endpoint, call, serve_api, stop_api
from confbus.runtime.bus import Bus
from confbus.schemas import subjects
from confbus.schemas.api import store as store_api
from confbus.schemas.api import txn as txn_api
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.changes import msg_id as change_msg_id
from confbus.schemas.events import (
    NodeApplied,
    RolloutCompleted,
    RolloutFailed,
    RolloutRolledBack,
    RolloutSuperseded,
    VersionCreated,
    VersionRejected,
    readable_event,
)
from confbus.schemas.signing import Signature
from confbus.schemas.txn import decode_txn
from confbus.schemas.versions import VersionInfo

BENCH = "switch"


@dataclass(frozen=True)
class Size:
    agents: int
    iterations: int
    e2e_iterations: int
    processes: int
    connections: int = 2
    vote_timeout_s: float = 10.0


FULL = (
    Size(10, 30, 10, processes=10, connections=1),
    Size(100, 20, 8, processes=4),
    Size(1000, 8, 4, processes=4, vote_timeout_s=30.0),
)
SMOKE = (Size(3, 3, 1, processes=1, connections=1),)


def config_bytes(version: int, size: int = 1024) -> bytes:
    """A JSON config of about ``size`` bytes, different for every version."""
    doc: dict[str, Any] = {"version": version, "pool": {"min": 4, "max": 64}, "features": {}}
    i = 0
    while len(json.dumps(doc)) < size:
        doc["features"][f"flag_{i:03d}"] = (version * 7919 + i) % 2 == 0
        i += 1
    return (json.dumps(doc, indent=None) + "\n").encode()


# -- watching the fleet ---------------------------------------------------------------------------


@dataclass
class _Wait:
    want: int
    nodes: set[str] = field(default_factory=set)
    times: list[float] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    at: float = 0.0  # perf_counter when the last node's report arrived


@dataclass
class TxnTimes:
    """When the benchmark saw each step of one transaction (perf_counter seconds)."""

    prepare: float = 0.0
    votes: list[float] = field(default_factory=list)
    decision: float = 0.0
    applied: list[float] = field(default_factory=list)


PHASES = (
    "prepare seen",
    "first vote",
    "last vote",
    "decision seen",
    "first applied",
    "last applied",
)


class Watch:
    """Counts ``node.applied`` per version and maps change ids to stored versions, from the
    namespace's events (core subscription: the agent's fsynced publish reaches it too).

    With ``phases`` it also watches the namespace's 2PC traffic (prepare, each vote request,
    decision) to time each step of a switch, for the profile's breakdown."""

    def __init__(self, bus: Bus, namespace: str, *, phases: bool = False) -> None:
        self.bus = bus
        self.namespace = namespace
        self.phases = phases
        self.applied: dict[int, _Wait] = {}
        self.created: dict[str, VersionCreated | VersionRejected] = {}
        self.created_events: dict[str, anyio.Event] = {}
        self.txns: dict[str, TxnTimes] = {}
        self.txid_of: dict[int, str] = {}
        self.started: dict[int, float] = {}
        self.created_at: dict[int, float] = {}  # version → when its version.created arrived
        self.rollout_ended: dict[int, anyio.Event] = {}  # version → its rollout is over

    async def start(self) -> Watch:
        await self.bus.nc.subscribe(subjects.events_of(self.namespace), cb=self._on_event)
        if self.phases:
            await self.bus.nc.subscribe(f"cfg.txn.{self.namespace}.>", cb=self._on_txn)
        await self.bus.nc.flush()
        return self

    async def _on_txn(self, msg: Msg) -> None:
        now = time.perf_counter()
        parts = msg.subject.split(".")
        if len(parts) < 5:
            return
        times = self.txns.setdefault(parts[3], TxnTimes())
        if parts[4] == "prepare":
            times.prepare = now
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                record = decode_txn(msg.data)
                self.txid_of[record.version] = parts[3]
        elif parts[4] == "vote":
            times.votes.append(now)
        elif parts[4] == "decision":
            times.decision = now

    def breakdown(self, version: int) -> dict[str, float] | None:
        """Milliseconds from the switch request to each step, or None if not all were seen."""
        started = self.started[version]
        t = self.txns.get(self.txid_of.get(version, ""))
        w = self.applied.get(version)
        if t is None or w is None or not t.votes or not w.times or not t.decision:
            return None
        at = (t.prepare, min(t.votes), max(t.votes), t.decision, min(w.times), max(w.times))
        return {name: (x - started) * 1000 for name, x in zip(PHASES, at, strict=True)}

    def publish_breakdown(self, version: int) -> dict[str, float] | None:
        """Milliseconds from a publish to each step: the version stored, then the switch's."""
        steps = self.breakdown(version)
        created = self.created_at.get(version)
        if steps is None or created is None:
            return None
        return {"version.created": (created - self.started[version]) * 1000} | steps

    async def _on_event(self, msg: Msg) -> None:
        now = time.perf_counter()
        if (ev := readable_event(msg.data)) is None:
            return
        if isinstance(ev, NodeApplied):
            w = self.applied.get(ev.version)
            if w is not None and ev.node not in w.nodes:
                w.nodes.add(ev.node)
                w.times.append(now)
                if len(w.nodes) >= w.want:
                    w.at = now
                    w.done.set()
        elif isinstance(
            ev, RolloutCompleted | RolloutFailed | RolloutSuperseded | RolloutRolledBack
        ):
            self.rollout_end(ev.version).set()
        elif isinstance(ev, VersionCreated | VersionRejected):
            if isinstance(ev, VersionCreated):
                self.created_at[ev.version] = now
            self.created[ev.change_id] = ev
            if (e := self.created_events.get(ev.change_id)) is not None:
                e.set()

    def expect_applied(self, version: int, nodes: int) -> _Wait:
        w = self.applied[version] = _Wait(nodes)
        return w

    def expect_created(self, change_id: str) -> anyio.Event:
        e = self.created_events[change_id] = anyio.Event()
        return e

    def rollout_end(self, version: int) -> anyio.Event:
        return self.rollout_ended.setdefault(version, anyio.Event())


# -- where versions come from ---------------------------------------------------------------------


class StubStore:
    """Until the version-store service exists: ``cfg.api.store.get`` answered from memory (the
    coordinator fetches a version's bytes through it). The results say which store was used."""

    def __init__(self, bus: Bus, namespace: str) -> None:
        self.bus = bus
        self.namespace = namespace
        self.versions: dict[tuple[str, int], bytes] = {}
        self.svc: Any = None

    async def start(self) -> StubStore:
        async def get(req: store_api.GetRequest) -> store_api.VersionReply:
            v = int(req.ref)
            content = self.versions[(req.namespace, v)]
            info = VersionInfo(
                namespace=req.namespace,
                version=v,
                sha256=hashlib.sha256(content).hexdigest(),
                size=len(content),
                format="json",
                parent=v - 1 or None,
                author="bench",
                message="",
                change_id=f"bench-{v}",
                created_at=datetime.now(UTC),
                status="approved",
            )
            return store_api.VersionReply(info=info, content=content if req.content else None)

        self.svc = await serve_api(self.bus, [Endpoint(store_api.GET, get)], partial=True)
        return self

    async def add(self, version: int, content: bytes) -> int:
        return await self.add_for(self.namespace, version, content)

    async def add_for(self, namespace: str, version: int, content: bytes) -> int:
        self.versions[(namespace, version)] = content
        return version

    async def stop(self) -> None:
        if self.svc is not None:
            await stop_api(self.svc)


async def publish_change(
    bus: Bus,
    namespace: str,
    change_id: str,
    content: bytes,
    *,
    base: int | None = None,
    signatures: Sequence[Signature] = (),
    rollback_of: int | None = None,
) -> None:
    """``base``: the version it follows (None: whatever is newest); ``signatures``: its
    authors' (for version ``base + 1``); ``rollback_of``: the version it restores."""
    change = ChangeProposed(
        namespace=namespace,
        change_id=change_id,
        content=content,
        format="json",
        author="bench",
        message="benchmark",
        base=base,
        signatures=list(signatures),
        rollback_of=rollback_of,
    )
    await bus.publish(
        subjects.change(namespace), change, msg_id=change_msg_id(namespace, change_id)
    )


async def store_version(
    bus: Bus,
    watch: Watch,
    namespace: str,
    content: bytes,
    *,
    change_id: str | None = None,
    base: int | None = None,
    signatures: Sequence[Signature] = (),
) -> int:
    """Store a version through the real version-store (publish, wait for ``version.created``);
    ``base`` and ``signatures`` as in ``publish_change``."""
    change_id = change_id or secrets.token_hex(8)
    created = watch.expect_created(change_id)
    await publish_change(bus, namespace, change_id, content, base=base, signatures=signatures)
    with anyio.fail_after(30):
        await created.wait()
    ev = watch.created[change_id]
    if not isinstance(ev, VersionCreated):
        raise RuntimeError(f"{namespace}: version rejected: {ev.reason}")
    return ev.version


# -- one measurement ------------------------------------------------------------------------------


async def timed_switch(
    bus: Bus, watch: Watch, namespace: str, version: int, nodes: list[str], vote_timeout: float
) -> tuple[float, float]:
    """(seconds to all applied, seconds to the coordinator's reply) of one switch. The
    request's start is kept in ``watch.started[version]`` for the phase breakdown."""
    wait = watch.expect_applied(version, len(nodes))
    started = watch.started[version] = time.perf_counter()
    reply = await call(
        bus,
        txn_api.SWITCH,
        txn_api.SwitchRequest(
            namespace=namespace,
            version=version,
            nodes=nodes,
            timeout_s=vote_timeout,
            actor="bench",
            reason="benchmark",
        ),
    )
    decided = time.perf_counter() - started
    if reply.outcome != "commit":
        bad = [f"{v.node}: {v.vote} {v.reason}" for v in reply.votes if v.vote != "yes"][:5]
        raise RuntimeError(f"switch of v{version} aborted: {bad}")
    with anyio.fail_after(vote_timeout + 30.0):
        await wait.done.wait()
    return wait.at - started, decided


async def timed_publish(
    bus: Bus, watch: Watch, namespace: str, version: int, nodes: int, timeout: float
) -> float:
    """Seconds from publishing a change to every agent having applied it (the distributor
    rolls it out all at once). ``version`` is the number the store will give it; its start is
    kept in ``watch.started[version]`` for the phase breakdown."""
    wait = watch.expect_applied(version, nodes)
    change_id = secrets.token_hex(8)
    created = watch.expect_created(change_id)
    started = watch.started[version] = time.perf_counter()
    await publish_change(bus, namespace, change_id, config_bytes(version))
    with anyio.fail_after(timeout):
        await created.wait()
        ev = watch.created[change_id]
        if not isinstance(ev, VersionCreated) or ev.version != version:
            raise RuntimeError(f"expected version {version} to be stored, got {ev!r}")
        await wait.done.wait()
        # Untimed: the rollout's bookkeeping after the apply (the wave record, the nodes'
        # targets, the promotion) ends before the next change is published, as it would
        # between two CI runs; a change published meanwhile supersedes the rollout instead,
        # a different path (the throughput benchmark publishes back to back).
        await watch.rollout_end(version).wait()
    return wait.at - started


# -- one fleet size -------------------------------------------------------------------------------


@dataclass
class SizeResult:
    size: Size
    layout: str
    switch_s: list[float]
    decided_s: list[float]
    floor_s: list[float]
    e2e_s: list[float]
    e2e_floor_s: list[float]
    store: str
    phases_ms: list[dict[str, float]] = field(default_factory=list)
    e2e_phases_ms: list[dict[str, float]] = field(default_factory=list)
    # Mean CPU ms per switch (agents, coordinator, nats-server) and per baseline floor.
    cpu_ms: dict[str, float] = field(default_factory=dict)
    floor_cpu_ms: dict[str, float] = field(default_factory=dict)


class Profiler:
    """``CONFBUS_BENCH_PROFILE=DIR``: py-spy (``pip install py-spy``; not a dependency)
    samples the coordinator and every agent host during the timed switches of the size in
    ``CONFBUS_BENCH_PROFILE_SIZE`` (default 100), writing folded stacks to DIR
    (``CONFBUS_BENCH_PROFILE_RATE`` samples a second, default 100;
    ``CONFBUS_BENCH_PROFILE_IDLE``: 1 wall clock, 0 on-CPU, ``gil`` the GIL's holder). With
    ``CONFBUS_BENCH_PROFILE_TOOL=perf``, ``perf record -g`` of the agent hosts instead (the
    kernel's side: system calls, the scheduler, the GIL's futexes), to DIR/perf.data."""

    def __init__(self, out: Path, pids: dict[str, int]) -> None:
        self.out = out
        self.pids = pids
        self.procs: list[subprocess.Popen[bytes]] = []

    @classmethod
    def wanted(cls, agents: int) -> Path | None:
        out = os.environ.get("CONFBUS_BENCH_PROFILE")
        size = int(os.environ.get("CONFBUS_BENCH_PROFILE_SIZE", "100"))
        return Path(out) if out and agents == size else None

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for argv in self._commands():
            self.procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        time.sleep(1.0)  # the profilers attach (a one-off tool run, not a measured step)

    def _commands(self) -> list[list[str]]:
        if os.environ.get("CONFBUS_BENCH_PROFILE_TOOL") == "perf":
            # Kernel and native stacks of the agent hosts (system calls, the scheduler, the
            # GIL's futexes), which py-spy does not see.
            hosts = ",".join(str(pid) for name, pid in self.pids.items() if name != "coordinator")
            perf = ["perf", "record", "-g", "-F", "999", "-p", hosts]
            return [[*perf, "-o", str(self.out / "perf.data")]]
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        commands = []
        rate = os.environ.get("CONFBUS_BENCH_PROFILE_RATE", "100")
        mode = os.environ.get("CONFBUS_BENCH_PROFILE_IDLE", "1")
        for name, pid in self.pids.items():
            # Non-blocking (100 Hz by default): sampling must not stall ~40 threads per host.
            argv = [spy, "record", "--pid", str(pid), "--rate", rate, "--format", "raw"]
            argv += ["--nonblocking", "--threads"]
            if mode == "1":
                argv.append("--idle")  # wall clock: waits (fsync, queues) count too
            elif mode == "gil":
                argv.append("--gil")  # only the thread holding the GIL: the Python CPU
            commands.append([*argv, "--output", str(self.out / f"{name}.folded")])
        return commands

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


async def run_size(ctx: Context, size: Size) -> SizeResult:
    n = size.agents
    nats = ctx.start_nats(f"nats-{n}")
    root = ctx.path(f"fleet-{n}")
    namespace = f"sw{n}"
    nodes = [f"n{i:04d}" for i in range(n)]
    specs = [AgentSpec(node, (namespace,)) for node in nodes]
    bus = await open_bus(nats.url, f"bench-switch-{n}")
    stub: StubStore | None = None
    try:
        await ensure_bench_stream(bus)
        watch = await Watch(bus, namespace, phases=True).start()
        real_store = version_store_available()
        if real_store:
            ctx.version_store(nats.url, str(n))
        else:
            stub = await StubStore(bus, namespace).start()
        coordinator = ctx.service("coordinator", nats.url, name=f"coordinator-{n}")
        heartbeat = 0.5 if ctx.smoke else 2.0  # the distributor waits 1.5 intervals to warm up
        fleet = AgentFleet(
            ctx,
            nats.url,
            root,
            specs,
            processes=size.processes,
            connections=size.connections,
            heartbeat_interval=heartbeat,
            tag=f"agents-{n}",
        ).start()
        subs = SubscriberFleet(
            ctx,
            nats.url,
            ctx.path(f"floor-{n}"),
            specs,
            processes=size.processes,
            connections=size.connections,
            tag=f"subscribers-{n}",
        ).start()
        await wait_heartbeats(bus, nodes, timeout=60.0 + n * 0.05)

        version = 0

        async def next_version() -> int:
            nonlocal version
            if stub is not None:
                version += 1
                return await stub.add(version, config_bytes(version))
            version = await store_version(bus, watch, namespace, config_bytes(version + 1))
            return version

        # -- publish → all applied, through version-store and distributor ----------------------
        e2e: list[float] = []
        e2e_floor: list[float] = []
        e2e_phases: list[dict[str, float]] = []
        dist = None
        if real_store and size.e2e_iterations:
            dist = ctx.try_service(
                "distributor",
                nats.url,
                "--heartbeat-interval",
                str(heartbeat),
                name=f"distributor-{n}",
            )
        if dist is not None:
            timeout = size.vote_timeout_s + 60.0
            for i in range(size.e2e_iterations + 1):  # the first warms the distributor up
                floor = await switch_floor(bus, namespace, n, config_bytes(version + 1))
                took = await timed_publish(bus, watch, namespace, version + 1, n, timeout)
                version += 1
                if i:
                    e2e.append(took)
                    e2e_floor.append(floor)
                    if (b := watch.publish_breakdown(version)) is not None:
                        e2e_phases.append(b)
            dist.stop()

        # -- switch request → all applied -----------------------------------------------------
        switch: list[float] = []
        decided: list[float] = []
        floors: list[float] = []
        phases: list[dict[str, float]] = []
        assert nats.proc is not None
        cpu = CpuMeter(
            {
                "agents": fleet.pids(),
                "coordinator": [coordinator.pid],
                "nats-server": [nats.proc.pid],
            }
        )
        floor_cpu = CpuMeter(
            {"subscribers": [p.pid for p in subs.procs], "nats-server": [nats.proc.pid]}
        )
        profiler = None
        if (out := Profiler.wanted(n)) is not None:
            pids = {"coordinator": coordinator.pid}
            pids |= {f"agent-host-{i}": pid for i, pid in enumerate(fleet.pids())}
            profiler = Profiler(out, pids)
        for i in range(size.iterations + 1):  # the first is a warm-up (leadership, caches)
            v = await next_version()
            with floor_cpu.span(counted=i > 0):
                floor = await switch_floor(bus, namespace, n, config_bytes(v))
            if profiler is not None and i == 1:
                profiler.start()
            with cpu.span(counted=i > 0):
                took, dec = await timed_switch(bus, watch, namespace, v, nodes, size.vote_timeout_s)
            if i:
                switch.append(took)
                decided.append(dec)
                floors.append(floor)
                if (b := watch.breakdown(v)) is not None:
                    phases.append(b)
        if profiler is not None:
            profiler.stop()
        layout = fleet.describe()
        subs.stop()
        fleet.stop()
        return SizeResult(
            size,
            layout,
            switch,
            decided,
            floors,
            e2e,
            e2e_floor,
            "version-store process (SQLite)" if real_store else "in-process stub of store.get",
            phases,
            cpu_ms=cpu.per_span_ms(),
            floor_cpu_ms=floor_cpu.per_span_ms(),
            e2e_phases_ms=e2e_phases,
        )
    finally:
        if stub is not None:
            await stub.stop()
        await bus.close()


def figures(results: list[SizeResult]) -> list[Figure]:
    out = []
    for r in results:
        n = r.size.agents
        ms = [x * 1000 for x in r.switch_s]
        floor = stats([x * 1000 for x in r.floor_s])
        params: dict[str, Any] = {
            "agents": n,
            "layout": r.layout,
            "store": r.store,
            "decision_ms": _stats_dict([x * 1000 for x in r.decided_s]),
            "config_bytes": len(config_bytes(1)),
            # Median ms from the request to each step, as the benchmark saw it on the bus.
            "phases_median_ms": _phase_medians(r.phases_ms, PHASES),
            "cpu_ms_per_switch": r.cpu_ms,
            "cpu_ms_per_baseline": r.floor_cpu_ms,
        }
        f = Figure(
            benchmark=BENCH,
            name=f"switch request → all applied, {n} agents",
            unit="ms",
            value=stats(ms),
            baseline=floor,
            baseline_name="JS publish + 2 fan-out rounds",
            params=params,
            notes=f"{r.layout}; median ms after the request: "
            + _phases_note(params["phases_median_ms"])
            + "; CPU ms per switch (2 cores: 2 ms per ms of wall time): "
            + _cpu_note(r.cpu_ms)
            + "; per baseline: "
            + _cpu_note(r.floor_cpu_ms),
        ).target_ratio(3.0)
        if n == 100:
            f.target_median(100.0)
        if n == 1000:
            f.target_median(1000.0)
        out.append(f)
        if r.e2e_s:
            steps = _phase_medians(r.e2e_phases_ms, ("version.created", *PHASES))
            out.append(
                Figure(
                    benchmark=BENCH,
                    name=f"publish → all applied, {n} agents",
                    unit="ms",
                    value=stats([x * 1000 for x in r.e2e_s]),
                    baseline=stats([x * 1000 for x in r.e2e_floor_s]),
                    baseline_name="JS publish + 2 fan-out rounds",
                    params={
                        "agents": n,
                        "layout": r.layout,
                        "store": r.store,
                        "phases_median_ms": steps,
                    },
                    notes="version-store + distributor + coordinator processes; includes the "
                    "SQLite commit, the version event and the rollout planning; median ms after "
                    "the publish: " + _phases_note(steps),
                ).target_ratio(3.0)
            )
    return out


def _phases_note(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.0f}" for name, ms in phases.items())


def _phase_medians(samples: list[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    """Median ms to each step over the samples that saw every step ({} if none did)."""
    if not samples:
        return {}
    return {name: round(stats([p[name] for p in samples]).median, 1) for name in names}


def _cpu_note(cpu_ms: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.0f}" for name, ms in cpu_ms.items())


def _stats_dict(samples: list[float]) -> dict[str, float]:
    s = stats(samples)
    return {"n": s.n, "median": s.median, "p90": s.p90, "p99": s.p99, "max": s.max}


def chosen_sizes(smoke: bool) -> tuple[Size, ...]:
    """All sizes, or those in ``CONFBUS_BENCH_SWITCH_SIZES`` (e.g. ``10,100``) for ad-hoc runs."""
    if smoke:
        return SMOKE
    wanted = os.environ.get("CONFBUS_BENCH_SWITCH_SIZES", "")
    if not wanted:
        return FULL
    keep = {int(x) for x in wanted.split(",") if x.strip()}
    sizes = tuple(s for s in FULL if s.agents in keep)
    # CONFBUS_BENCH_AGENT_PROCESSES=N: another layout of the shared agent hosts (ad hoc).
    if processes := int(os.environ.get("CONFBUS_BENCH_AGENT_PROCESSES", "0")):
        sizes = tuple(dataclasses.replace(s, processes=processes) for s in sizes)
    return sizes


async def run(ctx: Context) -> list[Figure]:
    results = []
    for size in chosen_sizes(ctx.smoke):
        results.append(await run_size(ctx, size))
        (ctx.workdir / f"switch-{size.agents}.json").write_text(
            json.dumps({"switch_s": results[-1].switch_s, "floor_s": results[-1].floor_s})
        )
    return figures(results)
