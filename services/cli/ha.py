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

With ``--secure`` (``HaSecurity``, made by ``confbus.cli.security.cluster``) every one of those
ports speaks TLS only, with certificates from the stack's own CA: NATS clients log in as their
role's user, routes present a certificate and the route credentials, monitoring is HTTPS, and
etcd takes only clients and peers with a certificate (docs/design.md §7.7).
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import nats.errors
import nats.js.errors

from confbus.cli.exitcodes import FAILED, CliError
from confbus.procs.etcd import ETCD_HINT, EtcdCluster, etcd_binary
from confbus.procs.nats import ClusterPeer, NatsServer
from confbus.procs.ports import free_ports
from confbus.procs.spawn import keep_previous
from confbus.procs.tls import TlsFiles
from confbus.procs.watch import Watched, keep_running
from confbus.runtime.bus import Bus
from confbus.schemas.streams import BUCKETS, streams_for

log = logging.getLogger("confbus.up")

SIZE = 3
CLUSTER_NAME = "confbus"
ETCD_TOKEN = "confbus-up-ha"


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


@dataclass(frozen=True)
class HaSecurity:
    """What ``--secure`` adds to the cluster: the users, the certificates, the route login."""

    nats_config: str  # for every nats-server: the include of the users and their permissions
    nats_tls: tuple[TlsFiles, ...]  # nats-1..3: clients, routes and monitoring
    route_user: str
    route_password: str = field(repr=False)
    etcd_tls: dict[str, TlsFiles] = field(default_factory=dict)  # e1..e3: clients and peers
    etcd_client: TlsFiles | None = None  # the version-store's (and this process's probes')

    @property
    def ca(self) -> Path:
        return self.nats_tls[0].ca


def start_nats(server: NatsServer, in_use: Callable[[], str], timeout: float = 10.0) -> None:
    """Start ``server`` for ``confbus up``: a missing binary, a port already taken (``in_use()``
    says what to do about it) or a server that does not come up is a ``CliError``."""
    try:
        server.start(timeout)
    except FileNotFoundError as exc:
        raise CliError(str(exc), FAILED) from exc
    except RuntimeError as exc:
        if "address already in use" in str(exc):
            raise CliError(in_use(), FAILED) from None
        raise CliError(f"nats-server did not start: {exc}", FAILED) from exc
    except TimeoutError as exc:
        raise CliError(f"nats-server did not start: {exc}", FAILED) from exc


@dataclass
class HaCluster:
    """Three nats-servers in one cluster and three etcd members, all on loopback."""

    data_dir: Path
    logs: Path
    ports: HaPorts
    pass_fds: tuple[int, ...] = ()
    security: HaSecurity | None = None
    servers: list[NatsServer] = field(default_factory=list)
    etcd: EtcdCluster = field(default_factory=EtcdCluster)

    @property
    def nats_url(self) -> str:
        return ",".join(self.ports.nats_urls)

    def state(self) -> dict[str, object]:
        """For ``stack.json``: each process's pid, the NATS URLs and etcd endpoints."""
        pids: dict[str, int | None] = {}
        for i, s in enumerate(self.servers, 1):
            pids[f"nats-{i}"] = s.proc.pid if s.proc is not None else None
        for m in self.etcd.members:
            pids[f"etcd-{m.name}"] = m.proc.pid if m.proc is not None else None
        scheme = "https" if self.security is not None else "http"
        state: dict[str, object] = {
            "pids": pids,
            "nats": self.ports.nats_urls,
            "monitor": [f"{scheme}://127.0.0.1:{p}" for p in self.ports.monitor],
            "etcd": self.ports.store_url(),
        }
        sec = self.security
        if sec is not None and sec.etcd_client is not None:
            client = sec.etcd_client
            state["tls"] = {"ca": str(sec.ca), "etcd_cert": str(client.cert),
                            "etcd_key": str(client.key)}  # fmt: skip
        return state

    # -- start and stop (synchronous: before and after the event loop) ----------------------

    def start(self, timeout: float = 30.0) -> None:
        if etcd_binary() is None:
            raise CliError(f"--ha runs a 3-member etcd cluster, but etcd is missing: {ETCD_HINT}")
        p, sec = self.ports, self.security
        for i in range(SIZE):
            name = f"nats-{i + 1}"
            routes = [f"nats://127.0.0.1:{c}" for j, c in enumerate(p.cluster) if j != i]
            peer = ClusterPeer(name, CLUSTER_NAME, p.cluster[i], routes)
            if sec is not None:
                peer = replace(peer, user=sec.route_user, password=sec.route_password)
            self.servers.append(
                NatsServer(
                    data_dir=self.data_dir / name,
                    port=p.nats[i],
                    monitor_port=p.monitor[i],
                    cluster=peer,
                    tls=sec.nats_tls[i] if sec is not None else None,
                    extra_config=sec.nats_config if sec is not None else "",
                    log_file=self.logs / f"{name}.log",
                    pass_fds=self.pass_fds,
                )
            )
        self.etcd = EtcdCluster.on_loopback(
            self.data_dir / "etcd",
            SIZE,
            client_ports=p.etcd_client,
            peer_ports=p.etcd_peer,
            log_dir=self.logs,
            token=ETCD_TOKEN,
            pass_fds=self.pass_fds,
            tls=sec.etcd_tls if sec is not None else None,
        )
        for server in self.servers:
            keep_previous(server.log_file)
            self._start_server(server, timeout)
        try:
            self.etcd.start(timeout)
        except (RuntimeError, TimeoutError, OSError) as exc:
            raise CliError(str(exc), FAILED) from exc
        log.info(
            "nats cluster ready on %s; etcd ready on %s",
            self.nats_url,
            ",".join(p.etcd_endpoints),
        )

    def _start_server(self, server: NatsServer, timeout: float) -> None:
        def in_use() -> str:
            return (
                f"a port of {server.url if server.bound_port else server.port} is already "
                "in use (another confbus up?): pick others with --nats-port and --etcd-port"
            )

        start_nats(server, in_use, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """The NATS servers together, then the etcd members one at a time (EtcdCluster.stop).
        SIGKILL after ``timeout``."""
        running = [s for s in self.servers if s.running()]
        for server in running:
            if server.proc is not None:
                server.proc.terminate()
        for server in running:
            server.stop(timeout)
        members = [m for m in self.etcd.members if m.running()]
        self.etcd.stop(timeout)
        if running or members:
            log.info("nats cluster and etcd stopped")

    # -- while serving ---------------------------------------------------------------------------

    async def wait_jetstream(self, bus: Bus, timeout: float = 30.0) -> None:
        """Until the JetStream meta leader counts every server as a current peer and answers
        for the account (provisioning needs it). A leader elected by the first two servers
        can lose its place when the third joins; a stream created just then is refused and
        then not found."""
        with anyio.fail_after(timeout):
            while True:
                if await anyio.to_thread.run_sync(self._meta_group_formed):
                    break
                await anyio.sleep(0.1)  # poll while the servers form the meta group
            while True:
                try:
                    await bus.js.account_info()
                    return
                except (nats.errors.Error, nats.js.errors.Error):
                    await anyio.sleep(0.1)  # poll while the servers elect a meta leader

    def _meta_group_formed(self) -> bool:
        """Whether a server leads the meta group with every other one current (its ``/jsz``:
        only the leader's view of its peers is up to date)."""
        context, scheme = None, "http"
        if self.security is not None:  # https, verified by the stack's CA
            context, scheme = ssl.create_default_context(cafile=str(self.security.ca)), "https"
        for server, port in zip(self.servers, self.ports.monitor, strict=True):
            url = f"{scheme}://127.0.0.1:{port}/jsz"
            try:
                with urllib.request.urlopen(url, timeout=1, context=context) as r:
                    meta = json.loads(r.read()).get("meta_cluster") or {}
            except (OSError, ValueError):
                continue
            peers = meta.get("replicas") or []
            leads = server.cluster is not None and meta.get("leader") == server.cluster.name
            if leads and len(peers) == SIZE - 1 and all(p.get("current") for p in peers):
                return True
        return False

    async def wait_streams(self, bus: Bus, timeout: float = 30.0) -> None:
        """Until every stream and bucket has a leader. A cluster started again on its stores
        (after a stop, or a crash of ``confbus up``) elects one per stream after it answers
        for the account, and a service that asks first times out before it is ready."""
        names = [s.name for s in streams_for(SIZE)] + [f"KV_{b.name}" for b in BUCKETS]
        with anyio.fail_after(timeout):
            for name in names:
                while True:
                    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                        info = await bus.js.stream_info(name)
                        if info.cluster is None or info.cluster.leader:
                            break
                    await anyio.sleep(0.1)  # poll while that stream elects its leader

    async def watch(self, on_restart: Callable[[], None] | None = None) -> None:
        """Restart any nats-server or etcd member that died, on the same ports and data."""
        watched = [
            *(Watched(f"nats-{i}", s, s.log_file) for i, s in enumerate(self.servers, 1)),
            *(Watched(f"etcd {m.name}", m, m.log_path) for m in self.etcd.members),
        ]
        await keep_running(watched, on_restart)
