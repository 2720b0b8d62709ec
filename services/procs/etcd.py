"""Start and stop real etcd members on loopback: ``confbus up --ha``'s version store, the etcd
tests' clusters and the store benchmark's single member.

``EtcdCluster.on_loopback(root, size)`` plans the members (``<root>/e1``, ``e2``, …, each log in
``<log_dir>/etcd-e1.log``), ``start`` runs them and returns once every one says it is healthy
(a leader exists). A member restarted on the same data dir rejoins with what it has there:
``--initial-cluster`` only matters the first time. Every wait polls ``/health`` with a deadline.

With ``tls`` (a ``TlsFiles`` per member) a member serves its client and its peer port over TLS
only, and takes only clients and peers with a certificate from the same CA
(``--client-cert-auth``, ``--peer-client-cert-auth``); a peer must moreover be a member, its
certificate's common name ``PEER_CN``. ``/health`` is then polled over HTTPS with the member's
own certificate.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confbus.procs import spawn
from confbus.procs.ports import free_ports
from confbus.procs.tls import TlsFiles

ETCD_HINT = "install etcd-server (apt-get install -y etcd-server)"
# The common name of every member's certificate: a peer must present it (--peer-cert-allowed-cn),
# so a client's certificate from the same CA does not make its holder a member.
PEER_CN = "etcd-peer"


def etcd_binary() -> str | None:
    found = shutil.which("etcd")
    if found:
        return found
    return "/usr/bin/etcd" if Path("/usr/bin/etcd").is_file() else None


@dataclass
class EtcdMember(spawn.Server):
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    initial_cluster: str  # name=peer-url,… of every member
    token: str  # the same for every member of one cluster, unique to it
    fast_election: bool = False
    pass_fds: tuple[int, ...] = ()  # ``confbus up``'s data-dir lock, as for nats-server
    die_with_parent: bool = True  # see spawn.py
    tls: TlsFiles | None = None  # its certificate (common name PEER_CN) and the cluster's CA
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def argv(self, binary: str) -> list[str]:
        client_url = f"{self.scheme}://{self.endpoint}"
        peer_url = f"{self.scheme}://127.0.0.1:{self.peer_port}"
        argv = [
            binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        if self.fast_election:
            # Failover in well under a second on loopback, so fault tests stay quick.
            argv += ["--heartbeat-interval", "50", "--election-timeout", "500"]
        if self.tls is not None:
            # (--trusted-ca-file alone already makes etcd ask for client certificates;
            # --client-cert-auth says so to whoever reads the command line)
            ca, cert, key = (str(p) for p in (self.tls.ca, self.tls.cert, self.tls.key))
            argv += [
                "--cert-file", cert, "--key-file", key,
                "--trusted-ca-file", ca, "--client-cert-auth",
                "--peer-cert-file", cert, "--peer-key-file", key,
                "--peer-trusted-ca-file", ca, "--peer-client-cert-auth",
                "--peer-cert-allowed-cn", PEER_CN,
            ]  # fmt: skip
        return argv

    def start(self) -> None:
        """Start the process (``EtcdCluster.wait_healthy`` waits for it to serve)."""
        binary = etcd_binary()
        if binary is None:
            raise FileNotFoundError(f"etcd not found: {ETCD_HINT}")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = spawn.spawn(
                self.argv(binary),
                die_with_parent=self.die_with_parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds,
                start_new_session=True,  # Ctrl-C reaches whoever started us, who stops us
            )

    def restart(self) -> None:
        """Start again on the same data: it rejoins its cluster with what it has there."""
        self.start()

    def healthy(self) -> bool:
        try:
            body = gateway(self.endpoint, "/health", self.tls, post=False)
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return bool(body.get("health") == "true")

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class EtcdCluster:
    members: list[EtcdMember] = field(default_factory=list)

    @classmethod
    def on_loopback(
        cls,
        root: Path,
        size: int = 1,
        *,
        client_ports: Sequence[int] = (),
        peer_ports: Sequence[int] = (),
        log_dir: Path | None = None,
        token: str = "",
        fast_election: bool = False,
        pass_fds: tuple[int, ...] = (),
        tls: Mapping[str, TlsFiles] | None = None,
    ) -> EtcdCluster:
        """``size`` members under ``root`` (not started), on the ports given or on free ones
        below the ephemeral range (members dial each other's peer ports while starting);
        with ``tls``, each member (``e1``, …) serves TLS with its files there."""
        if not client_ports or not peer_ports:
            ports = free_ports(2 * size)
            client_ports, peer_ports = ports[:size], ports[size:]
        names = [f"e{i + 1}" for i in range(size)]
        scheme = "https" if tls else "http"
        initial = ",".join(
            f"{name}={scheme}://127.0.0.1:{peer}"
            for name, peer in zip(names, peer_ports, strict=True)
        )
        logs = log_dir or root
        return cls(
            [
                EtcdMember(
                    name,
                    client,
                    peer,
                    root / name,
                    logs / f"etcd-{name}.log",
                    initial,
                    token or f"confbus-{root.resolve()}",  # unique to this cluster
                    fast_election,
                    pass_fds,
                    tls=tls[name] if tls else None,
                )
                for name, client, peer in zip(names, client_ports, peer_ports, strict=True)
            ]
        )

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member; return once all are healthy (stopping them all if not)."""
        try:
            for m in self.members:
                m.start()
            self.wait_healthy(self.members, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def store_url(self) -> str:
        """The version-store's ``--store`` for this cluster."""
        return "etcd://" + ",".join(self.endpoints)

    def member(self, name: str) -> EtcdMember:
        return next(m for m in self.members if m.name == name)

    def wait_healthy(self, members: Sequence[EtcdMember], timeout: float = 30.0) -> None:
        """``RuntimeError`` with its log if a member exits, ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            for m in list(pending):
                if not m.running():
                    raise RuntimeError(f"etcd {m.name} exited; last lines:\n  {m.log_tail()}")
                if m.healthy():
                    pending.remove(m)
            if pending and time.monotonic() > deadline:
                names = ", ".join(m.name for m in pending)
                raise TimeoutError(f"etcd members {names} not healthy after {timeout:g}s")
            if pending:
                time.sleep(0.05)  # poll interval while they elect a leader

    def kill(self, name: str) -> None:
        self.member(name).kill()

    def stop(self, timeout: float = 10.0) -> None:
        """One member at a time, SIGKILL after ``timeout``: members stopped together spend
        seconds each trying to hand leadership to a peer that is leaving too, while one at a
        time each stops in a tenth of a second."""
        for m in self.members:
            m.stop(timeout)


def leader_name(
    endpoints: Sequence[str], follower: bool = False, tls: TlsFiles | None = None
) -> str | None:
    """The name (e1, e2, …) of the member that leads now — or, with ``follower``, of one that
    does not — asked of the first member that answers; None while there is no leader."""
    for endpoint in endpoints:
        try:
            status = gateway(endpoint, "/v3/maintenance/status", tls)
            members = gateway(endpoint, "/v3/cluster/member/list", tls)["members"]
        except (OSError, ValueError, KeyError):
            continue
        names = {str(m["ID"]): str(m["name"]) for m in members}
        leader = str(status.get("leader", ""))
        if leader in names:
            if follower:
                return sorted(n for i, n in names.items() if i != leader)[0]
            return names[leader]
    return None


def gateway(
    endpoint: str, path: str, tls: TlsFiles | None = None, *, post: bool = True
) -> dict[str, Any]:
    """etcd's JSON gateway (no client library needed): over HTTPS with ``tls``'s certificate,
    verified against its CA, when the member serves TLS."""
    scheme = "https" if tls is not None else "http"
    context: ssl.SSLContext | None = tls.client_context() if tls is not None else None
    req = urllib.request.Request(
        f"{scheme}://{endpoint}{path}",
        data=b"{}" if post else None,
        method="POST" if post else "GET",
    )
    with urllib.request.urlopen(req, timeout=2, context=context) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body
