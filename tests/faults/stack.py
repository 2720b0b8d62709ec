"""confbus as real processes for the fault scenarios: services and agents on one nats-server or
on a 3-node cluster, each a ``confbus.procs.proc.Proc`` (ready line, SIGKILL, SIGSTOP/SIGCONT).

``shim=True`` starts the service through ``tests.faults.shims.<pkg>`` instead of
``services.<pkg>``: the same code, plus the deliberate bug or the injected fault named in its
environment (``CONFBUS_TEST_BUG``, ``CONFBUS_TEST_FAULTS``). Production code never reads those.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confbus.procs.agent import agent_argv
from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc, python_module, stop_together
from confbus.runtime.bus import Bus, connect
from confbus.runtime.kv import StateKV
from confbus.schemas.node import NamespaceState
from confbus.schemas.state import NodeRecord, node_key
from confbus.schemas.streams import CFG_STATE
from tests.faults.cluster import NatsCluster


@dataclass
class Node:
    """One agent process and the live files it writes."""

    name: str
    files: dict[str, Path]
    state_dir: Path
    proc: Proc
    labels: dict[str, str] = field(default_factory=dict)

    def read(self, namespace: str) -> bytes | None:
        path = self.files[namespace]
        return path.read_bytes() if path.exists() else None

    def applies(self) -> list[dict[str, Any]]:
        """Every ``applied`` log line this node wrote, over all of its restarts."""
        out = []
        for line in self.proc.log_text().splitlines():
            if '"applied"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by SIGKILL
            if rec.get("msg") == "applied":
                out.append(rec)
        return out


def log_counts(proc: Proc) -> Counter[str]:
    """How many times each log message appears in a process's log, over its restarts."""
    out: Counter[str] = Counter()
    for line in proc.log_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by SIGKILL
        if isinstance(rec, dict) and "msg" in rec:
            out[str(rec["msg"])] += 1
    return out


@dataclass
class FaultStack:
    root: Path
    nats: NatsServer | None = None
    cluster: NatsCluster | None = None
    services: dict[str, Proc] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    replicas: int = 3  # of streams and buckets, on a cluster

    @classmethod
    def single(cls, root: Path) -> FaultStack:
        return cls(root, nats=NatsServer(data_dir=root / "nats").start())

    @property
    def url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        assert self.nats is not None
        return self.nats.url

    @property
    def logs(self) -> Path:
        path = self.root / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def bus(self, name: str = "faults") -> Bus:
        return await connect(self.url, name=name)

    def store_path(self) -> Path:
        return self.root / "store.db"

    def service_args(self, pkg: str) -> list[str]:
        if pkg == "version_store":
            return ["--store", f"sqlite:///{self.store_path()}"]
        return []

    def service(
        self,
        pkg: str,
        *extra: str,
        env: dict[str, str] | None = None,
        name: str | None = None,
        shim: bool = False,
    ) -> Proc:
        """A service process, not started yet."""
        module = f"tests.faults.shims.{pkg}" if shim else f"confbus.{pkg}"
        replicas = ["--replicas", str(self.replicas)] if self.cluster is not None else []
        argv = python_module(module, "--nats-url", self.url, *replicas, *self.service_args(pkg))
        proc = Proc(name or pkg, [*argv, *extra], self.logs, env)
        self.services[name or pkg] = proc
        return proc

    def start_service(self, pkg: str, *extra: str) -> Proc:
        """A service process as it runs in production, started (``service`` for the options)."""
        return self.service(pkg, *extra).start(timeout=30.0)

    def agent(
        self,
        node: str,
        *,
        namespaces: Sequence[str] = ("web",),
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        shim: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> Node:
        """An agent process (not started yet) with its live dir and state dir."""
        live = self.root / "nodes" / node / "etc"
        live.mkdir(parents=True, exist_ok=True)
        state = self.root / "nodes" / node / "state"
        files = {ns: live / f"{ns}.conf" for ns in namespaces}
        program = python_module("tests.faults.shims.agent") if shim else None
        argv = agent_argv(
            self.url,
            node,
            files,
            state,
            *extra,
            heartbeat_interval=0.5,
            labels=labels,
            program=program,
        )
        proc = Proc(f"agent-{node}", argv, self.logs, env)
        n = Node(node, files, state, proc, dict(labels or {}))
        self.nodes[node] = n
        return n

    def start_agent(
        self,
        node: str,
        *,
        env: dict[str, str] | None = None,
        shim: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> Node:
        n = self.agent(node, env=env, shim=shim, labels=labels)
        n.proc.start(timeout=30)
        return n

    async def record_labels(self, bus: Bus, namespaces: Sequence[str] = ("web",)) -> None:
        """Write each agent's ``node.<node>`` record with its labels, as the distributor's
        membership does from heartbeats (a stack without a distributor): the coordinator renders
        each participant's variant from these, the version-store validates the members'."""
        kv = await StateKV.open(bus, CFG_STATE)
        for n in self.nodes.values():
            states = [NamespaceState(namespace=ns) for ns in namespaces]
            record = NodeRecord(node=n.name, labels=n.labels, namespaces=states)
            await kv.put(node_key(n.name), record)

    def stop(self) -> None:
        stop_together([n.proc for n in self.nodes.values()], timeout=5)
        stop_together(list(reversed(self.services.values())), timeout=5)
        if self.nats is not None:
            self.nats.stop()
        if self.cluster is not None:
            self.cluster.stop()
