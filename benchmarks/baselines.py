"""Raw baselines: the floor a confbus operation is compared with, measured in the same run.

The floor of one atomic switch on N nodes is what any 2PC-shaped protocol must pay on this
machine, without confbus: **one fsynced JetStream publish** (the durable decision) and **two
rounds of plain NATS request/reply fan-out** to N subscribers that do the same node-side file
work as an agent —

- round 1 (prepare): write the staged file beside the live file and fsync it; reply;
- round 2 (commit): rename the staged file over the live file and fsync the directory; reply.

The subscribers run in the same process layout as the agents they stand for (``SubscriberFleet``
mirrors ``AgentFleet``), do their file work in worker threads as the agent does, and all share
this one disk — so their fsyncs are part of the floor (NOTES: raw costs).

``python -m benchmarks.baselines subscribers --plan FILE`` is the subscriber host process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig

from benchmarks.fleets import (
    Fleet,
    announce_ready,
    host_buses,
    live_file,
    node_dirs,
    run_host,
    split,
    start_hosts,
)
from confbus.runtime.bus import Bus
from confbus.runtime.log import setup_logging

BENCH_STREAM = "BENCH_BASE"
BENCH_SUBJECTS = "bench.js.>"


def round_subject(namespace: str, rnd: int) -> str:
    return f"bench.base.{namespace}.r{rnd}"


async def ensure_bench_stream(bus: Bus) -> None:
    """A file-backed stream on the same server (``sync_interval: always``): every publish
    is fsynced before its ack, like a decision record."""
    config = StreamConfig(
        name=BENCH_STREAM,
        subjects=[BENCH_SUBJECTS],
        storage=StorageType.FILE,
        max_bytes=256 * 1024 * 1024,
        max_msgs=1_000_000,
    )
    try:
        await bus.js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await bus.js.update_stream(config)


async def js_publish(bus: Bus, payload: bytes, subject: str = "bench.js.decision") -> float:
    """Seconds for one fsynced JetStream publish and its ack."""
    started = time.perf_counter()
    await bus.js.publish(subject, payload, timeout=10.0)
    return time.perf_counter() - started


async def fanout(bus: Bus, subject: str, payload: bytes, n: int, timeout: float = 60.0) -> float:
    """Seconds from one publish to ``n`` replies (request/reply fan-out to n subscribers)."""
    inbox = f"_INBOX.bench.{secrets.token_hex(8)}"
    got = 0
    done = anyio.Event()

    async def on_reply(_msg: Msg) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    sub = await bus.nc.subscribe(inbox, cb=on_reply)
    try:
        started = time.perf_counter()
        await bus.nc.publish(subject, payload, reply=inbox)
        with anyio.fail_after(timeout):
            await done.wait()
        return time.perf_counter() - started
    finally:
        await sub.unsubscribe()


async def switch_floor(
    bus: Bus, namespace: str, n: int, content: bytes, timeout: float = 60.0
) -> float:
    """One raw 'switch' on n subscribers: fsynced publish + prepare round + commit round."""
    total = await fanout(bus, round_subject(namespace, 1), content, n, timeout)
    total += await js_publish(bus, content)
    total += await fanout(bus, round_subject(namespace, 2), b"commit", n, timeout)
    return total


class SubscriberFleet(Fleet):
    """The baseline's stand-ins for agents, in the same process layout (one connection per
    process when each has one stand-in)."""

    default_tag = "subscribers"

    def start(self, timeout: float = 60.0) -> SubscriberFleet:
        alone = self.processes == len(self.agents)
        plan = {"nats_url": self.nats_url, "connections": 1 if alone else self.connections}
        groups = split(self.agents, self.processes)
        host = ("benchmarks.baselines", "subscribers")
        pending = start_hosts(self.ctx, host, self.tag, self.root, groups, plan)
        for p in pending:
            p.wait_ready(timeout)
        self.procs = pending
        return self


# -- the subscriber host --------------------------------------------------------------------------


def stage_file(staged: Path, data: bytes) -> None:
    """The baseline's prepare: the bytes written at the staged name, one fsync."""
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(staged: Path, live: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # a repeated commit: nothing staged
        os.replace(staged, live)
    fd = os.open(live.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _handlers(bus: Bus, live: Path, staged: Path) -> tuple[Any, Any]:
    async def prepare(msg: Msg) -> None:
        await anyio.to_thread.run_sync(stage_file, staged, msg.data)
        await bus.nc.publish(msg.reply, b"yes")

    async def commit(msg: Msg) -> None:
        await anyio.to_thread.run_sync(_commit, staged, live)
        await bus.nc.publish(msg.reply, b"applied")

    return prepare, commit


async def _subscribers(plan: dict[str, Any]) -> None:
    root = Path(plan["root"])
    async with host_buses(plan, "bench-subscribers") as buses:
        for i, a in enumerate(plan["agents"]):
            bus = buses[i % len(buses)]
            node = a["node"]
            node_dirs(root, node)[0].mkdir(parents=True, exist_ok=True)
            for ns in a["namespaces"]:
                live = live_file(root, node, ns)
                staged = live.with_name(f".{live.name}.staged")

                prepare, commit = _handlers(bus, live, staged)
                await bus.nc.subscribe(round_subject(ns, 1), cb=prepare)
                await bus.nc.subscribe(round_subject(ns, 2), cb=commit)
        await announce_ready(buses, "baseline-subscribers", subscribers=len(plan["agents"]))
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baselines")
    sub = parser.add_subparsers(dest="cmd", required=True)
    host = sub.add_parser("subscribers", help="baseline subscribers doing the agents' file work")
    host.add_argument("--plan", required=True, type=Path)
    args = parser.parse_args(argv)
    setup_logging("bench-subscribers", "warning")
    return run_host(_subscribers, args.plan)


if __name__ == "__main__":
    sys.exit(main())
