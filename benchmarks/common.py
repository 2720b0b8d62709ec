"""What every benchmark shares: statistics, machine facts, the report, real processes.

A benchmark module exposes one coroutine::

    async def run(ctx: Context) -> list[Figure]

``ctx.smoke`` asks for a tiny version (the whole smoke run stays under a minute);
``ctx.start_nats()`` starts a fresh nats-server (JetStream, ``sync_interval: always``) and
``ctx.start_etcd()`` a single-member etcd (None when ``etcd`` is not on PATH); ``ctx.proc()``
starts a real process that prints a JSON ready line. Everything a context started is stopped
when the benchmark returns. Each ``Figure`` carries the confbus measurement and the raw
baseline measured in the same run; the ratio is derived from them.

Statistics: ``n``, ``median``, ``p90``, ``p99``, ``max`` (nearest-rank percentiles, so with
fewer than 100 samples p99 is the maximum: no interpolation flatters a small sample).

``python -m benchmarks.common agents --plan FILE`` is the agent host: it runs many real
``NodeAgent``s in one process, on a few NATS connections, each with its own live file and
state directory (every write fsynced, as in production). ``AgentFleet`` starts and stops them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio

from confbus.procs.nats import NatsServer, nats_server_binary
from confbus.procs.ports import free_ports
from confbus.runtime.bus import Bus, connect, provision

SCHEMA = "confbus-bench/1"
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# -- statistics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    n: int
    median: float
    p90: float
    p99: float
    max: float
    min: float
    mean: float


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def stats(samples: Sequence[float]) -> Stats:
    ordered = sorted(samples)
    n = len(ordered)
    if n == 0:
        raise ValueError("no samples")
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return Stats(
        n=n,
        median=median,
        p90=percentile(ordered, 90),
        p99=percentile(ordered, 99),
        max=ordered[-1],
        min=ordered[0],
        mean=sum(ordered) / n,
    )


# -- figures, targets -----------------------------------------------------------------------------

Better = Literal["lower", "higher"]


@dataclass
class Target:
    """One target of issue 8, judged on this run: ``what`` (e.g. ``p50 ≤ 100 ms``)."""

    what: str
    ok: bool
    detail: str = ""


@dataclass
class Figure:
    """One measured quantity, beside its raw baseline from the same run.

    ``ratio`` is confbus's cost in units of the baseline's: median/median when lower is
    better (latency), baseline/confbus when higher is better (a rate). 1.0 is the floor.
    """

    benchmark: str
    name: str
    unit: str
    value: Stats
    better: Better = "lower"
    baseline: Stats | None = None
    baseline_name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: str = ""
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline is not None:
            self.ratio = ratio_of(self.value, self.baseline, self.better)

    def target_ratio(self, limit: float) -> Figure:
        """Add the target ``ratio ≤ limit`` (e.g. 3× the raw baseline)."""
        if self.ratio is not None:
            ok = self.ratio <= limit
            self.targets.append(
                Target(
                    f"≤ {limit:g}× baseline",
                    ok,
                    f"{self.ratio:.2f}×" + ("" if ok else f" ({self.ratio / limit:.2f}× over)"),
                )
            )
        return self

    def target_median(self, limit: float, label: str = "p50") -> Figure:
        """Add a target on the median: ``≤ limit`` (lower is better) or ``≥ limit``."""
        m = self.value.median
        if self.better == "lower":
            ok = m <= limit
            over = "" if ok else f" ({m / limit:.2f}× the target)"
            what = f"{label} ≤ {fmt(limit)} {self.unit}"
        else:
            ok = m >= limit
            over = "" if ok else f" ({m / limit:.2f}× the target)"
            what = f"{label} ≥ {fmt(limit)} {self.unit}"
        self.targets.append(Target(what, ok, f"{fmt(m)} {self.unit}{over}"))
        return self


def ratio_of(value: Stats, baseline: Stats, better: Better) -> float | None:
    if baseline.median <= 0 or value.median <= 0:
        return None
    if better == "lower":
        return value.median / baseline.median
    return baseline.median / value.median


def fmt(x: float) -> str:
    if x == 0 or not math.isfinite(x):
        return str(x)
    if abs(x) >= 100 or (abs(x) >= 1 and float(x).is_integer()):
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


# -- the machine ----------------------------------------------------------------------------------


def _meminfo_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _command_version(argv: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _package(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    etcd = shutil.which("etcd")
    git = _command_version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_mb": _meminfo_mb(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "nats_server": _command_version([nats_server_binary(), "--version"]),
        "etcd": _command_version([etcd, "--version"]) if etcd else None,
        "packages": {
            p: _package(p)
            for p in ("confbus", "nats-py", "msgspec", "anyio", "aiosqlite", "aetcd")
            if _package(p)
        },
        "git_commit": git,
        # This machine may be shared (other test runs): the load says how quiet it was.
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "filesystem_tmp": tempfile.gettempdir(),
    }


# -- the report -----------------------------------------------------------------------------------


@dataclass
class Report:
    started_at: str
    smoke: bool
    machine: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → status, s
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}


def markdown(report: Report) -> str:
    m = report.machine
    lines = [
        f"# confbus benchmarks{' (smoke)' if report.smoke else ''}",
        "",
        f"{report.started_at} · {m.get('cores')} cores ({m.get('cpu')}) · "
        f"{m.get('memory_mb')} MB · Linux {m.get('kernel')} · Python {m.get('python')} · "
        f"{m.get('nats_server')} · etcd {m.get('etcd') or 'absent'} · "
        f"commit {m.get('git_commit')} · {report.duration_s:.0f} s · load average "
        f"{m.get('loadavg_start')} → {m.get('loadavg_end')}",
        "",
        "Every figure beside its raw baseline from the same run. ratio = confbus median / "
        "baseline median (for rates: baseline / confbus); 1.0 is the floor. Percentiles are "
        "nearest-rank: with fewer than 100 samples p99 is the max.",
        "",
        "| benchmark | figure | n | median | p90 | p99 | max | baseline: median (p99) "
        "| ratio | targets |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for f in report.figures:
        v = f.value
        base = (
            f"{f.baseline_name}: {fmt(f.baseline.median)} ({fmt(f.baseline.p99)})"
            if f.baseline is not None
            else "—"
        )
        ratio = f"{f.ratio:.2f}×" if f.ratio is not None else "—"
        targets = "; ".join(
            f"{'✅' if t.ok else '❌'} {t.what}" + (f" ({t.detail})" if t.detail else "")
            for t in f.targets
        )
        lines.append(
            f"| {f.benchmark} | {f.name} [{f.unit}] | {v.n} | {fmt(v.median)} | {fmt(v.p90)} "
            f"| {fmt(v.p99)} | {fmt(v.max)} | {base} | {ratio} | {targets or '—'} |"
        )
    notes = [(f.name, f.notes) for f in report.figures if f.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- **{name}**: {note}" for name, note in notes]
    status = [
        f"- {name}: {info.get('status')}"
        + (f" — {info['detail']}" if info.get("detail") else "")
        + (f" ({info['seconds']:.0f} s)" if "seconds" in info else "")
        for name, info in report.benchmarks.items()
    ]
    if status:
        lines += ["", "Benchmarks run:", "", *status]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js = out / "results.json"
    md = out / "results.md"
    js.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    md.write_text(markdown(report))
    return js, md


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- processes ------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int | None:
    """Resident set size of one process (``VmRSS``), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time one process has used so far (``/proc/PID/stat``), in seconds."""
    try:
        # The command name (field 2) may hold spaces: count the fields after its ")".
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU time that groups of processes spend inside measured spans, summed over spans.

    Read beside the wall clock, it says whether a run is CPU-bound: on this machine two cores
    give at most 2 ms of CPU per ms of wall time, to every process of the run together."""

    def __init__(self, groups: dict[str, Sequence[int]]) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.spent = dict.fromkeys(self.groups, 0.0)
        self.spans = 0

    def _now(self) -> dict[str, float]:
        return {
            name: sum(c for pid in pids if (c := cpu_seconds(pid)) is not None)
            for name, pids in self.groups.items()
        }

    @contextlib.contextmanager
    def span(self, counted: bool = True) -> Iterator[None]:
        """Measure the ``with`` block; ``counted=False`` (a warm-up) measures nothing."""
        before = self._now() if counted else {}
        yield
        if counted:
            after = self._now()
            for name in self.groups:
                self.spent[name] += after[name] - before[name]
            self.spans += 1

    def per_span_ms(self) -> dict[str, float]:
        """Mean CPU ms per measured span, per group."""
        n = max(1, self.spans)
        return {name: round(sec * 1000 / n, 1) for name, sec in self.spent.items()}


class Proc:
    """A real process: stderr to a log file, stdout read line by line for its ready line."""

    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.ready: dict[str, Any] | None = None

    def start(self) -> Proc:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=self.env,
                cwd=REPO,
                start_new_session=True,
            )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line)

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: not ready in {timeout}s\n{self.log_tail()}")
            try:
                line = self.lines.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited {self.proc.returncode}\n{self.log_tail()}"
                    ) from None
                continue
            if '"event": "ready"' in line:
                self.ready = json.loads(line)
                return self.ready

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self) -> int | None:
        return rss_kb(self.pid) if self.alive() else None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Our own process group (start_new_session): nothing else is in it.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class Etcd:
    proc: Proc
    client_port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


def _wait_port(port: int, timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited\n{proc.log_tail()}")
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name}: port {port} not open in {timeout}s")


# -- the context a benchmark runs in --------------------------------------------------------------


@dataclass
class Context:
    """What a benchmark may start; everything is stopped when it returns (``close``)."""

    name: str
    smoke: bool
    workdir: Path
    skipped: list[str] = field(default_factory=list)  # what could not be measured, and why
    _stops: list[Callable[[], None]] = field(default_factory=list)

    def path(self, *parts: str) -> Path:
        p = self.workdir.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def logs(self) -> Path:
        return self.path("logs")

    def start_nats(self, name: str = "nats") -> NatsServer:
        server = NatsServer(data_dir=self.path(name), log_file=self.logs / f"{name}.log").start()
        self._stops.append(server.stop)
        return server

    def start_etcd(self, name: str = "etcd") -> Etcd | None:
        binary = shutil.which("etcd")
        if binary is None:
            return None
        client, peer = free_ports(2)
        argv = [
            binary,
            "--name",
            "e1",
            "--data-dir",
            str(self.workdir / name),
            "--listen-client-urls",
            f"http://127.0.0.1:{client}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"e1=http://127.0.0.1:{peer}",
        ]
        proc = Proc(name, argv, self.logs).start()
        self._stops.append(proc.stop)
        _wait_port(client, 20.0, proc)
        return Etcd(proc, client)

    def proc(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        timeout: float = 30.0,
    ) -> Proc:
        p = Proc(name, argv, self.logs, env).start()
        self._stops.append(p.stop)
        if wait_ready:
            p.wait_ready(timeout)
        return p

    def service(self, pkg: str, nats_url: str, *args: str, name: str | None = None) -> Proc:
        """``python -m confbus.<pkg>`` as a real process, waiting for its ready line."""
        argv = python_module(f"confbus.{pkg}", "--nats-url", nats_url, "--no-provision", *args)
        return self.proc(name or pkg, argv)

    def try_service(
        self, pkg: str, nats_url: str, *args: str, name: str | None = None
    ) -> Proc | None:
        """Like ``service``, but a service that does not start (being rewritten, broken) is
        noted in ``self.skipped`` and None returned: the figures that need it are left out."""
        try:
            return self.service(pkg, nats_url, *args, name=name)
        except (RuntimeError, TimeoutError) as exc:
            self.skipped.append(f"{name or pkg} did not start: {str(exc).splitlines()[-1][:200]}")
            return None

    def on_close(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)

    def close(self) -> None:
        while self._stops:
            with contextlib.suppress(Exception):
                self._stops.pop()()


async def open_bus(url: str, name: str = "bench") -> Bus:
    bus = await connect(url, name=name)
    await provision(bus)
    return bus


def version_store_available() -> bool:
    return (REPO / "services" / "version_store" / "__main__.py").exists()


# -- disk -----------------------------------------------------------------------------------------


def fsync_probe(directory: Path, count: int, size: int = 1024, threads: int = 1) -> float:
    """fsyncs per second of this disk: ``count`` new files of ``size`` bytes, each written and
    fsynced (the shape of a staged file), by ``threads`` writers at once."""
    directory.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)

    def one(i: int) -> None:
        fd = os.open(directory / f"probe-{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    started = time.perf_counter()
    if threads <= 1:
        for i in range(count):
            one(i)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(count)))
    elapsed = time.perf_counter() - started
    for i in range(count):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / f"probe-{i}")
    return count / elapsed


# -- many agents in a few processes ---------------------------------------------------------------


@dataclass(frozen=True)
class AgentSpec:
    node: str
    namespaces: tuple[str, ...]


def node_dirs(root: Path, node: str) -> tuple[Path, Path]:
    """(live file directory, state directory) of a benchmark node."""
    return root / "nodes" / node / "etc", root / "nodes" / node / "state"


def live_file(root: Path, node: str, namespace: str) -> Path:
    return node_dirs(root, node)[0] / f"{namespace}.conf"


def split(items: Sequence[AgentSpec], parts: int) -> list[list[AgentSpec]]:
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


class AgentFleet:
    """Real agents as real processes: one ``confbus agent`` per node when ``processes`` equals
    the number of nodes, else hosts of many ``NodeAgent``s on ``connections`` connections each."""

    def __init__(
        self,
        ctx: Context,
        nats_url: str,
        root: Path,
        agents: Sequence[AgentSpec],
        *,
        processes: int,
        connections: int = 2,
        heartbeat_interval: float = 2.0,
        tag: str = "agents",
    ) -> None:
        self.ctx = ctx
        self.nats_url = nats_url
        self.root = root
        self.agents = list(agents)
        self.processes = max(1, min(processes, len(self.agents)))
        self.connections = connections
        self.heartbeat_interval = heartbeat_interval
        self.tag = tag
        self.procs: list[Proc] = []

    @property
    def one_per_process(self) -> bool:
        return self.processes == len(self.agents)

    def describe(self) -> str:
        if self.one_per_process:
            return f"{len(self.agents)} `confbus agent` processes, 1 agent and 1 connection each"
        per = math.ceil(len(self.agents) / self.processes)
        return (
            f"{self.processes} processes × ≤{per} agents, "
            f"{self.connections} NATS connections per process"
        )

    def start(self, timeout: float = 120.0) -> AgentFleet:
        pending: list[Proc] = []
        if self.one_per_process:
            for spec in self.agents:
                etc, state = node_dirs(self.root, spec.node)
                etc.mkdir(parents=True, exist_ok=True)
                argv = python_module(
                    "confbus.agent",
                    "--nats-url",
                    self.nats_url,
                    "--node",
                    spec.node,
                    "--state-dir",
                    str(state),
                    "--heartbeat-interval",
                    str(self.heartbeat_interval),
                )
                for ns in spec.namespaces:
                    argv += ["--namespace", ns, "--path", str(live_file(self.root, spec.node, ns))]
                pending.append(self.ctx.proc(f"{self.tag}-{spec.node}", argv, wait_ready=False))
        else:
            for i, group in enumerate(split(self.agents, self.processes)):
                plan = self.root / f"{self.tag}-plan-{i}.json"
                plan.write_text(
                    json.dumps(
                        {
                            "nats_url": self.nats_url,
                            "root": str(self.root),
                            "connections": self.connections,
                            "heartbeat_interval": self.heartbeat_interval,
                            "agents": [
                                {"node": a.node, "namespaces": list(a.namespaces)} for a in group
                            ],
                        }
                    )
                )
                argv = python_module("benchmarks.common", "agents", "--plan", str(plan))
                pending.append(self.ctx.proc(f"{self.tag}-host-{i}", argv, wait_ready=False))
        for p in pending:
            # The agent CLI prints its ready line before joining the bus; the host after.
            p.wait_ready(timeout)
        # `confbus agent` says ready before it joins the bus: callers wait for every node's
        # first heartbeat (``wait_heartbeats``) rather than guess a sleep.
        self.procs = pending
        return self

    def rss_kb(self) -> list[int]:
        return [r for p in self.procs if (r := p.rss_kb()) is not None]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.proc is not None and p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.stop()
        self.procs = []


async def wait_heartbeats(bus: Bus, nodes: Sequence[str], timeout: float = 60.0) -> None:
    """Wait until every node has heartbeat once (its agent is on the bus and subscribed)."""
    from confbus.schemas import subjects

    waiting = set(nodes)
    done = anyio.Event()

    async def on_hb(msg: Any) -> None:
        node = msg.subject.split(".")[2]
        waiting.discard(node)
        if not waiting:
            done.set()

    sub = await bus.nc.subscribe(subjects.HEARTBEATS_ALL, cb=on_hb)
    try:
        with anyio.fail_after(timeout):
            await done.wait()
    finally:
        await sub.unsubscribe()


# -- the agent host process -----------------------------------------------------------------------

HOST_STATS = "bench.hosts.stats"
_fsyncs = [0]
_fsyncs_lock = threading.Lock()


def _count_fsyncs() -> None:
    """Count this process's fsyncs (the agents call ``os.fsync`` through the module, so a
    wrapper sees every one). Costs a lock per fsync: nothing beside the fsync itself."""
    real = os.fsync

    def counting(fd: Any) -> None:
        with _fsyncs_lock:
            _fsyncs[0] += 1
        real(fd)

    os.fsync = counting


async def gather_host_stats(bus: Bus, hosts: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Ask every agent host for its counters (fsyncs so far, agents, RSS)."""
    import secrets

    inbox = f"_INBOX.bench.{secrets.token_hex(8)}"
    replies: list[dict[str, Any]] = []
    done = anyio.Event()

    async def on_reply(msg: Any) -> None:
        replies.append(json.loads(msg.data))
        if len(replies) >= hosts:
            done.set()

    sub = await bus.nc.subscribe(inbox, cb=on_reply)
    try:
        await bus.nc.publish(HOST_STATS, b"", reply=inbox)
        with anyio.move_on_after(timeout):
            await done.wait()
    finally:
        await sub.unsubscribe()
    return replies


def _experiment(name: str) -> None:
    """``CONFBUS_BENCH_EXPERIMENT``: measure what a proposed agent change would buy, without
    changing the agent (for the profile write-up; never set in a benchmark run).

    ``no-seq-save``: the resume sequence is not written after each prepare and decision —
    the upper bound of folding it into the PREPARED / applied state writes.
    ``unsynced-staged``: the staged file is written without its two fsyncs (file, directory).
    ``inplace-staged``: the staged file is written at its name with one fsync (no directory
    fsync).
    ``no-history``: no history copy after an apply (an upper bound of making it cheaper)."""
    from confbus.agent.disk import NamespaceDisk

    if name == "no-seq-save":

        def keep_in_memory(self: NamespaceDisk, seq: int) -> None:
            return None

        NamespaceDisk.save_stream_seq = keep_in_memory  # type: ignore[method-assign]
    elif name == "unsynced-staged":
        # The upper bound of moving the staged file's two fsyncs (file, directory) off the
        # vote's path, e.g. into a PREPARED record that carries the bytes.
        def write_unsynced(self: NamespaceDisk, path: Path, content: bytes) -> None:
            path.write_bytes(content)

        NamespaceDisk._write_staged = write_unsynced  # type: ignore[method-assign]
    elif name == "inplace-staged":
        from benchmarks.baselines import stage_file  # the baseline's own prepare I/O

        def write_in_place(self: NamespaceDisk, path: Path, content: bytes) -> None:
            stage_file(path, content)

        NamespaceDisk._write_staged = write_in_place  # type: ignore[method-assign]
    elif name == "no-history":

        def remember_nothing(
            self: NamespaceDisk,
            version: int,
            data: bytes,
            *,
            durable: bool = True,
            reuse: int | None = None,
        ) -> None:
            return None

        NamespaceDisk._remember = remember_nothing  # type: ignore[method-assign]
    elif name:
        raise SystemExit(f"unknown experiment {name!r}")


async def _host(plan: dict[str, Any]) -> None:
    from confbus.agent.node import Binding, NodeAgent

    _experiment(os.environ.get("CONFBUS_BENCH_EXPERIMENT", ""))

    root = Path(plan["root"])
    hb = float(plan["heartbeat_interval"])
    agents = []
    for a in plan["agents"]:
        etc, state = node_dirs(root, a["node"])
        etc.mkdir(parents=True, exist_ok=True)
        agents.append(
            NodeAgent(
                node=a["node"],
                bindings=[
                    Binding(ns, str(live_file(root, a["node"], ns))) for ns in a["namespaces"]
                ],
                state_dir=str(state),
                heartbeat_interval_s=hb,
            )
        )
    buses = [
        await connect(plan["nats_url"], name=f"bench-agents-{os.getpid()}-{i}")
        for i in range(max(1, int(plan["connections"])))
    ]

    async def on_stats(msg: Any) -> None:
        with _fsyncs_lock:
            count = _fsyncs[0]
        info = {
            "pid": os.getpid(),
            "agents": len(agents),
            "fsyncs": count,
            "rss_kb": rss_kb(os.getpid()),
        }
        await buses[0].nc.publish(msg.reply, json.dumps(info).encode())

    await buses[0].nc.subscribe(HOST_STATS, cb=on_stats)
    try:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            # Real fleets do not heartbeat in lock-step: spread the starts of a big host over
            # one interval (a handful of agents in lock-step costs nothing).
            gap = hb / len(agents) if len(agents) > 20 else 0.0
            for i, agent in enumerate(agents):
                await tg.start(agent.run, buses[i % len(buses)])
                if gap:
                    await anyio.sleep(gap)
            for b in buses:
                await b.nc.flush()
            print(
                json.dumps(
                    {
                        "event": "ready",
                        "service": "agent-host",
                        "agents": len(agents),
                        "connections": len(buses),
                        "pid": os.getpid(),
                    }
                ),
                flush=True,
            )
    finally:
        with anyio.CancelScope(shield=True):
            for b in buses:
                await b.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.common")
    sub = parser.add_subparsers(dest="cmd", required=True)
    host = sub.add_parser("agents", help="run many NodeAgents in this process (a plan file)")
    host.add_argument("--plan", required=True, type=Path)
    host.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    from confbus.runtime.log import setup_logging

    setup_logging("agent", args.log_level)
    _count_fsyncs()
    plan = json.loads(args.plan.read_text())
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_host, plan, backend="asyncio")
    return 0


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    started = time.perf_counter()
    yield lambda: time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
