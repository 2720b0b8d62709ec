"""Time travel: ``status --at`` over a long audit log, beside the raw cost of reading it.

A real nats-server; ``CFG_EVENTS`` filled with 1,000,000 events of one namespace of 1,000 nodes
(the smoke run: 10,000 events, 100 nodes) — versions rolled out in 10 waves, aborted switches,
catch-ups, liveness changes and rollbacks (``benchmarks.fleetgen``), published in atomic
batches; a real historian process folds them into checkpoints (``--every 2000``).

Figures:

1. **status --at, from checkpoints**: ``Client.status_at`` at random sequences, random times
   and the head (connect excluded: what one call costs a connected client, the CLI adds its
   process start). Baseline: reading every message of the log once with an ordered consumer,
   without decoding (the reader's own mechanism, minus the decoding and the fold) — the raw cost
   a reader without checkpoints would pay at least. Target:
   every call under 1 s.
2. **status --at, from the stream's start**: the same call with checkpoints ignored, folding
   every event up to the head (one call; the smoke run's log is small). Same baseline.
3. **historian fold rate**: events folded per second while catching up with the whole log.
   Baseline: the raw read rate of the same messages.

``python -m benchmarks.timetravel [--smoke]`` runs it alone; ``python -m benchmarks timetravel``
with the others.
"""

from __future__ import annotations

import itertools
import random
import sys
import time

import anyio
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from benchmarks.fleetgen import FleetGen
from benchmarks.processes import Context, open_bus, run_alone
from benchmarks.report import Figure, Target, stats
from confbus.client import Client
from confbus.client import _reconstruct as timeline
from confbus.client._fleet import fleet_at
from confbus.runtime.bus import Bus, Outgoing
from confbus.runtime.events import event_subject
from confbus.runtime.since import Moment
from confbus.schemas import subjects
from confbus.schemas.fleet import CURSOR_KEY, decode_cursor
from confbus.schemas.streams import CFG_CHECKPOINTS, CFG_EVENTS

BENCH = "timetravel"
NS = "payments"
EVERY = 2000
CHUNK = 20_000  # events encoded and published at a time (atomic batches of 1,000 inside)


async def fill(bus: Bus, events: int, nodes: int) -> float:
    """Publish ``events`` generated events; returns the seconds it took."""
    gen = FleetGen(NS, [f"node-{i:04d}" for i in range(nodes)], seed=42, waves=10)
    stream = itertools.islice(gen.events(), events)
    started = time.perf_counter()
    n = 0
    while chunk := list(itertools.islice(stream, CHUNK)):
        items = [Outgoing(event_subject(e), e, f"bench:{n + i}") for i, e in enumerate(chunk)]
        results = await bus.publish_batch(items, timeout=30.0)
        failed = [r for r in results if r is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} events not stored: {failed[0]!r}")
        n += len(chunk)
    return time.perf_counter() - started


async def raw_read(bus: Bus, last: int) -> float:
    """Seconds to read messages 1..last: an ordered consumer whose callback only looks at each
    message's sequence (the reader's own mechanism, without decoding or folding)."""
    done = anyio.Event()

    async def on_msg(msg: Msg) -> None:
        if msg.metadata.sequence.stream >= last:
            done.set()

    started = time.perf_counter()
    sub = await bus.js.subscribe(
        subjects.events_of(NS),
        stream=CFG_EVENTS.name,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        cb=on_msg,
    )
    try:
        with anyio.fail_after(1800):
            await done.wait()
    finally:
        await sub.unsubscribe()
    return time.perf_counter() - started


async def cursor_at(bus: Bus, last: int, timeout: float) -> float:
    """Wait (bounded) for the historian's cursor to cover ``last``; returns when it did."""
    kv = await bus.kv(CFG_CHECKPOINTS.name)
    started = time.perf_counter()
    with anyio.fail_after(timeout):
        while True:
            try:
                if decode_cursor((await kv.get(CURSOR_KEY)).value or b"").seq >= last:
                    return time.perf_counter() - started
            except nats.errors.Error:
                pass
            await anyio.sleep(0.2)  # polling a KV key until the historian gets there


async def run(ctx: Context) -> list[Figure]:
    events, nodes = (10_000, 100) if ctx.smoke else (1_000_000, 1000)
    server = ctx.start_nats()
    bus = await open_bus(server.url)
    try:
        fill_s = await fill(bus, events, nodes)
        last = (await bus.js.stream_info(CFG_EVENTS.name)).state.last_seq
        raw_s = await raw_read(bus, last)
        # The historian catches up with the whole log: its fold rate beside the raw read rate.
        ctx.service("historian", server.url, "--every", str(EVERY), "--idle", "1")
        fold_s = await cursor_at(bus, last, timeout=60 if ctx.smoke else 900)
        async with Client(server.url, name="bench") as client:
            edges = await timeline.bounds(client)
            rng = random.Random(7)
            moments: list[Moment] = [
                rng.randrange(1, last + 1) for _ in range(10 if ctx.smoke else 20)
            ]
            for seq in rng.sample(range(1, last + 1), 5):
                moments.append(await timeline.stored_time(client, seq) or seq)
            moments += [last] * 5
            took, read = [], []
            for at in moments:
                started = time.perf_counter()
                view = await client.status_at(NS, at)
                took.append(time.perf_counter() - started)
                read.append(view.events_read)
                assert len(view.nodes) == nodes, (at, len(view.nodes))
            started = time.perf_counter()
            rec = await timeline.reconstruct(client, NS, last, edges, checkpoints=False)
            fleet_at(rec.state, at=None)
            scratch_s = time.perf_counter() - started
    finally:
        await bus.close()
    raw = stats([raw_s])
    params = {"events": last, "nodes": nodes, "every": EVERY, "fill_s": round(fill_s, 1)}
    at_fig = Figure(
        benchmark=BENCH,
        name="status --at (from checkpoints)",
        unit="s",
        value=stats(took),
        baseline=raw,
        baseline_name=f"read all {last:,} messages raw (no decode)",
        params={**params, "events_read_median": sorted(read)[len(read) // 2]},
        notes="random sequences, random times and the head; a connected client",
    )
    worst = max(took)
    at_fig.targets.append(Target("every call < 1 s", worst < 1.0, f"max {worst:.3f} s"))
    scratch = Figure(
        benchmark=BENCH,
        name="status --at (no checkpoint: from the stream's start)",
        unit="s",
        value=stats([scratch_s]),
        baseline=raw,
        baseline_name=f"read all {last:,} messages raw (no decode)",
        params=params,
    )
    rate = Figure(
        benchmark=BENCH,
        name="historian fold rate (catching up)",
        unit="events/s",
        better="higher",
        value=stats([last / fold_s]),
        baseline=stats([last / raw_s]),
        baseline_name="raw read rate (no decode)",
        params=params,
    )
    return [at_fig, scratch, rate]


def main(argv: list[str] | None = None) -> int:
    return run_alone(BENCH, run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
