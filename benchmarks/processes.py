"""The processes a benchmark runs and what it measures of them.

A benchmark module exposes one coroutine::

    async def run(ctx: Context) -> list[Figure]

``ctx.smoke`` asks for a tiny version (the whole smoke run stays under a minute);
``ctx.start_nats()`` starts a fresh nats-server (JetStream, ``sync_interval: always``) and
``ctx.start_etcd()`` a single-member etcd (None when ``etcd`` is not on PATH); ``ctx.proc()``
starts a real process that prints a JSON ready line. They are ``confbus.procs``' launchers, the
same that ``confbus up`` and the tests use. Everything a context started is stopped when the
benchmark returns. ``CpuMeter``, ``rss_kb`` and ``fsync_probe`` measure the processes and the
disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from confbus.procs.etcd import EtcdCluster, etcd_binary
from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc
from confbus.runtime.bus import Bus, connect, provision

if TYPE_CHECKING:
    from benchmarks.report import Figure

REPO = Path(__file__).resolve().parent.parent


def rss_kb(pid: int, field: str = "VmRSS") -> int | None:
    """Resident set size of one process (``VmRSS``; ``VmHWM``: its peak so far), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
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
        # RSS (MB, summed over a group's processes) before the first measured span, and the
        # most seen at the end of one.
        self.rss_before: dict[str, float] = {}
        self.rss_after_max = dict.fromkeys(self.groups, 0.0)

    def _rss_mb(self, field: str = "VmRSS") -> dict[str, float]:
        return {
            name: sum(kb for pid in pids if (kb := rss_kb(pid, field)) is not None) / 1024
            for name, pids in self.groups.items()
        }

    def _now(self) -> dict[str, float]:
        return {
            name: sum(c for pid in pids if (c := cpu_seconds(pid)) is not None)
            for name, pids in self.groups.items()
        }

    @contextlib.contextmanager
    def span(self, counted: bool = True) -> Iterator[None]:
        """Measure the ``with`` block; ``counted=False`` (a warm-up) measures nothing."""
        if counted and not self.rss_before:
            self.rss_before = self._rss_mb()
        before = self._now() if counted else {}
        yield
        if counted:
            after = self._now()
            for name in self.groups:
                self.spent[name] += after[name] - before[name]
            self.spans += 1
            for name, mb in self._rss_mb().items():
                self.rss_after_max[name] = max(self.rss_after_max[name], mb)

    def memory_mb(self) -> dict[str, dict[str, float]]:
        """Per group: RSS before the measured spans, the most at the end of one, and the peak
        since each process started (``VmHWM``, so within a span too), in MB."""
        peak = self._rss_mb("VmHWM")
        return {
            name: {
                "before": round(self.rss_before.get(name, 0.0), 1),
                "after_max": round(self.rss_after_max[name], 1),
                "peak": round(peak[name], 1),
            }
            for name in self.groups
        }

    def per_span_ms(self) -> dict[str, float]:
        """Mean CPU ms per measured span, per group."""
        n = max(1, self.spans)
        return {name: round(sec * 1000 / n, 1) for name, sec in self.spent.items()}


# -- the context a benchmark runs in --------------------------------------------------------------


@dataclass
class Context:
    """What a benchmark may start; everything is stopped when it returns (``close``)."""

    name: str
    smoke: bool
    workdir: Path
    skipped: list[str] = field(default_factory=list)  # what could not be measured, and why
    _stops: list[Callable[[], object]] = field(default_factory=list)

    def path(self, *parts: str) -> Path:
        p = self.workdir.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def logs(self) -> Path:
        return self.path("logs")

    @property
    def env(self) -> dict[str, str]:
        """Set over the inherited environment of every process a benchmark starts: bytecode
        cached (under the work directory, not in the source tree), as an installed package has
        it. This machine sets ``PYTHONDONTWRITEBYTECODE``; with it every process compiled
        confbus's modules from source at each start: ~150 ms of ``compile`` in a CLI command,
        ~0.8 MB more RSS in an agent."""
        return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(self.path("pycache"))}

    def start_nats(self, name: str = "nats") -> NatsServer:
        server = NatsServer(data_dir=self.path(name), log_file=self.logs / f"{name}.log").start()
        self._stops.append(server.stop)
        return server

    def start_etcd(self, name: str = "etcd") -> EtcdCluster | None:
        """A single-member etcd, or None where etcd is not installed."""
        if etcd_binary() is None:
            return None
        cluster = EtcdCluster.on_loopback(self.path(name), log_dir=self.logs)
        self._stops.append(cluster.stop)
        return cluster.start(timeout=20.0)

    def proc(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        timeout: float = 30.0,
    ) -> Proc:
        p = Proc(name, argv, self.logs, {**self.env, **(env or {})}, cwd=REPO)
        p.start(wait_ready=False)
        self._stops.append(p.stop)
        if wait_ready:
            p.wait_ready(timeout)
        return p

    def service(self, pkg: str, nats_url: str, *args: str, name: str | None = None) -> Proc:
        """``python -m confbus.<pkg>`` as a real process, waiting for its ready line."""
        p = Proc.service(pkg, nats_url, self.logs, "--no-provision", *args, env=self.env, name=name)
        self._stops.append(p.stop)
        return p.start(timeout=30.0)

    def version_store(self, nats_url: str, tag: str) -> Proc:
        """The real version-store on its own SQLite file (``store-TAG/store.db``), named
        ``version_store-TAG``."""
        db = self.path(f"store-{tag}") / "store.db"
        return self.service(
            "version_store", nats_url, "--store", f"sqlite://{db}", name=f"version_store-{tag}"
        )

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

    def on_close(self, stop: Callable[[], object]) -> None:
        self._stops.append(stop)

    def close(self) -> None:
        while self._stops:
            with contextlib.suppress(Exception):
                self._stops.pop()()


def run_alone(
    bench: str,
    run: Callable[[Context], Awaitable[list[Figure]]],
    argv: Sequence[str] | None,
    description: str | None = None,
) -> int:
    """``python -m benchmarks.BENCH``: one benchmark on its own, its figures (and what it had
    to skip) as JSON on stdout; exit 1 when it measured nothing."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{bench}", description=description)
    parser.add_argument("--smoke", action="store_true", help="a tiny run")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"confbus-bench-{bench}-"))
    ctx = Context(name=bench, smoke=args.smoke, workdir=workdir)
    try:
        figures = anyio.run(run, ctx, backend="asyncio")
    finally:
        ctx.close()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    doc = {"benchmark": bench, "figures": [asdict(f) for f in figures], "skipped": ctx.skipped}
    text = json.dumps(doc, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0 if figures else 1


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
