"""``confbus up --ha`` as a real process for tests, and what the tests ask of it: which process
leads what (stream leaders, the etcd leader, lease holders), pids to kill, agents to start.
Started with ``--secure``, the same stack hands out its users' credentials and its CA: every
connection a test makes then logs in as a user of the role it plays, over TLS.

Nothing here sleeps to synchronise: waits read lines as they are written, or poll with a
deadline.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import nats.errors
import pytest

from confbus.client import Client
from confbus.procs.agent import agent_argv
from confbus.procs.etcd import etcd_binary, leader_name
from confbus.procs.proc import Proc, stop_together
from confbus.procs.spawn import alive
from confbus.procs.tls import TlsFiles
from confbus.runtime.bus import Bus, connect
from confbus.runtime.errors import ConfbusError
from confbus.schemas import subjects
from confbus.schemas.health import HealthSample
from confbus.schemas.state import LeaseRecord, decode_lease, lease_key, replica_key
from confbus.schemas.streams import CFG_STATE
from tests.cli.procs import lock_is_free, start_confbus
from tests.helpers import stopped_after

READY = re.compile(
    r"^confbus ready nats=(?P<nats>\S+) data=(?P<data>\S+) services=(?P<services>\S+)"
)
TLS_CA = re.compile(r" tls-ca=(\S+)")
READY_TIMEOUT = 120.0  # 6 servers and 10 services starting on a loaded 2-core CI box

needs_etcd = pytest.mark.skipif(
    etcd_binary() is None, reason="etcd is not installed (apt-get install -y etcd-server)"
)


@dataclass
class Agent:
    node: str
    path: Path
    proc: Proc

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None


@dataclass
class HaStack:
    proc: Proc
    data_dir: Path
    line: str = ""
    agents: dict[str, Agent] = field(default_factory=dict)

    @property
    def url(self) -> str:
        m = READY.match(self.line)
        assert m, self.line
        return m.group("nats")

    @property
    def urls(self) -> list[str]:
        return self.url.split(",")

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.data_dir / "stack.json").read_text())
        return state

    @property
    def store_url(self) -> str:
        return str(self.state()["cluster"]["etcd"])

    # -- with --secure: who connects as whom ---------------------------------------------------

    @property
    def tls_ca(self) -> str | None:
        """The stack's CA (``tls-ca=`` of the ready line); None when it is not secured."""
        m = TLS_CA.search(self.line)
        return m.group(1) if m else None

    @property
    def etcd_tls(self) -> TlsFiles | None:
        """The version-store's certificate for etcd: what a test reads etcd with."""
        tls = self.state()["cluster"].get("tls")
        if tls is None:
            return None
        return TlsFiles(Path(tls["ca"]), Path(tls["etcd_cert"]), Path(tls["etcd_key"]))

    def env(self, user: str) -> dict[str, str]:
        """``user``'s ``CONFBUS_*`` environment: its ``<user>.env`` and the CA ({} if open)."""
        if self.tls_ca is None:
            return {}
        env = {"CONFBUS_TLS_CA": self.tls_ca}
        for line in (self.data_dir / "secrets" / f"{user}.env").read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value.strip("'")
        return env

    async def bus(self, user: str, name: str) -> Bus:
        env = self.env(user)
        return await connect(
            self.url,
            name=name,
            user=env.get("CONFBUS_NATS_USER"),
            password=env.get("CONFBUS_NATS_PASSWORD"),
            tls_ca=self.tls_ca,
        )

    def client(self, user: str, name: str) -> Client:
        env = self.env(user)
        return Client(
            self.url,
            name=name,
            user=env.get("CONFBUS_NATS_USER"),
            password=env.get("CONFBUS_NATS_PASSWORD"),
            tls_ca=self.tls_ca,
        )

    def pid(self, name: str) -> int:
        """``nats-2``, ``etcd-e1`` or a service replica such as ``coordinator-1``."""
        state = self.state()
        pids = state["cluster"]["pids"]
        pid = pids[name] if name in pids else state["services"][name]["pid"]
        assert isinstance(pid, int), (name, state)
        return pid

    def all_pids(self) -> list[int]:
        try:
            state = self.state()
        except (OSError, ValueError):
            return []
        pids = list(state.get("cluster", {}).get("pids", {}).values())
        pids += [s.get("pid") for s in state["services"].values()]
        return [p for p in pids if isinstance(p, int)]

    def start_agent(self, node: str, namespace: str, root: Path) -> Agent:
        live = root / node / "etc"
        live.mkdir(parents=True, exist_ok=True)
        path = live / f"{namespace}.json"
        state = root / node / "state"
        argv = agent_argv(self.url, node, {namespace: path}, state, heartbeat_interval=0.5)
        logs = root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        proc = Proc(f"agent-{node}", argv, logs, env=self.env(f"agent-{node}")).start()
        agent = Agent(node, path, proc)
        self.agents[node] = agent
        return agent

    def stop(self, timeout: float = 60.0) -> int | None:
        stop_together([agent.proc for agent in self.agents.values()])
        return self.proc.stop(signal.SIGTERM, timeout=timeout)

    def cleanup(self) -> None:
        for agent in self.agents.values():
            agent.proc.kill()
        self.proc.stop(signal.SIGTERM, timeout=60)  # then SIGKILL; what it started dies with it

    def assert_all_gone(self, pids: Sequence[int]) -> None:
        assert not [p for p in pids if alive(p)], "processes outlived confbus up"
        assert lock_is_free(self.data_dir / "confbus.lock")
        assert not (self.data_dir / "stack.json").exists()


def start_ha(data_dir: Path, *args: str, nats_port: int = 0) -> HaStack:
    """``confbus up --ha`` on ``data_dir``, once it says it is ready."""
    return start_up(data_dir, "--ha", *args, nats_port=nats_port)


def start_up(data_dir: Path, *args: str, nats_port: int = 0) -> HaStack:
    """``confbus up`` on ``data_dir`` (the cluster with ``--ha`` among ``args``), once it says
    it is ready."""
    stack = _start_up(data_dir, *args, nats_port=nats_port)
    try:
        stack.line = stack.proc.wait_line("confbus ready", READY_TIMEOUT)
    except BaseException:
        stack.cleanup()
        raise
    return stack


def start_ha_in_background(data_dir: Path, *args: str, nats_port: int = 0) -> HaStack:
    return _start_up(data_dir, "--ha", *args, nats_port=nats_port)


def _start_up(data_dir: Path, *args: str, nats_port: int) -> HaStack:
    argv = ["up", "--data-dir", str(data_dir), "--nats-port", str(nats_port), *args]
    return HaStack(start_confbus(*argv), data_dir.resolve())


def ha_fixture(data_dir: Path) -> Iterator[HaStack]:
    yield from stopped_after(start_ha(data_dir), HaStack.cleanup)


# -- who leads what ------------------------------------------------------------------------------


async def stream_leader(bus: Bus, stream: str) -> str:
    info = await bus.js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader, info
    return str(info.cluster.leader)


def etcd_leader(store_url: str, follower: bool = False, tls: TlsFiles | None = None) -> str:
    """The name (e1..e3) of the etcd leader (or of a follower)."""
    name = leader_name(store_url.removeprefix("etcd://").split(","), follower, tls)
    assert name is not None, f"no etcd member of {store_url} names a leader"
    return name


async def lease_record(bus: Bus, role: str, name: str) -> LeaseRecord | None:
    """``lease.<role>.<name>`` as written now (held, expired or released), if any."""
    return await _lease_at(bus, lease_key(role, name))


async def _lease_at(bus: Bus, key: str) -> LeaseRecord | None:
    import nats.js.errors

    kv = await bus.kv(CFG_STATE.name)
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return decode_lease(entry.value) if entry.value else None


async def lease_expiry(bus: Bus, role: str, lease: LeaseRecord) -> datetime:
    """When ``lease`` runs out unrenewed: its holder's replica lease's expiry when it lives by
    one (``confbus.runtime.leases``), else its own."""
    if lease.life is None:
        return lease.expires_at
    replica = await _lease_at(bus, replica_key(role, lease.holder))
    if replica is None or replica.life != lease.life:
        return datetime.fromtimestamp(0, UTC)  # that life is over: free now
    return replica.expires_at


async def lease_holder(bus: Bus, role: str, name: str) -> tuple[str, int] | None:
    """(holder, epoch) of ``lease.<role>.<name>`` if it is held now."""
    lease = await lease_record(bus, role, name)
    if lease is None or await lease_expiry(bus, role, lease) <= datetime.now(UTC):
        return None
    return lease.holder, lease.epoch


HEALTH_EVERY_S = 1.0  # each agent's health sample (``confbus agent --health-url``)


async def health_samples(bus: Bus, ns: str, nodes: Sequence[str], stop: anyio.Event) -> None:
    """What agents with ``--health-url`` forward: a healthy sample per node every second, so
    a health-watcher replica leads ``ns`` (``lease.health.<ns>``)."""
    while not stop.is_set():
        for node in nodes:
            sample = HealthSample(namespace=ns, node=node, version=None, status_code=200)
            try:
                await bus.publish(subjects.health(ns, node), sample, timeout=1.0)
            except (ConfbusError, nats.errors.Error):
                pass  # dropped while the bus is down, as an agent drops them
        with anyio.move_on_after(HEALTH_EVERY_S):
            await stop.wait()
