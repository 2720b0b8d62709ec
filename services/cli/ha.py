"""The engines behind ``confbus up --ha`` on one machine: a 3-node NATS cluster and a
3-member etcd cluster on loopback, started, watched (restarted when they crash) and stopped.

```
<data-dir>/
  nats-1/ nats-2/ nats-3/   each server's config and JetStream store (sync_interval: always)
  etcd/e1/ etcd/e2/ etcd/e3/   each etcd member's data
  logs/nats-N.log  logs/etcd-eN.log
```

Ports (P = ``--nats-port``, default 4222; E = ``--etcd-port``, default 2379), all on 127.0.0.1:

| process | client | cluster / peer | monitoring |
|---|---|---|---|
| nats-1..3 | P, P+1, P+2 | P+2000.. (6222..) | P+4000.. (8222..) |
| etcd e1..e3 | E, E+2, E+4 | E+1, E+3, E+5 | — |

``--nats-port 0`` picks every port free (tests). The version-store gets
``--store etcd://127.0.0.1:E,127.0.0.1:E+2,127.0.0.1:E+4``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import nats.errors
import nats.js.errors

from confbus.cli.exitcodes import FAILED, CliError
from confbus.runtime.bus import Bus
from confbus.runtime.natsd import ClusterPeer, NatsServer
from confbus.runtime.ports import free_ports

log = logging.getLogger("confbus.up")

SIZE = 3
CLUSTER_NAME = "confbus"
ETCD_TOKEN = "confbus-up-ha"
ETCD_HINT = "install etcd-server (apt-get install -y etcd-server)"
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0


def etcd_binary() -> str | None:
    found = shutil.which("etcd")
    if found:
        return found
    return "/usr/bin/etcd" if Path("/usr/bin/etcd").is_file() else None


@dataclass(frozen=True)
class HaPorts:
    nats: tuple[int, ...]
    cluster: tuple[int, ...]
    monitor: tuple[int, ...]
    etcd_client: tuple[int, ...]
    etcd_peer: tuple[int, ...]

    @classmethod
    def derive(cls, nats_port: int, etcd_port: int | None = None) -> HaPorts:
        if nats_port == 0:
            free = free_ports(5 * SIZE)
            nats, cluster, monitor = free[0:3], free[3:6], free[6:9]
            if etcd_port is None or etcd_port == 0:
                client, peer = free[9:12], free[12:15]
            else:
                client = [etcd_port + 2 * i for i in range(SIZE)]
                peer = [p + 1 for p in client]
        else:
            nats = [nats_port + i for i in range(SIZE)]
            cluster = [nats_port + 2000 + i for i in range(SIZE)]
            monitor = [nats_port + 4000 + i for i in range(SIZE)]
            base = 2379 if etcd_port is None else etcd_port
            if base == 0:
                free = free_ports(2 * SIZE)
                client, peer = free[:3], free[3:]
            else:
                client = [base + 2 * i for i in range(SIZE)]
                peer = [p + 1 for p in client]
        ports = cls(*(tuple(p) for p in (nats, cluster, monitor, client, peer)))
        bad = [p for p in ports.all() if not 0 < p <= 65535]
        if bad:
            raise CliError(f"--ha needs ports {', '.join(map(str, bad))}, outside 1..65535", 2)
        return ports

    def all(self) -> list[int]:
        return [*self.nats, *self.cluster, *self.monitor, *self.etcd_client, *self.etcd_peer]

    @property
    def nats_urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.nats]

    @property
    def etcd_endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.etcd_client]

    def store_url(self) -> str:
        return "etcd://" + ",".join(self.etcd_endpoints)


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    initial_cluster: str
    pass_fds: tuple[int, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def argv(self, binary: str) -> list[str]:
        return [
            binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"http://{self.endpoint}",
            "--advertise-client-urls", f"http://{self.endpoint}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            # Ignored once the data dir exists (a restart rejoins with what it has there).
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", ETCD_TOKEN,
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

    def start(self, binary: str) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(binary),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds,
                start_new_session=True,  # Ctrl-C reaches confbus up, which stops us in order
            )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return "\n  ".join(lines)


@dataclass
class HaCluster:
    """Three nats-servers in one cluster and three etcd members, all on loopback."""

    data_dir: Path
    logs: Path
    ports: HaPorts
    pass_fds: tuple[int, ...] = ()
    servers: list[NatsServer] = field(default_factory=list)
    members: list[EtcdMember] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        return ",".join(self.ports.nats_urls)

    def state(self) -> dict[str, object]:
        """For ``stack.json``: each process's pid, the NATS URLs and etcd endpoints."""
        pids: dict[str, int | None] = {}
        for i, s in enumerate(self.servers, 1):
            pids[f"nats-{i}"] = s.proc.pid if s.proc is not None else None
        for m in self.members:
            pids[f"etcd-{m.name}"] = m.proc.pid if m.proc is not None else None
        return {
            "pids": pids,
            "nats": self.ports.nats_urls,
            "monitor": [f"http://127.0.0.1:{p}" for p in self.ports.monitor],
            "etcd": self.ports.store_url(),
        }

    # -- start and stop (synchronous: before and after the event loop) ----------------------

    def start(self, timeout: float = 30.0) -> None:
        binary = etcd_binary()
        if binary is None:
            raise CliError(f"--ha runs a 3-member etcd cluster, but etcd is missing: {ETCD_HINT}")
        p = self.ports
        for i in range(SIZE):
            name = f"nats-{i + 1}"
            routes = [f"nats://127.0.0.1:{c}" for j, c in enumerate(p.cluster) if j != i]
            self.servers.append(
                NatsServer(
                    data_dir=self.data_dir / name,
                    port=p.nats[i],
                    monitor_port=p.monitor[i],
                    cluster=ClusterPeer(name, CLUSTER_NAME, p.cluster[i], routes),
                    log_file=self.logs / f"{name}.log",
                    pass_fds=self.pass_fds,
                )
            )
        initial = ",".join(f"e{i + 1}=http://127.0.0.1:{p.etcd_peer[i]}" for i in range(SIZE))
        for i in range(SIZE):
            name = f"e{i + 1}"
            self.members.append(
                EtcdMember(
                    name,
                    p.etcd_client[i],
                    p.etcd_peer[i],
                    self.data_dir / "etcd" / name,
                    self.logs / f"etcd-{name}.log",
                    initial,
                    self.pass_fds,
                )
            )
        for server in self.servers:
            _keep_previous(server.log_file)
            self._start_server(server, timeout)
        for member in self.members:
            member.start(binary)
        self._wait_etcd(timeout)
        log.info(
            "nats cluster ready on %s; etcd ready on %s",
            self.nats_url,
            ",".join(p.etcd_endpoints),
        )

    def _start_server(self, server: NatsServer, timeout: float) -> None:
        try:
            server.start(timeout)
        except FileNotFoundError as exc:
            raise CliError(str(exc), FAILED) from exc
        except RuntimeError as exc:
            if "address already in use" in str(exc):
                raise CliError(
                    f"a port of {server.url if server.bound_port else server.port} is already "
                    "in use (another confbus up?): pick others with --nats-port and --etcd-port",
                    FAILED,
                ) from None
            raise CliError(f"nats-server did not start: {exc}", FAILED) from exc
        except TimeoutError as exc:
            raise CliError(f"nats-server did not start: {exc}", FAILED) from exc

    def _wait_etcd(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.members)
        while pending:
            for m in list(pending):
                if not m.running():
                    raise CliError(f"etcd {m.name} exited; last lines:\n  {m.tail()}", FAILED)
                if m.healthy():
                    pending.remove(m)
            if pending and time.monotonic() > deadline:
                names = ", ".join(m.name for m in pending)
                raise CliError(f"etcd members {names} not healthy after {timeout:g}s", FAILED)
            if pending:
                time.sleep(0.05)  # poll interval while they elect a leader

    def stop(self, timeout: float = 10.0) -> None:
        """The NATS servers together, then the etcd members one at a time: members stopped
        together spend seconds each trying to hand leadership to a peer that is leaving too,
        while one at a time each stops in a tenth of a second. SIGKILL after ``timeout``."""
        servers = [s.proc for s in self.servers if s.proc is not None and s.proc.poll() is None]
        for proc in servers:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in servers:
            _reap(proc, timeout)
        members = [m.proc for m in self.members if m.proc is not None and m.proc.poll() is None]
        for proc in members:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            _reap(proc, timeout)
        if servers or members:
            log.info("nats cluster and etcd stopped")

    # -- while serving ---------------------------------------------------------------------------

    async def wait_jetstream(self, bus: Bus, timeout: float = 30.0) -> None:
        """Until the cluster has elected its JetStream meta leader (provisioning needs it)."""
        with anyio.fail_after(timeout):
            while True:
                try:
                    await bus.js.account_info()
                    return
                except (nats.errors.Error, nats.js.errors.Error):
                    await anyio.sleep(0.1)  # poll while the servers elect a meta leader

    async def watch(self, on_restart: Callable[[], None] | None = None) -> None:
        """Restart any nats-server or etcd member that died, on the same ports and data."""
        binary = etcd_binary()
        assert binary is not None
        restarts: dict[str, _Backoff] = {}
        while True:
            for i, server in enumerate(self.servers, 1):
                if server.proc is not None and (code := server.proc.poll()) is not None:

                    def again(s: NatsServer = server) -> None:
                        _keep_previous(s.log_file)
                        s.restart()

                    backoff = restarts.setdefault(f"nats-{i}", _Backoff())
                    if await backoff.restart(f"nats-{i}", code, again) and on_restart:
                        on_restart()
            for member in self.members:
                if member.proc is not None and (code := member.proc.poll()) is not None:
                    backoff = restarts.setdefault(member.name, _Backoff())
                    restarted = await backoff.restart(
                        f"etcd {member.name}", code, functools.partial(member.start, binary)
                    )
                    if restarted and on_restart:
                        on_restart()
            await anyio.sleep(0.5)  # poll interval: these are not our children's pipes


@dataclass
class _Backoff:
    delay: float = RESTART_MIN_S
    started: float = 0.0

    async def restart(self, name: str, code: int, start: Callable[[], None]) -> bool:
        if time.monotonic() - self.started > STABLE_AFTER_S:
            self.delay = RESTART_MIN_S  # it served a good while: not a crash loop
        log.error("%s %s; restarting in %gs", name, _exit_text(code), self.delay)
        await anyio.sleep(self.delay)
        self.delay = min(self.delay * 2, RESTART_MAX_S)
        self.started = time.monotonic()
        try:
            await anyio.to_thread.run_sync(start)
        except (RuntimeError, TimeoutError, OSError) as exc:
            log.error("%s did not restart: %s", name, exc)
            return False
        log.info("%s ready again", name)
        return True


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _keep_previous(path: Path | None) -> None:
    if path is not None and path.exists() and path.stat().st_size:
        os.replace(path, path.with_name(path.name + ".1"))
