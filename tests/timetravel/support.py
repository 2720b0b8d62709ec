"""A generated audit log on a real nats-server, the truth it implies, and a historian process."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

import nats.js.errors

from benchmarks.fleetgen import FleetGen
from confbus.procs.proc import Proc
from confbus.runtime.bus import Bus, Outgoing
from confbus.runtime.events import event_subject
from confbus.schemas.fleet import CURSOR_KEY, decode_cursor
from confbus.schemas.streams import CFG_CHECKPOINTS, CFG_EVENTS
from tests.helpers import eventually

Applied = dict[str, tuple[int, str]]


@dataclass
class Truth:
    """Per namespace, what every node held after each stream sequence."""

    at: dict[str, list[Applied]] = field(default_factory=dict)
    gens: dict[str, FleetGen] = field(default_factory=dict)

    def applied(self, namespace: str, seq: int) -> Applied:
        states = self.at[namespace]
        return states[min(seq, len(states) - 1)]


async def publish_log(
    bus: Bus, sizes: dict[str, int], *, nodes: int = 16, seed: int = 7, truth: Truth | None = None
) -> Truth:
    """Publish ``sizes[ns]`` generated events per namespace, interleaved at random, in one go
    (atomic batches); returns what each node held after each sequence."""
    rng = random.Random(seed)
    truth = truth or Truth()
    last = (await bus.js.stream_info(CFG_EVENTS.name)).state.last_seq
    gens = truth.gens
    for i, ns in enumerate(sizes):
        if ns not in gens:  # a namespace seen before goes on where it was
            gens[ns] = FleetGen(ns, [f"{ns}-n{i:02d}" for i in range(nodes)], seed=seed + i)
            truth.at[ns] = [{}] * (last + 1)
    streams = {ns: itertools.islice(gens[ns].events(), n) for ns, n in sizes.items()}
    items: list[Outgoing] = []
    remaining = dict(sizes)
    while any(remaining.values()):
        ns = rng.choice([n for n, left in remaining.items() if left])
        ev = next(streams[ns])
        remaining[ns] -= 1
        items.append(Outgoing(event_subject(ev), ev, f"gen:{last + len(items) + 1}"))
        for name, gen in gens.items():
            truth.at[name].append(dict(gen.applied))
    results = await bus.publish_batch(items)
    assert all(r is None for r in results), [r for r in results if r is not None][:3]
    return truth


def start_historian(url: str, logs: Path, *extra: str) -> Proc:
    return Proc.service("historian", url, logs, "--every", "97", "--idle", "0.3", *extra).start()


async def cursor_reaches(bus: Bus, timeout: float = 30.0) -> int:
    """Wait until the historian's cursor covers the whole stream; returns it."""
    last = (await bus.js.stream_info(CFG_EVENTS.name)).state.last_seq
    kv = await bus.kv(CFG_CHECKPOINTS.name)

    async def probe() -> int | None:
        try:
            cursor = decode_cursor((await kv.get(CURSOR_KEY)).value or b"")
        except nats.js.errors.KeyNotFoundError:
            return None
        return cursor.seq if cursor.seq >= last else None

    return await eventually(probe, timeout=timeout, every=0.1, what=f"cursor at seq {last}")


def applied_of(view: object) -> Applied:
    nodes = view.nodes  # type: ignore[attr-defined]
    return {n.node: (n.version, n.sha256) for n in nodes if n.applied == "known"}
