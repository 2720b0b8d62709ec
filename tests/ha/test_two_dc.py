"""Two datacenters joined by a NATS gateway (docs/multi-dc.md), on loopback.

DC1 is a 3-node cluster with JetStream (every stream, R3) and the services; DC2 is a server
without JetStream, joined to DC1 by a gateway, with its own agents. DC2's agents reach the
streams through the gateway.

1. A change published in DC1 reaches the agents in both DCs.
2. The gateway is cut (DC2's server restarts without its gateway block): a change published
   in DC1 reaches DC1's agents; DC2's agents keep serving the file they have.
3. The gateway heals: DC2's agents catch up, and every agent holds the same bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from confbus.client import Client
from confbus.procs.agent import agent_argv
from confbus.procs.nats import ClusterPeer, NatsServer
from confbus.procs.ports import free_ports
from confbus.procs.proc import Proc
from confbus.runtime.bus import connect
from confbus.runtime.http import http_get
from confbus.schemas.policy import Policy
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NS = "web"
DC1_NODES = ("a1", "a2")
DC2_NODES = ("b1", "b2")


@dataclass
class NoJetStreamServer(NatsServer):
    """A server holding no streams: DC2 reads DC1's through the gateway."""

    def config_text(self) -> str:
        text = super().config_text()
        start = text.index("jetstream {")
        end = text.index("}\n", start) + 2
        return text[:start] + text[end:]


def gateway_block(name: str, port: int, dc1: list[int], dc2: list[int]) -> str:
    def urls(ports: list[int]) -> str:
        return ", ".join(f'"nats://127.0.0.1:{p}"' for p in ports)

    return (
        f'gateway {{ name: "{name}", listen: "127.0.0.1:{port}", gateways: [ '
        f'{{ name: "dc1", urls: [{urls(dc1)}] }}, {{ name: "dc2", urls: [{urls(dc2)}] }} ] }}'
    )


@dataclass
class TwoDcs:
    root: Path
    dc1: list[NatsServer]
    dc2: NoJetStreamServer
    dc2_gateway: str
    services: list[Proc] = field(default_factory=list)
    agents: dict[str, tuple[Proc, Path]] = field(default_factory=dict)

    @property
    def dc1_url(self) -> str:
        return ",".join(s.url for s in self.dc1)

    def start_agent(self, node: str, dc: str) -> None:
        url = self.dc1_url if dc == "dc1" else self.dc2.url
        path = self.root / "nodes" / node / "web.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.root / "nodes" / node / "state"
        argv = agent_argv(url, node, {NS: path}, state, heartbeat_interval=0.5, labels={"dc": dc})
        self.agents[node] = (Proc(f"agent-{node}", argv, self.root / "logs").start(), path)

    def read(self, node: str) -> bytes | None:
        path = self.agents[node][1]
        return path.read_bytes() if path.exists() else None

    def cut(self) -> None:
        """DC2's server comes back without its gateway: the link between the DCs is gone."""
        self.dc2.stop()
        self.dc2.gateway = ""
        self.dc2.restart()

    def heal(self) -> None:
        self.dc2.stop()
        self.dc2.gateway = self.dc2_gateway
        self.dc2.restart()

    def stop(self) -> None:
        for proc, _ in self.agents.values():
            proc.stop()
        for proc in reversed(self.services):
            proc.stop()
        self.dc2.stop()
        for s in self.dc1:
            s.stop()


@pytest.fixture
def dcs(tmp_path: Path) -> Iterator[TwoDcs]:
    (tmp_path / "logs").mkdir()
    ports = free_ports(11)
    clients, routes, gws = ports[0:3], ports[3:6], ports[6:9]
    dc2_gw, dc2_client = ports[9:10], ports[10]
    dc1 = [
        NatsServer(
            data_dir=tmp_path / f"dc1-{i}",
            port=clients[i],
            cluster=ClusterPeer(
                f"dc1-{i}",
                "dc1",
                routes[i],
                [f"nats://127.0.0.1:{p}" for j, p in enumerate(routes) if j != i],
            ),
            gateway=gateway_block("dc1", gws[i], gws, dc2_gw),
        )
        for i in range(3)
    ]
    gateway = gateway_block("dc2", dc2_gw[0], gws, dc2_gw)
    dc2 = NoJetStreamServer(
        data_dir=tmp_path / "dc2",
        port=dc2_client,
        gateway=gateway,
        extra_config='server_name: "dc2"',
    )
    env = TwoDcs(tmp_path, dc1, dc2, gateway)
    try:
        for s in dc1:
            s.start()
        dc2.start()
        yield env
    finally:
        env.stop()


async def wait_jetstream(url: str) -> None:
    bus = await connect(url, name="test-wait")
    try:
        with anyio.fail_after(30):
            while True:
                try:
                    await bus.js.account_info()
                    return
                except Exception:
                    await anyio.sleep(0.1)  # poll while the cluster elects its meta leader
    finally:
        await bus.close()


async def agent_version(proc: Proc) -> object:
    assert proc.ready is not None
    status, body = await http_get("127.0.0.1", proc.ready["http_port"], "/status")
    assert status == 200, body
    return json.loads(body)["namespaces"][NS]["applied_version"]


async def test_a_change_crosses_the_gateway_survives_a_cut_and_converges(dcs: TwoDcs) -> None:
    await wait_jetstream(dcs.dc1_url)
    store = f"sqlite:///{dcs.root / 'store.db'}"
    for pkg, args in (
        ("version_store", ["--store", store]),
        ("coordinator", []),
        ("distributor", ["--heartbeat-interval", "0.5"]),
    ):
        proc = Proc.service(pkg, dcs.dc1_url, dcs.root / "logs", *args, "--replicas", "3")
        dcs.services.append(proc.start(timeout=60))
    for node in DC1_NODES:
        dcs.start_agent(node, "dc1")
    for node in DC2_NODES:
        dcs.start_agent(node, "dc2")
    every = (*DC1_NODES, *DC2_NODES)

    async def hold(nodes: tuple[str, ...], content: bytes) -> bool:
        return all(dcs.read(n) == content for n in nodes)

    async with Client(dcs.dc1_url, name="test-ci") as client:
        # While DC2 is cut off its agents miss votes: go on without them (half the fleet).
        await client.set_policy(Policy(namespace=NS, vote_timeout_s=1.0, max_excluded=0.5))
        v1 = b'{"v": 1}'
        await client.publish(NS, v1, change_id="v1")
        await eventually(lambda: hold(every, v1), timeout=60, what="v1 on both DCs")

        await anyio.to_thread.run_sync(dcs.cut)
        v2 = b'{"v": 2}'
        info = await client.publish(NS, v2, change_id="v2")
        cut_at = time.monotonic()
        await eventually(lambda: hold(DC1_NODES, v2), timeout=60, what="v2 in DC1, cut off")
        # DC2 keeps serving the file it has, and says it has one.
        assert await hold(DC2_NODES, v1)
        for node in DC2_NODES:
            proc = dcs.agents[node][0]
            assert proc.ready is not None
            code, body = await http_get("127.0.0.1", proc.ready["http_port"], "/healthz")
            assert code == 200, body
            assert await agent_version(proc) == info.version - 1
        print(f"\nDC1 switched to v{info.version} {time.monotonic() - cut_at:.2f}s into the cut")

        await anyio.to_thread.run_sync(dcs.heal)
        healed_at = time.monotonic()
        await eventually(lambda: hold(every, v2), timeout=60, what="both DCs on v2 after heal")
        print(f"DC2 converged {time.monotonic() - healed_at:.2f}s after the heal")
        for node in every:
            assert await agent_version(dcs.agents[node][0]) == info.version
