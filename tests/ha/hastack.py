"""``confbus up --ha`` as a real process for tests, and what the tests ask of it: which process
leads what (stream leaders, the etcd leader, lease holders), pids to kill, agents to start.

Nothing here sleeps to synchronise: waits read lines as they are written, or poll with a
deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from confbus.procs.etcd import etcd_binary
from confbus.runtime.bus import Bus
from confbus.schemas.state import decode_lease, lease_key
from confbus.schemas.streams import CFG_STATE
from tests.cli.procs import Proc, alive, confbus_argv, lock_is_free
from tests.procs import Proc as ServiceProc

READY = re.compile(
    r"^confbus ready nats=(?P<nats>\S+) data=(?P<data>\S+) services=(?P<services>\S+)"
)
READY_TIMEOUT = 120.0  # 6 servers and 10 services starting on a loaded 2-core CI box

needs_etcd = pytest.mark.skipif(
    etcd_binary() is None, reason="etcd is not installed (apt-get install -y etcd-server)"
)


@dataclass
class Agent:
    node: str
    path: Path
    proc: ServiceProc

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
        argv = [
            sys.executable, "-m", "confbus.agent", "--nats-url", self.url,
            "--node", node, "--namespace", namespace, "--path", str(path),
            "--state-dir", str(root / node / "state"), "--heartbeat-interval", "0.5",
        ]  # fmt: skip
        logs = root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        proc = ServiceProc(f"agent-{node}", argv, logs).start()
        agent = Agent(node, path, proc)
        self.agents[node] = agent
        return agent

    def stop(self, timeout: float = 60.0) -> int:
        for agent in self.agents.values():
            agent.proc.stop()
        return self.proc.stop(signal.SIGTERM, timeout=timeout)

    def cleanup(self) -> None:
        for agent in self.agents.values():
            agent.proc.kill()
        if self.proc.popen.poll() is None:
            pids = self.all_pids()
            try:
                self.proc.stop(signal.SIGTERM, timeout=60)
            except AssertionError:
                self.proc.kill()
                for pid in pids:
                    if alive(pid):
                        os.kill(pid, signal.SIGKILL)

    def assert_all_gone(self, pids: Sequence[int]) -> None:
        assert not [p for p in pids if alive(p)], "processes outlived confbus up"
        assert lock_is_free(self.data_dir / "confbus.lock")
        assert not (self.data_dir / "stack.json").exists()


def start_ha(data_dir: Path, *args: str) -> HaStack:
    argv = [*confbus_argv(), "up", "--ha", "--data-dir", str(data_dir), "--nats-port", "0", *args]
    stack = HaStack(Proc(argv), data_dir.resolve())
    try:
        stack.line = stack.proc.out.wait_for("confbus ready", READY_TIMEOUT)
    except AssertionError as exc:
        stack.cleanup()
        raise AssertionError(f"{exc}\nstderr:\n{stack.proc.err.text()}") from None
    return stack


def ha_fixture(data_dir: Path) -> Iterator[HaStack]:
    stack = start_ha(data_dir)
    try:
        yield stack
    finally:
        stack.cleanup()


# -- who leads what ------------------------------------------------------------------------------


async def stream_leader(bus: Bus, stream: str) -> str:
    info = await bus.js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader, info
    return str(info.cluster.leader)


def etcd_leader(store_url: str, follower: bool = False) -> str:
    """The name (e1..e3) of the etcd leader (or of a follower), asked of the first member
    that answers."""
    for endpoint in store_url.removeprefix("etcd://").split(","):
        try:
            status = _etcd_post(endpoint, "/v3/maintenance/status")
            members = _etcd_post(endpoint, "/v3/cluster/member/list")["members"]
        except OSError:
            continue
        names = {str(m["ID"]): str(m["name"]) for m in members}
        leader = str(status.get("leader", ""))
        if leader in names:
            if follower:
                return sorted(n for i, n in names.items() if i != leader)[0]
            return names[leader]
    raise AssertionError(f"no etcd member of {store_url} names a leader")


def _etcd_post(endpoint: str, path: str) -> dict[str, Any]:
    req = urllib.request.Request(f"http://{endpoint}{path}", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=2) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


async def lease_holder(bus: Bus, role: str, name: str) -> tuple[str, int] | None:
    """(holder, epoch) of ``lease.<role>.<name>`` if it is held now."""
    from datetime import UTC, datetime

    import nats.js.errors

    kv = await bus.kv(CFG_STATE.name)
    try:
        entry = await kv.get(lease_key(role, name))
    except nats.js.errors.KeyNotFoundError:
        return None
    if not entry.value:
        return None
    lease = decode_lease(entry.value)
    if lease.expires_at <= datetime.now(UTC):
        return None
    return lease.holder, lease.epoch
