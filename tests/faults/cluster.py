"""A 3-node nats-server cluster on loopback (R3 streams, ``sync_interval: always``), with the
faults the harness needs: SIGKILL / restart a node, find a stream's leader, read each node's
own view of a stream (``/jsz``) to compare replicas.

A node may run under its own uid (``uids``): the partition scenario tells the nodes' packets
apart by the uid of the socket that sent them (see ``tests.faults.netns``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.errors
import nats.js.errors

from confbus.procs.nats import ClusterPeer, NatsServer
from confbus.procs.ports import free_ports
from confbus.runtime.bus import Bus, connect, provision


@dataclass
class NatsCluster:
    root: Path
    size: int = 3
    uids: list[int] | None = None
    nodes: dict[str, NatsServer] = field(default_factory=dict)
    cluster_ports: dict[str, int] = field(default_factory=dict)
    monitor_ports: dict[str, int] = field(default_factory=dict)

    def start(self) -> NatsCluster:
        names = [f"n{i + 1}" for i in range(self.size)]
        if self.uids:
            # Nodes under other uids must reach their data dirs: the root is traversable
            # (not readable); each node's own dir is handed to its uid.
            self.root.mkdir(parents=True, exist_ok=True)
            self.root.chmod(0o711)
        # Below the ephemeral range: the first nodes dial the others' routes while those
        # are still starting, and a dial's source port must not take a port given out here.
        ports = iter(free_ports(3 * len(names)))
        self.cluster_ports = {n: next(ports) for n in names}
        self.monitor_ports = {n: next(ports) for n in names}
        client_ports = {n: next(ports) for n in names}
        for i, name in enumerate(names):
            routes = [f"nats://127.0.0.1:{self.cluster_ports[o]}" for o in names if o != name]
            self.nodes[name] = NatsServer(
                data_dir=self.root / name,
                port=client_ports[name],
                monitor_port=self.monitor_ports[name],
                cluster=ClusterPeer(name, "confbus-faults", self.cluster_ports[name], routes),
                uid=self.uids[i] if self.uids else None,
            )
        try:
            for server in self.nodes.values():
                server.start()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{s.port}" for s in self.nodes.values())

    def url_of(self, name: str) -> str:
        return f"nats://127.0.0.1:{self.nodes[name].port}"

    def kill(self, name: str) -> None:
        self.nodes[name].kill()

    def restart(self, name: str) -> None:
        self.nodes[name].restart()

    def stop(self) -> None:
        for server in self.nodes.values():
            server.stop(timeout=5)

    def alive(self, name: str) -> bool:
        proc = self.nodes[name].proc
        return proc is not None and proc.poll() is None

    # -- what the nodes say -------------------------------------------------------------

    def jsz(self, name: str) -> dict[str, Any] | None:
        """The node's own JetStream report (``/jsz`` with stream details), or None if down."""
        url = f"http://127.0.0.1:{self.monitor_ports[name]}/jsz?accounts=true&streams=true"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def stream_state(self, name: str, stream: str) -> dict[str, Any] | None:
        """This node's replica of ``stream``: messages, bytes, first and last sequence."""
        data = self.jsz(name)
        if data is None:
            return None
        for account in data.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    state: dict[str, Any] = detail.get("state") or {}
                    return {k: state.get(k) for k in ("messages", "bytes", "first_seq", "last_seq")}
        return None


async def connect_to(cluster: NatsCluster, name: str, label: str) -> Bus:
    """A client attached to node ``name`` first (the others only as fallbacks): writers spread
    over the nodes, so a cut-off node's clients show in the availability figures."""
    first = cluster.url_of(name)
    others = [cluster.url_of(n) for n in cluster.nodes if n != name]
    nc = await nats.connect(
        servers=[first, *others],
        name=label,
        dont_randomize=True,
        connect_timeout=2,
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        ping_interval=2,
        max_outstanding_pings=2,
        error_cb=_quiet,
        disconnected_cb=_quiet0,
        reconnected_cb=_quiet0,
    )
    return Bus(nc=nc, js=nc.jetstream(), name=label)


async def _quiet(exc: Exception) -> None:
    return None  # reconnects are the point of these tests; the history records the outcome


async def _quiet0() -> None:
    return None


async def wait_meta_leader(cluster: NatsCluster, timeout: float = 30.0) -> None:
    """Until the JetStream meta group has a leader (provisioning needs one)."""
    with anyio.fail_after(timeout):
        while True:
            for name in cluster.nodes:
                data = await anyio.to_thread.run_sync(cluster.jsz, name)
                if data and (data.get("meta_cluster") or {}).get("leader"):
                    return
            await anyio.sleep(0.1)  # poll interval while the meta group elects


async def provision_r3(cluster: NatsCluster, timeout: float = 60.0, replicas: int = 3) -> None:
    """Create every stream and bucket with 3 replicas (retried while the cluster settles)."""
    await wait_meta_leader(cluster)
    bus = await connect(cluster.url, name="faults-provision")
    try:
        with anyio.fail_after(timeout):
            while True:
                try:
                    await provision(bus, replicas=replicas)
                    return
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                    await anyio.sleep(0.2)  # the cluster is still placing peers
    finally:
        await bus.close()


async def stream_leader(bus: Bus, stream: str, timeout: float = 30.0) -> str:
    """The current leader of ``stream`` (waits out an election)."""
    with anyio.fail_after(timeout):
        while True:
            try:
                info = await bus.js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return info.cluster.leader
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                pass
            await anyio.sleep(0.1)  # poll interval while a leader is elected


async def replicas_current(bus: Bus, stream: str) -> bool:
    """Every replica of ``stream`` is up and caught up with its leader."""
    try:
        info = await bus.js.stream_info(stream)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
        return False
    cl = info.cluster
    if cl is None or not cl.leader or cl.replicas is None or len(cl.replicas) < 2:
        return False
    return all(bool(p.current) and not p.offline for p in cl.replicas)
