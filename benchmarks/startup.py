"""The CLI's start-up, as CI pays it: whole processes, timed from spawn to exit.

- ``confbus --help``: beside a bare interpreter of the same venv (``python -c pass``), the
  floor of any Python command; target ≤ 120 ms.
- ``confbus publish NS FILE --wait`` to 10 agents (real ``confbus agent`` processes, the
  version-store, distributor and coordinator running): beside ``benchmarks/raw_publish.py``, a
  plain nats-py script doing the same two-round fan-out and fsynced publish to 10 subscribers
  doing the agents' file work, also a whole process; target ≤ 1.5× it.

The two kinds of process alternate, so load on the shared machine falls on both alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from benchmarks.baselines import SubscriberFleet, ensure_bench_stream
from benchmarks.fleets import AgentFleet, AgentSpec, wait_heartbeats
from benchmarks.processes import REPO, Context, open_bus, version_store_available
from benchmarks.report import Figure, stats
from benchmarks.switch import config_bytes

BENCH = "startup"
PYTHON = sys.executable
CONFBUS = str(Path(sys.executable).with_name("confbus"))
RAW_PUBLISH = str(REPO / "benchmarks" / "raw_publish.py")


def bytecode_env(ctx: Context) -> dict[str, str]:
    """The environment of the timed processes: the benchmark's own (``Context.env``: bytecode
    cached, as an installed package has it)."""
    return {**os.environ, **ctx.env}


@dataclass(frozen=True)
class Run:
    wall_ms: float  # spawn to exit
    cpu_ms: float  # the process's own user + system time: what load on the machine does not add


def timed(argv: list[str], env: dict[str, str], timeout: float = 60.0) -> Run:
    """One whole process, which must exit 0."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        took = (time.perf_counter() - started) * 1000
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            text = err.read().decode(errors="replace")[-500:]
            raise RuntimeError(f"{' '.join(argv[:4])}… exited {proc.returncode}: {text}")
    return Run(took, (usage.ru_utime + usage.ru_stime) * 1000)


async def _help(ctx: Context) -> Figure:
    runs = 3 if ctx.smoke else 20
    runs_of: dict[str, list[Run]] = {"help": [], "bare": []}
    env = bytecode_env(ctx)
    for _ in range(runs + 1):  # the first writes the bytecode and warms the page cache
        runs_of["help"].append(await anyio.to_thread.run_sync(timed, [CONFBUS, "--help"], env))
        runs_of["bare"].append(await anyio.to_thread.run_sync(timed, [PYTHON, "-c", "pass"], env))
    ms, bare = (runs_of[k][1:] for k in ("help", "bare"))
    return Figure(
        benchmark=BENCH,
        name="`confbus --help`, whole process",
        unit="ms",
        value=stats([r.wall_ms for r in ms]),
        baseline=stats([r.wall_ms for r in bare]),
        baseline_name="bare interpreter, `python -c pass`",
        params={"cpu_ms": _cpu(ms), "baseline_cpu_ms": _cpu(bare)},
        notes=f"median CPU ms (user+sys) {_cpu(ms):.0f}, bare interpreter {_cpu(bare):.0f}; "
        "`python -X importtime -m confbus.cli.main --help` shows what it imports; "
        "tests/cli/test_startup.py keeps nats-py and the client out of it",
    ).target_median(120.0)


async def _publish(ctx: Context) -> Figure | None:
    n = 10
    runs = 2 if ctx.smoke else 15
    nats = ctx.start_nats()
    namespace = "startup"
    nodes = [f"n{i:02d}" for i in range(n)]
    specs = [AgentSpec(node, (namespace,)) for node in nodes]
    bus = await open_bus(nats.url, "bench-startup")
    try:
        await ensure_bench_stream(bus)
        store = ctx.path("store") / "store.db"
        ctx.service("version_store", nats.url, "--store", f"sqlite://{store}")
        ctx.service("coordinator", nats.url)
        heartbeat = 0.5 if ctx.smoke else 2.0
        AgentFleet(
            ctx, nats.url, ctx.path("fleet"), specs, processes=n, heartbeat_interval=heartbeat
        ).start()
        SubscriberFleet(ctx, nats.url, ctx.path("floor"), specs, processes=n).start()
        await wait_heartbeats(bus, nodes)
        if ctx.try_service("distributor", nats.url, "--heartbeat-interval", str(heartbeat)) is None:
            return None
        files = ctx.path("files")
        env = bytecode_env(ctx)
        cli: list[Run] = []
        raw: list[Run] = []
        for i in range(runs + 1):  # the first warms the distributor, bytecode and page cache
            path = files / f"v{i}.json"
            path.write_bytes(config_bytes(i + 1))
            argv = [CONFBUS, "--nats-url", nats.url, "publish", namespace, str(path), "--wait"]
            took = await anyio.to_thread.run_sync(timed, argv, env)
            raw_argv = [PYTHON, RAW_PUBLISH, nats.url, namespace, str(n), str(path)]
            floor = await anyio.to_thread.run_sync(timed, raw_argv, env)
            if i:
                cli.append(took)
                raw.append(floor)
    finally:
        await bus.close()
    return Figure(
        benchmark=BENCH,
        name=f"`confbus publish --wait` to {n} agents, whole process",
        unit="ms",
        value=stats([r.wall_ms for r in cli]),
        baseline=stats([r.wall_ms for r in raw]),
        baseline_name="raw nats-py script: read FILE, 2 fan-out rounds + JS publish, whole process",
        params={"agents": n, "cpu_ms": _cpu(cli), "baseline_cpu_ms": _cpu(raw)},
        notes=f"median CPU ms (user+sys) {_cpu(cli):.0f}, raw script {_cpu(raw):.0f}; "
        f"{n} `confbus agent` processes; version-store (SQLite), distributor and "
        "coordinator processes; a new version each run; interpreter start and imports included "
        "on both sides, bytecode cached",
    ).target_ratio(1.5)


def _cpu(runs: list[Run]) -> float:
    return round(stats([r.cpu_ms for r in runs]).median, 1)


async def run(ctx: Context) -> list[Figure]:
    figures = [await _help(ctx)]
    if version_store_available():
        publish = await _publish(ctx)
        if publish is not None:
            figures.append(publish)
    return figures
