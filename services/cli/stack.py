"""The supervisor behind ``confbus up``: one machine, one data directory, every service.

```
<data-dir>/
  confbus.lock       locked while a stack runs here; holds the pid of confbus up
  nats/              nats-server's config and its JetStream store (not with --nats-url)
  logs/<name>.log    each service's stderr (JSON lines); nats-server.log; up.log
  stack.json         while it runs: the NATS URL, and each service's pid, ports, restarts
  nats-1..3/ etcd/   with --ha instead of nats/: the NATS cluster and etcd members (ha.py)
```

Lock the directory → start nats-server → provision streams and buckets → start every service
as its own process, all at once → wait for each one's JSON ready line → print one line,
``confbus ready nats=… data=… services=name:port,…``. A service that exits before its first
ready line stops the whole start (exit 1, with its last log lines). One that crashes later is
restarted with backoff (doubling only while it keeps dying before, or within ``SERVED_S``
after, its ready line), on the same HTTP port, while the rest keep serving; so is
nats-server, on the same port and store (services reconnect by themselves).
SIGINT/SIGTERM: SIGTERM to every service, SIGKILL after ``stop_timeout``, then nats-server.
If ``confbus up`` itself dies (SIGKILL, the OOM killer), the kernel kills everything it
started (procs/spawn.py), and the next ``confbus up`` on the directory starts as usual.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import anyio
import nats.errors
import nats.js.errors
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from confbus.cli.datadir import DataDirLock
from confbus.cli.exitcodes import FAILED, OK, CliError
from confbus.cli.ha import HaCluster, HaPorts, HaSecurity, start_nats
from confbus.procs.nats import NatsServer
from confbus.procs.spawn import exit_text, guarded, keep_previous
from confbus.procs.watch import (
    RESTART_MAX_S,
    RESTART_MIN_S,
    STABLE_AFTER_S,
    Watched,
    keep_running,
    last_lines,
)
from confbus.runtime.bus import connect, provision
from confbus.runtime.errors import Unavailable
from confbus.runtime.log import JsonFormatter

log = logging.getLogger("confbus.up")

# A service that served this long after its ready line and then died (killed, crashed on
# something it met) restarts after RESTART_MIN_S: the backoff that doubles is for one that keeps
# dying before it is ready, or just after. Its peers take its leases over meanwhile (§4.6), and
# restarted under its own name it takes back what is still its own.
SERVED_S = 5.0

# Keys of a ready line that the stack line shows itself; any other `<name>_port` or
# `<name>_url` key is printed as `<name>=URL` (health-watcher's alertmanager_port, say).
_READY_KEYS = {"event", "service", "http_port"}


def _no_args(data_dir: Path, opts: argparse.Namespace) -> list[str]:
    return []


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the stack: run as ``python -m <module> --nats-url URL … <args>``."""

    name: str
    module: str
    args: Callable[[Path, argparse.Namespace], list[str]] = _no_args
    # Start only once this service was first ready: a second replica must not race the first
    # to create the same durable consumer (on a cluster that can time out at start-up).
    after: str | None = None
    # A user's own service (``--add-service``) is found the way ``python -m`` finds it, the
    # working directory first. confbus's own run with ``-P``: no folder in the directory
    # ``confbus up`` was started from (a project's own ``confbus/``) can stand in for them.
    user: bool = False

    def argv(self) -> list[str]:
        """The interpreter and module to run, before the stack's own arguments."""
        return [sys.executable, *(() if self.user else ("-P",)), "-m", self.module]

    def runnable(self) -> bool:
        """Whether ``python -m <module>`` would find something to run (without importing it)."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return False
        if spec is None:
            return False
        if spec.submodule_search_locations is None:
            return True  # a plain module
        return any(Path(p, "__main__.py").is_file() for p in spec.submodule_search_locations)


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path  # absolute
    services: Sequence[ServiceSpec]
    options: argparse.Namespace  # handed to each ServiceSpec.args
    nats_port: int = 4222  # 0: any free port
    nats_url: str | None = None  # an existing NATS: start none
    ready_timeout: float = 60.0
    stop_timeout: float = 10.0
    log_level: str = "info"
    verbose: bool = False
    # NATS credentials: to the services through their environment, never their argv.
    nats_user: str | None = None
    nats_password: str | None = None
    nats_creds: str | None = None
    tls_ca: str | None = None
    ha: HaPorts | None = None  # --ha: a NATS cluster and etcd on these ports (ha.py)
    ha_security: HaSecurity | None = None  # --ha --secure: certificates, route credentials
    # --secure / --tls-cert (security.py): more config for the embedded nats-server (the users
    # include, TLS), and more words for the ready line (where the credentials are).
    nats_config: str = ""
    announce: tuple[str, ...] = ()
    # Called once, right after the ready line, with each service's ready info: for what must
    # not be in the line (it is logged), such as the console's sign-in link.
    on_ready: Callable[[list[dict[str, Any]]], None] | None = None

    def service_env(self) -> dict[str, str]:
        env = {**os.environ, "CONFBUS_DATA_DIR": str(self.data_dir)}
        for name in ("nats_user", "nats_password", "nats_creds", "tls_ca"):
            if (value := getattr(self, name)) is not None:
                env[f"CONFBUS_{name.upper()}"] = value
        client = self.ha_security.etcd_client if self.ha_security is not None else None
        if client is not None:  # the version-store's way into etcd (paths, not secrets)
            env |= {"CONFBUS_ETCD_CA": str(client.ca), "CONFBUS_ETCD_CERT": str(client.cert),
                    "CONFBUS_ETCD_KEY": str(client.key)}  # fmt: skip
        return env


@dataclass
class Child:
    spec: ServiceSpec
    log_path: Path
    log_file: IO[bytes]  # appended to by every run: the service's stderr, stray stdout
    http_port: int = 0  # 0 until first ready; then kept across restarts (stable scrape targets)
    ready: dict[str, Any] | None = None
    pid: int | None = None
    restarts: int = 0
    log_offset: int = 0  # where the current run's lines start in log_path
    served_s: float | None = None  # how long its last run served after its ready line


@dataclass(frozen=True)
class Notice:
    kind: Literal["ready", "failed", "stop"]
    child: Child | None = None
    detail: str = ""


class Stack:
    stop_requested: anyio.Event  # set on SIGINT/SIGTERM or a failed start; made in the loop
    first_ready: dict[str, anyio.Event]  # per service: it was ready once

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.logs = config.data_dir / "logs"
        self.state_file = config.data_dir / "stack.json"
        self.lock_fd = -1
        self.nats: NatsServer | None = None
        self.cluster: HaCluster | None = None
        self.nats_url = ""
        self.children: list[Child] = []

    # -- synchronous shell: lock, nats-server, then the event loop ---------------------------

    def run(self) -> int:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        lock = DataDirLock(self.config.data_dir)
        self.lock_fd = lock.acquire()
        # Until the event loop handles signals itself, SIGTERM means what Ctrl-C means.
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            self.logs.mkdir(exist_ok=True)
            _setup_logging(self.logs / "up.log")
            for spec in self.config.services:
                path = self.logs / f"{spec.name}.log"
                self.children.append(Child(spec, path, open(path, "ab", buffering=0)))  # noqa: SIM115
            return self._run_locked()
        except KeyboardInterrupt:
            log.info("interrupted during start-up")
            return OK
        finally:
            # Services are down; a second Ctrl-C must not orphan nats-server now.
            interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._stop_nats()
            if self.cluster is not None:
                self.cluster.stop()
            self.state_file.unlink(missing_ok=True)
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGTERM, previous)
            for child in self.children:
                child.log_file.close()
            lock.release()

    def _run_locked(self) -> int:
        if self.config.ha is not None:
            self.cluster = HaCluster(
                self.config.data_dir,
                self.logs,
                self.config.ha,
                pass_fds=(self.lock_fd,),
                security=self.config.ha_security,
            )
            self.cluster.start()
            self.nats_url = self.cluster.nats_url
        elif self.config.nats_url is None:
            self.nats = self._start_nats()
            self.nats_url = self.nats.url
        else:
            self.nats_url = self.config.nats_url
        code: int = anyio.run(self._serve, backend="asyncio")
        return code

    def _start_nats(self) -> NatsServer:
        port = self.config.nats_port or -1
        server = NatsServer(
            data_dir=self.config.data_dir / "nats",
            port=port,
            log_file=self.logs / "nats-server.log",
            pass_fds=(self.lock_fd,),
            extra_config=self.config.nats_config,
        )
        keep_previous(self.logs / "nats-server.log")
        self.nats = server  # so that a start that times out is still stopped
        start_nats(
            server,
            lambda: (
                f"port {port} on 127.0.0.1 is already in use (another nats-server or "
                f"confbus up?): pick another with --nats-port, or use that NATS with "
                f"--nats-url nats://127.0.0.1:{port}"
            ),
        )
        log.info("nats-server ready on %s (pid %s)", server.url, _pid(server))
        return server

    def _stop_nats(self) -> None:
        if self.nats is not None and self.nats.running():
            self.nats.stop()
            log.info("nats-server stopped")

    # -- the event loop ------------------------------------------------------------------------

    async def _serve(self) -> int:
        self.stop_requested = anyio.Event()
        self.first_ready = {c.spec.name: anyio.Event() for c in self.children}
        await self._provision()
        children = self.children
        send, receive = anyio.create_memory_object_stream[Notice](math.inf)
        failure = ""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._on_signals, send.clone())
            if self.nats is not None:
                nats = Watched("nats-server", self.nats, self.logs / "nats-server.log")
                tg.start_soon(keep_running, [nats], self._state_changed)
            if self.cluster is not None:
                tg.start_soon(self.cluster.watch, self._state_changed)
            async with anyio.create_task_group() as supervisors:
                for child in children:
                    supervisors.start_soon(self._supervise, child, send.clone())
                failure = await self._until_stopped(children, receive)
                self.stop_requested.set()  # every supervisor stops its service and returns
            tg.cancel_scope.cancel()
        if failure:
            raise CliError(failure, FAILED)
        log.info("stopped")
        return OK

    async def _provision(self) -> None:
        bus = await connect(
            self.nats_url,
            name="confbus-up",
            max_reconnect_attempts=3,
            user=self.config.nats_user,
            password=self.config.nats_password,
            creds=self.config.nats_creds,
            tls_ca=self.config.tls_ca,
        )
        try:
            with anyio.fail_after(30):
                if self.cluster is not None:
                    await self.cluster.wait_jetstream(bus)
                await provision(bus, replicas=3 if self.cluster is not None else 1)
                if self.cluster is not None:
                    await self.cluster.wait_streams(bus)
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise Unavailable(
                f"NATS at {self.nats_url} has no JetStream (start nats-server with -js)"
            ) from exc
        except TimeoutError as exc:
            raise Unavailable(f"provisioning streams on {self.nats_url} timed out") from exc
        finally:
            await bus.close()

    async def _until_stopped(
        self, children: list[Child], notices: MemoryObjectReceiveStream[Notice]
    ) -> str:
        """Announce readiness once, report restarts; return a failure, or "" on a signal."""
        waiting = {c.spec.name for c in children}
        if not waiting:
            self._announce(children)
        async for notice in notices:
            if notice.kind == "stop":
                log.info("stopping (%s)", notice.detail)
                return ""
            child = notice.child
            assert child is not None
            if notice.kind == "failed":
                return f"{child.spec.name} {notice.detail}"
            if child.spec.name in waiting:
                waiting.discard(child.spec.name)
                if not waiting:
                    self._announce(children)
            elif not waiting:
                self._write_state(children)  # before saying so: readers trust the file then
                log.info(
                    "%s ready again (pid %s, http port %s, restart %s)",
                    child.spec.name,
                    child.pid,
                    child.http_port,
                    child.restarts,
                )
        return ""

    def _announce(self, children: list[Child]) -> None:
        line = ready_line(self.nats_url, self.config.data_dir, children)
        line = " ".join([line, *self.config.announce])
        self._write_state(children)  # first: whoever reads the line may read the file
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        log.info("ready", extra={"line": line})
        if self.config.on_ready is not None:
            self.config.on_ready([c.ready or {} for c in children])

    def _write_state(self, children: list[Child]) -> None:
        state = {
            "pid": os.getpid(),
            "nats_url": self.nats_url,
            "nats_pid": _pid(self.nats) if self.nats else None,
            **({"cluster": self.cluster.state()} if self.cluster is not None else {}),
            "data_dir": str(self.config.data_dir),
            "updated": datetime.now(UTC).isoformat(),
            "services": {
                c.spec.name: {"pid": c.pid, "restarts": c.restarts, "ready": c.ready}
                for c in children
            },
        }
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def _state_changed(self) -> None:
        if self.state_file.exists():
            self._write_state(self.children)  # new pids, once ready was announced

    async def _on_signals(self, send: MemoryObjectSendStream[Notice]) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                await send.send(Notice("stop", detail=signal.Signals(signum).name))

    # -- one service ---------------------------------------------------------------------------

    async def _supervise(self, child: Child, send: MemoryObjectSendStream[Notice]) -> None:
        if child.spec.after is not None and child.spec.after in self.first_ready:
            await _first_of(self.first_ready[child.spec.after], self.stop_requested)
            if self.stop_requested.is_set():
                return
        delay = RESTART_MIN_S
        while True:
            started = anyio.current_time()
            reason = await self._run_once(child, send)
            if self.stop_requested.is_set():
                return
            if child.ready is None:  # never got as far as ready: the start fails
                tail = await anyio.to_thread.run_sync(last_lines, child.log_path, child.log_offset)
                await send.send(Notice("failed", child, f"{reason}, so the stack stops{tail}"))
                return
            if anyio.current_time() - started >= STABLE_AFTER_S or (
                child.served_s is not None and child.served_s >= SERVED_S
            ):
                delay = RESTART_MIN_S  # it served: a crash, or a kill, not a crash loop
            child.restarts += 1
            log.warning(
                "%s %s; restarting in %gs (restart %s)",
                child.spec.name,
                reason,
                delay,
                child.restarts,
            )
            with anyio.move_on_after(delay):
                await self.stop_requested.wait()
            if self.stop_requested.is_set():
                return
            delay = min(delay * 2, RESTART_MAX_S)

    async def _run_once(self, child: Child, send: MemoryObjectSendStream[Notice]) -> str:
        """Run the service once; return why it ended."""
        cfg = self.config
        argv = [
            *child.spec.argv(),
            "--nats-url", self.nats_url,
            "--log-level", cfg.log_level,
            "--no-provision",  # done once, above
            *child.spec.args(cfg.data_dir, cfg.options),
            "--http-port", str(child.http_port),
        ]  # fmt: skip
        log_file = child.log_file
        child.log_offset = os.fstat(log_file.fileno()).st_size
        process = await anyio.open_process(
            guarded(argv),  # it dies with us, however we die (procs/spawn.py)
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if cfg.verbose else log_file,
            env=cfg.service_env(),
            pass_fds=(self.lock_fd,),
            start_new_session=True,  # Ctrl-C reaches us, and we stop services in order
        )
        child.pid = process.pid
        child.served_s = None
        was_ready = child.ready is not None
        started = anyio.current_time()
        info: dict[str, Any] | None = None
        # `io` lasts until stderr is read to its end: a crash's last lines matter most.
        async with process, anyio.create_task_group() as io:
            if cfg.verbose and process.stderr is not None:
                io.start_soon(_tee, process.stderr, log_file, child.spec.name)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._stop_on_request, process)
                assert process.stdout is not None
                lines = _LineReader(process.stdout)
                with anyio.move_on_after(cfg.ready_timeout) as deadline:
                    info = await _ready_line(lines, log_file)
                if info is not None:
                    child.ready = info
                    child.http_port = int(info.get("http_port") or 0)
                    self.first_ready[child.spec.name].set()
                    await send.send(Notice("ready", child))
                    ready_at = anyio.current_time()
                    while (line := await lines.readline()) is not None:
                        log_file.write(line + b"\n")  # stray stdout belongs in the log
                    child.served_s = anyio.current_time() - ready_at
                elif deadline.cancelled_caught:
                    process.kill()
                code = await process.wait()
                tg.cancel_scope.cancel()
        if info is not None:
            return f"{exit_text(code)} after {anyio.current_time() - started:.1f}s"
        if was_ready:
            child.http_port = 0  # maybe its old port is taken now: let it take any
        if deadline.cancelled_caught:
            return f"was not ready after {cfg.ready_timeout:g}s"
        return f"{exit_text(code)} before it was ready"

    async def _stop_on_request(self, process: Process) -> None:
        await self.stop_requested.wait()
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with anyio.move_on_after(self.config.stop_timeout):
            await process.wait()
            return
        log.warning(
            "pid %s still running %gs after SIGTERM: killing it",
            process.pid,
            self.config.stop_timeout,
        )
        with contextlib.suppress(ProcessLookupError):
            process.kill()


# -- helpers -----------------------------------------------------------------------------------


def ready_line(nats_url: str, data_dir: Path, children: Sequence[Child]) -> str:
    """``confbus ready nats=URL data=DIR services=name:port,… [<name>=URL …]``."""
    services = ",".join(f"{c.spec.name}:{c.http_port}" for c in children) or "none"
    parts = ["confbus ready", f"nats={nats_url}", f"data={data_dir}", f"services={services}"]
    extra: dict[str, list[str]] = {}  # replicas (--ha) list theirs comma-separated
    for c in children:
        ready = c.ready or {}
        for key, value in ready.items():
            if key in _READY_KEYS:
                continue
            if key.endswith("_url"):
                extra.setdefault(key.removesuffix("_url"), []).append(str(value))
            elif key.endswith("_port") and f"{key.removesuffix('_port')}_url" not in ready:
                url = f"http://127.0.0.1:{value}"
                extra.setdefault(key.removesuffix("_port"), []).append(url)
    parts += [f"{key}={','.join(urls)}" for key, urls in extra.items()]
    return " ".join(parts)


async def _first_of(*events: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)


class _LineReader:
    def __init__(self, stream: ByteReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def readline(self) -> bytes | None:
        """The next line without its newline; None at the end of the stream."""
        while b"\n" not in self.buffer:
            try:
                self.buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                rest, self.buffer = self.buffer, b""
                return rest or None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


async def _ready_line(lines: _LineReader, log_file: IO[bytes]) -> dict[str, Any] | None:
    while (line := await lines.readline()) is not None:
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj.get("event") == "ready":
            return obj
        log_file.write(line + b"\n")
    return None


async def _tee(stream: ByteReceiveStream, log_file: IO[bytes], name: str) -> None:
    lines = _LineReader(stream)
    while (line := await lines.readline()) is not None:
        log_file.write(line + b"\n")
        sys.stderr.write(f"[{name}] {line.decode(errors='replace')}\n")


def _pid(server: NatsServer | None) -> int | None:
    return server.proc.pid if server is not None and server.proc is not None else None


class _HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"confbus up: {record.getMessage()}"


def _setup_logging(path: Path) -> None:
    """Human lines on stderr; the same as JSON lines in ``logs/up.log``."""
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(_HumanFormatter())
    to_file = logging.FileHandler(path)
    to_file.setFormatter(JsonFormatter("up"))
    top = logging.getLogger("confbus")  # ours and the runtime's, used in this process
    top.handlers[:] = [to_stderr, to_file]
    top.setLevel(logging.INFO)
    top.propagate = False
    # Closing the provisioning connection is not news; nats-py repeats what we say once.
    logging.getLogger("confbus.bus").setLevel(logging.ERROR)
    logging.getLogger("nats").setLevel(logging.CRITICAL)
