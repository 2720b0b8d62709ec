"""Real etcd members for tests: free loopback ports, a temp data dir, readiness by polling /health.

``EtcdCluster.start(tmp, size=3)`` starts the members and returns once every member reports
healthy (a leader exists); ``leader()`` asks a member which one leads; ``kill(name)`` sends
SIGKILL. Nothing here sleeps to synchronise: every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from confbus.procs.ports import free_ports

ETCD = shutil.which("etcd")
SKIP_REASON = "etcd binary not found on PATH (apt-get install -y etcd-server)"


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class EtcdCluster:
    members: list[Member] = field(default_factory=list)

    @classmethod
    def start(cls, tmp: Path, size: int = 1, *, fast_election: bool = False) -> EtcdCluster:
        assert ETCD is not None, SKIP_REASON
        # Below the ephemeral range: members dial each other's peer ports while starting.
        ports = iter(free_ports(2 * size))
        members = [
            Member(f"e{i}", next(ports), next(ports), tmp / f"e{i}.data", tmp / f"e{i}.log")
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in members)
        cluster = cls(members)
        token = f"confbus-test-{os.getpid()}-{members[0].peer_port}"  # the same for every member
        for m in members:
            args = [
                ETCD,
                "--name", m.name,
                "--data-dir", str(m.data_dir),
                "--listen-client-urls", f"http://{m.endpoint}",
                "--advertise-client-urls", f"http://{m.endpoint}",
                "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
                "--initial-cluster", initial,
                "--initial-cluster-token", token,
                "--initial-cluster-state", "new",
                "--logger", "zap",
                "--log-level", "warn",
            ]  # fmt: skip
            if fast_election:
                # Failover in well under a second on loopback, so fault tests stay quick.
                args += ["--heartbeat-interval", "50", "--election-timeout", "500"]
            with m.log_path.open("wb") as log:
                m.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            cluster.wait_healthy(members, timeout=30)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def wait_healthy(self, members: list[Member], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            for m in list(pending):
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited:\n{m.log_tail()}")
                if m.healthy():
                    pending.remove(m)
            if pending and time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in pending)
                raise TimeoutError(f"etcd members not healthy after {timeout}s:\n{tails}")
            if pending:
                time.sleep(0.05)  # poll interval, not synchronisation

    def kill(self, name: str) -> None:
        m = self.member(name)
        assert m.proc is not None
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(timeout=10)

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    # A member whose peers are dead spends seconds trying to hand over
                    # leadership; its data dir is thrown away, so do not wait for that.
                    m.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        m.proc.wait(timeout=5)


async def leader_name(endpoints: list[str], timeout: float = 10.0) -> str:
    """The name of the current leader, asked of whichever member answers."""
    import aetcd
    import anyio

    with anyio.fail_after(timeout):
        while True:
            for endpoint in endpoints:
                host, port = endpoint.rsplit(":", 1)
                client = aetcd.Client(host, int(port), timeout=1)
                try:
                    status = await client.status()
                    if status.leader is not None:
                        return str(status.leader.name)
                except aetcd.ClientError:
                    pass
                finally:
                    await client.close()
            await anyio.sleep(0.05)  # poll interval while an election runs
