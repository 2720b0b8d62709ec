"""A whole confbus on loopback for end-to-end tests: a real nats-server, the services as
real processes, and agents as real processes writing real files; the stack's own readers (its
events, its agents' files, its fleet as the distributor sees it) wait with deadlines."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

from confbus.client import Client
from confbus.procs.agent import agent_argv
from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc, start_together, stop_together
from confbus.runtime.http import http_get
from confbus.schemas.events import AnyEvent
from tests.cli.procs import arun_confbus
from tests.e2e import helpers
from tests.helpers import eventually

# The services a stack runs by default (started together; each prints a JSON ready line).
DEFAULT_SERVICES = ("version_store", "coordinator", "distributor")


class AgentOptions(TypedDict, total=False):
    env: dict[str, str] | None
    live_dir: Path | None
    state_dir: Path | None
    key: str | None


@dataclass
class Agent:
    node: str
    files: dict[str, Path]  # namespace -> live file
    proc: Proc

    def read(self, namespace: str) -> bytes | None:
        path = self.files[namespace]
        return path.read_bytes() if path.exists() else None


@dataclass
class Stack:
    root: Path
    nats: NatsServer
    services: dict[str, Proc] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.nats.url

    @property
    def logs(self) -> Path:
        path = self.root / "logs"
        path.mkdir(exist_ok=True)
        return path

    def service_args(self, pkg: str) -> list[str]:
        if pkg == "version_store":
            return ["--store", f"sqlite:///{self.root / 'store.db'}"]
        if pkg == "distributor":
            return ["--heartbeat-interval", "0.5"]
        return []

    def start_service(
        self,
        pkg: str,
        *extra: str,
        env: dict[str, str] | None = None,
        name: str | None = None,
        wait_ready: bool = True,
    ) -> Proc:
        return self.service(pkg, *extra, env=env, name=name).start(wait_ready=wait_ready)

    def service(
        self, pkg: str, *extra: str, env: dict[str, str] | None = None, name: str | None = None
    ) -> Proc:
        """Service ``pkg`` of the stack, to start."""
        proc = Proc.service(
            pkg, self.url, self.logs, *self.service_args(pkg), *extra, env=env, name=name
        )
        self.services[name or pkg] = proc
        return proc

    def start_agent(
        self,
        node: str,
        namespaces: Sequence[str] = ("web",),
        *extra: str,
        wait_ready: bool = True,
        **options: Unpack[AgentOptions],
    ) -> Agent:
        """The agent of ``node`` (see ``agent``), started."""
        agent = self.agent(node, namespaces, *extra, **options)
        agent.proc.start(wait_ready)
        return agent

    def start_agents(
        self, nodes: Sequence[str], namespaces: Sequence[str] = ("web",), *extra: str
    ) -> list[Agent]:
        """An agent on each of ``nodes``, started together; returns once each is ready."""
        agents = [self.agent(node, namespaces, *extra) for node in nodes]
        start_together([a.proc for a in agents])
        return agents

    def agent(
        self,
        node: str,
        namespaces: Sequence[str] = ("web",),
        *extra: str,
        env: dict[str, str] | None = None,
        live_dir: Path | None = None,
        state_dir: Path | None = None,
        key: str | None = None,
    ) -> Agent:
        """The agent of ``node``, to start. ``key``: the name it goes by in ``agents`` and its
        log (default: the node id)."""
        live = live_dir or (self.root / "nodes" / node / "etc")
        live.mkdir(parents=True, exist_ok=True)
        files = {ns: live / f"{ns}.conf" for ns in namespaces}
        state = state_dir or (self.root / "nodes" / node / "state")
        argv = agent_argv(self.url, node, files, state, *extra, heartbeat_interval=0.5)
        name = key or node
        agent = Agent(node, files, Proc(f"agent-{name}", argv, self.logs, env))
        self.agents[name] = agent
        return agent

    async def metric(self, service: str, series: str) -> float:
        """``series`` (its name and labels, as exposed) on ``service``'s ``/metrics``; 0.0 while
        it is not there."""
        ready = self.services[service].ready
        assert ready is not None, f"{service} is not ready"
        _, body = await http_get("127.0.0.1", ready["http_port"], "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def client(self) -> Client:
        """A client of the stack, to open with ``async with``."""
        return Client(self.url, name="test")

    async def confbus(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``confbus ARGS`` against the stack, as a real process, to its end."""
        return await arun_confbus("--nats-url", self.url, *args, timeout=120)

    async def events(self, namespace: str = "web") -> list[AnyEvent]:
        async with self.client() as client:
            return await helpers.events(client.bus, namespace)

    async def files_hold(
        self, nodes: Sequence[str], data: bytes, timeout: float = 20.0, namespace: str = "web"
    ) -> None:
        """Wait until the file of ``namespace`` on each agent of ``nodes`` holds ``data``."""

        async def probe() -> bool:
            return all(self.agents[n].read(namespace) == data for n in nodes)

        await eventually(probe, timeout=timeout, every=0.1, what=f"files of {list(nodes)}")

    async def live(self, n: int, timeout: float = 20.0, namespace: str = "web") -> None:
        """Wait until the distributor sees ``n`` live agents of ``namespace``."""
        async with self.client() as client:

            async def probe() -> bool:
                try:
                    st = await client.fleet_status(namespace)
                except Exception:
                    return False
                return sum(1 for x in st.nodes if x.liveness == "live") >= n

            await eventually(probe, timeout=timeout, every=0.2, what=f"{n} live agents")

    def restart_agent(self, node: str, env: dict[str, str] | None = None) -> Agent:
        agent = self.agents[node]
        agent.proc.stop()
        if env is not None:
            agent.proc.env.update(env)
        agent.proc.start()
        return agent

    def stop(self) -> None:
        """The agents (together), then the services (together), then NATS."""
        stop_together([agent.proc for agent in self.agents.values()])
        stop_together(list(reversed(self.services.values())))
        self.nats.stop()


def start_stack(root: Path, services: Sequence[str] = DEFAULT_SERVICES) -> Stack:
    """NATS, then ``services`` started together (each provisions the streams it needs, at
    once with the others: ``provision`` is idempotent and safe to run concurrently)."""
    nats = NatsServer(data_dir=root / "nats").start()
    stack = Stack(root, nats)
    try:
        start_together([stack.service(pkg) for pkg in services])
    except BaseException:
        stack.stop()
        raise
    return stack


def stack_fixture(
    root: Path,
    services: Sequence[str] = DEFAULT_SERVICES,
    *,
    agents: Sequence[str] = (),
    namespaces: Sequence[str] = ("web",),
    agent_args: Sequence[str] = (),
) -> Iterator[Stack]:
    """A fixture's body: ``services``, then an agent on each node of ``agents`` following
    ``namespaces`` (with ``agent_args``); all stopped when the test is done."""
    stack = start_stack(root, services)
    try:
        stack.start_agents(agents, namespaces, *agent_args)
        yield stack
    finally:
        stack.stop()
