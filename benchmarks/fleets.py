"""Many real agents for a benchmark: one ``confbus agent`` process per node, or hosts of many
``NodeAgent``s in one process on a few NATS connections (``AgentFleet``).

``python -m benchmarks.fleets agents --plan FILE`` is the agent host: it runs many real
``NodeAgent``s in one process, each with its own live file and state directory (every write
fsynced, as in production), and answers ``bench.hosts.stats`` with its counters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import KW_ONLY, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from benchmarks.processes import Context, rss_kb
from confbus.procs.agent import agent_argv
from confbus.procs.proc import Proc, python_module
from confbus.runtime.bus import Bus, connect

if TYPE_CHECKING:
    from confbus.agent.node import NodeAgent


@dataclass(frozen=True)
class AgentSpec:
    node: str
    namespaces: tuple[str, ...]


def node_dirs(root: Path, node: str) -> tuple[Path, Path]:
    """(live file directory, state directory) of a benchmark node."""
    return root / "nodes" / node / "etc", root / "nodes" / node / "state"


def live_file(root: Path, node: str, namespace: str) -> Path:
    return node_dirs(root, node)[0] / f"{namespace}.conf"


def split(items: Sequence[AgentSpec], parts: int) -> list[list[AgentSpec]]:
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


def start_hosts(
    ctx: Context,
    host: tuple[str, str],
    name: str,
    root: Path,
    groups: Sequence[Sequence[AgentSpec]],
    plan: dict[str, Any],
) -> list[Proc]:
    """One process per group, ``python -m MODULE COMMAND --plan FILE`` (``host``), its plan
    file ``plan`` plus the root and its group's agents; started, not yet waited for."""
    module, command = host
    procs = []
    for i, group in enumerate(groups):
        path = root / f"{name}-plan-{i}.json"
        agents = [{"node": a.node, "namespaces": list(a.namespaces)} for a in group]
        path.write_text(json.dumps({**plan, "root": str(root), "agents": agents}))
        argv = python_module(module, command, "--plan", str(path))
        procs.append(ctx.proc(f"{name}-{i}", argv, wait_ready=False))
    return procs


@asynccontextmanager
async def host_buses(
    plan: dict[str, Any], name: str, *, no_echo: bool = False
) -> AsyncIterator[list[Bus]]:
    """A host process's ``connections`` NATS connections (its plan's), closed when it ends,
    even when cancelled; ``no_echo`` as ``confbus agent`` connects (``connect``)."""
    buses = [
        await connect(plan["nats_url"], name=f"{name}-{os.getpid()}-{i}", no_echo=no_echo)
        for i in range(max(1, int(plan["connections"])))
    ]
    try:
        yield buses
    finally:
        with anyio.CancelScope(shield=True):
            for b in buses:
                await b.close()


async def announce_ready(buses: Sequence[Bus], service: str, **facts: int) -> None:
    """Once every connection's subscriptions are in place at the server, the JSON ready line
    the parent's ``Proc`` waits for."""
    for b in buses:
        await b.nc.flush()
    ready = {"event": "ready", "service": service, **facts, "pid": os.getpid()}
    print(json.dumps(ready), flush=True)


def run_host(host: Callable[[dict[str, Any]], Awaitable[None]], plan_file: Path) -> int:
    """A host process's body: ``host`` on its plan until SIGINT (or its own end)."""
    plan = json.loads(plan_file.read_text())
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(host, plan, backend="asyncio")
    return 0


@dataclass(eq=False)
class Fleet:
    """``agents`` spread over ``processes`` processes, ``connections`` NATS connections each:
    the layout both the agents and their baseline stand-ins run in."""

    default_tag: ClassVar[str] = "agents"

    ctx: Context
    nats_url: str
    root: Path
    agents: Sequence[AgentSpec]
    _: KW_ONLY
    processes: int
    connections: int = 2
    tag: str = ""
    procs: list[Proc] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.agents = list(self.agents)
        self.processes = max(1, min(self.processes, len(self.agents)))
        self.tag = self.tag or self.default_tag

    def rss_kb(self) -> list[int]:
        return [r for p in self.procs if (r := rss_kb(p.pid)) is not None]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:  # all told at once, then each waited for
            if p.popen is not None and p.alive():
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.stop(timeout=10.0)
        self.procs = []


@dataclass(eq=False, kw_only=True)
class AgentFleet(Fleet):
    """Real agents as real processes: one ``confbus agent`` per node when ``processes`` equals
    the number of nodes, else hosts of many ``NodeAgent``s on ``connections`` connections each."""

    heartbeat_interval: float = 2.0
    trust: Path | None = None  # every agent's trust roots file (confbus agent --trust)

    @property
    def one_per_process(self) -> bool:
        return self.processes == len(self.agents)

    def describe(self) -> str:
        if self.one_per_process:
            return f"{len(self.agents)} `confbus agent` processes, 1 agent and 1 connection each"
        per = math.ceil(len(self.agents) / self.processes)
        return (
            f"{self.processes} processes × ≤{per} agents, "
            f"{self.connections} NATS connections per process"
        )

    def start(self, timeout: float = 120.0) -> AgentFleet:
        pending: list[Proc] = []
        if self.one_per_process:
            for spec in self.agents:
                etc, state = node_dirs(self.root, spec.node)
                etc.mkdir(parents=True, exist_ok=True)
                files = {ns: live_file(self.root, spec.node, ns) for ns in spec.namespaces}
                trust = () if self.trust is None else ("--trust", str(self.trust))
                argv = agent_argv(
                    self.nats_url,
                    spec.node,
                    files,
                    state,
                    *trust,
                    heartbeat_interval=self.heartbeat_interval,
                )
                pending.append(self.ctx.proc(f"{self.tag}-{spec.node}", argv, wait_ready=False))
        else:
            plan = {
                "nats_url": self.nats_url,
                "connections": self.connections,
                "heartbeat_interval": self.heartbeat_interval,
                "trust": None if self.trust is None else str(self.trust),
            }
            groups = split(self.agents, self.processes)
            host = ("benchmarks.fleets", "agents")
            pending = start_hosts(self.ctx, host, f"{self.tag}-host", self.root, groups, plan)
        for p in pending:
            # The agent CLI prints its ready line before joining the bus; the host after.
            p.wait_ready(timeout)
        # `confbus agent` says ready before it joins the bus: callers wait for every node's
        # first heartbeat (``wait_heartbeats``) rather than guess a sleep.
        self.procs = pending
        return self


async def wait_heartbeats(bus: Bus, nodes: Sequence[str], timeout: float = 60.0) -> None:
    """Wait until every node has heartbeat once (its agent is on the bus and subscribed)."""
    from confbus.schemas import subjects

    waiting = set(nodes)
    done = anyio.Event()

    async def on_hb(msg: Any) -> None:
        node = msg.subject.split(".")[2]
        waiting.discard(node)
        if not waiting:
            done.set()

    sub = await bus.nc.subscribe(subjects.HEARTBEATS_ALL, cb=on_hb)
    try:
        with anyio.fail_after(timeout):
            await done.wait()
    finally:
        await sub.unsubscribe()


# -- the agent host process -----------------------------------------------------------------------

HOST_STATS = "bench.hosts.stats"
_fsyncs = [0]
_fsyncs_lock = threading.Lock()


def _count_fsyncs() -> None:
    """Count this process's fsyncs (the agents call ``os.fsync`` through the module, so a
    wrapper sees every one). Costs a lock per fsync: nothing beside the fsync itself."""
    real = os.fsync

    def counting(fd: Any) -> None:
        with _fsyncs_lock:
            _fsyncs[0] += 1
        real(fd)

    os.fsync = counting


async def gather_host_stats(bus: Bus, hosts: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Ask every agent host for its counters (fsyncs so far, agents, RSS)."""
    import secrets

    inbox = f"_INBOX.bench.{secrets.token_hex(8)}"
    replies: list[dict[str, Any]] = []
    done = anyio.Event()

    async def on_reply(msg: Any) -> None:
        replies.append(json.loads(msg.data))
        if len(replies) >= hosts:
            done.set()

    sub = await bus.nc.subscribe(inbox, cb=on_reply)
    try:
        await bus.nc.publish(HOST_STATS, b"", reply=inbox)
        with anyio.move_on_after(timeout):
            await done.wait()
    finally:
        await sub.unsubscribe()
    return replies


def _experiment(name: str) -> None:
    """``CONFBUS_BENCH_EXPERIMENT``: measure what a proposed agent change would buy, without
    changing the agent (for the profile write-up; never set in a benchmark run).

    ``no-seq-save``: the resume sequence is not written after each prepare and decision —
    the upper bound of folding it into the PREPARED / applied state writes.
    ``unsynced-staged``: the staged file is written without its two fsyncs (file, directory).
    ``inplace-staged``: the staged file is written at its name with one fsync (no directory
    fsync).
    ``no-history``: no history copy after an apply (an upper bound of making it cheaper)."""
    from confbus.agent.disk import NamespaceDisk
    from confbus.agent.staging import StagedFiles

    if name == "no-seq-save":

        def keep_in_memory(self: Any, seq: int) -> None:
            return None

        NamespaceDisk.save_stream_seq = keep_in_memory  # type: ignore[method-assign]
    elif name == "unsynced-staged":
        # The upper bound of moving the staged file's two fsyncs (file, directory) off the
        # vote's path, e.g. into a PREPARED record that carries the bytes.
        def write_unsynced(self: StagedFiles, path: Path, content: bytes) -> None:
            path.write_bytes(content)

        StagedFiles.write = write_unsynced  # type: ignore[method-assign]
    elif name == "inplace-staged":
        from benchmarks.baselines import stage_file  # the baseline's own prepare I/O

        def write_in_place(self: StagedFiles, path: Path, content: bytes) -> None:
            stage_file(path, content)

        StagedFiles.write = write_in_place  # type: ignore[method-assign]
    elif name == "no-history":

        def remember_nothing(
            self: Any,
            version: int,
            data: bytes,
            *,
            durable: bool = True,
            reuse: int | None = None,
        ) -> None:
            return None

        NamespaceDisk._remember = remember_nothing  # type: ignore[method-assign]
    elif name:
        raise SystemExit(f"unknown experiment {name!r}")


async def _host(plan: dict[str, Any]) -> None:
    from confbus.agent.node import Binding, NodeAgent
    from confbus.agent.trust import Trust

    _experiment(os.environ.get("CONFBUS_BENCH_EXPERIMENT", ""))

    root = Path(plan["root"])
    hb = float(plan["heartbeat_interval"])
    trust = Trust.load(Path(plan["trust"]), []) if plan.get("trust") else Trust()
    agents = []
    for a in plan["agents"]:
        etc, state = node_dirs(root, a["node"])
        etc.mkdir(parents=True, exist_ok=True)
        agents.append(
            NodeAgent(
                node=a["node"],
                bindings=[
                    Binding(ns, str(live_file(root, a["node"], ns))) for ns in a["namespaces"]
                ],
                state_dir=str(state),
                heartbeat_interval_s=hb,
                trust=trust,
            )
        )
    async with host_buses(plan, "bench-agents", no_echo=True) as buses:
        await _run_agents(agents, buses, hb)


async def _run_agents(agents: list[NodeAgent], buses: list[Bus], hb: float) -> None:
    """Every agent on its share of ``buses``, answering host stats, until SIGINT/SIGTERM."""
    from confbus.agent.host import run_agents
    from confbus.agent.txnfeed import TxnReader

    async def on_stats(msg: Any) -> None:
        with _fsyncs_lock:
            count = _fsyncs[0]
        info = {
            "pid": os.getpid(),
            "agents": len(agents),
            "fsyncs": count,
            "rss_kb": rss_kb(os.getpid()),
        }
        await buses[0].nc.publish(msg.reply, json.dumps(info).encode())

    await buses[0].nc.subscribe(HOST_STATS, cb=on_stats)
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        # Real fleets do not heartbeat in lock-step: spread the starts of a big host over
        # one interval (a handful of agents in lock-step costs nothing).
        spread = hb if len(agents) > 20 else 0.0
        txn = TxnReader(buses[0], tg)  # one CFG_TXN consumer per namespace for the host
        async with anyio.create_task_group() as joining:
            for i, bus in enumerate(buses):
                share = agents[i :: len(buses)]
                joining.start_soon(partial(run_agents, bus, share, tg, spread_s=spread, txn=txn))
        await announce_ready(buses, "agent-host", agents=len(agents), connections=len(buses))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleets")
    sub = parser.add_subparsers(dest="cmd", required=True)
    host = sub.add_parser("agents", help="run many NodeAgents in this process (a plan file)")
    host.add_argument("--plan", required=True, type=Path)
    host.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    from confbus.runtime.log import setup_logging

    setup_logging("agent", args.log_level)
    _count_fsyncs()
    return run_host(_host, args.plan)


if __name__ == "__main__":
    sys.exit(main())
