"""The change workload (CI proposing configs) and its check, for the scenarios that hurt the
path from a publish to a stored version: redelivery storms, NATS leader kills and partitions,
version-store crashes.

Writers propose changes with ``Nats-Msg-Id`` and retry a failed publish *with the same id*
(as CI does), each attempt recorded in the history. A change is **accepted** once one attempt
got JetStream's ack. After the faults are healed the workload drains: every accepted change
must end as a stored version or a rejection (docs/design.md §8.1). Then the store is read directly
(the SQLite file, after the service stopped) and the events stream is scanned:

- ``lost``: accepted changes neither stored nor rejected (dead-lettered good changes count);
- ``duplicates``: a change id stored at two versions, or two ``version.created`` for a version;
- ``unexpected``: a stored change id nobody proposed; ``gaps``: version numbers missing;
- poison messages: each must be in ``CFG_DLQ`` exactly once and never stored.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import PubAck

from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import ConfbusError
from confbus.schemas import subjects
from confbus.schemas.api import store as store_api
from confbus.schemas.api.store import ChangeStatusRequest
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.dlq import decode_dead_letter
from confbus.schemas.events import VersionCreated, VersionRejected, decode_event
from confbus.schemas.streams import CFG_CHANGES, CFG_DLQ
from confbus.version_store.storage.sqlite import SqliteStore
from tests.faults import ops
from tests.faults.audit import created_events, read_events, read_stream
from tests.faults.history import History
from tests.faults.results import Figures
from tests.faults.wait import until

NS = "orders"


def content_of(change_id: str) -> bytes:
    return f'{{"change": "{change_id}", "pad": "{"x" * 64}"}}\n'.encode()


@dataclass
class Workload:
    bus: Bus
    history: History = field(default_factory=History)
    accepted: set[str] = field(default_factory=set)
    attempted: set[str] = field(default_factory=set)
    announced: set[str] = field(default_factory=set)  # change ids with a version.* event seen
    poison_seqs: dict[int, str] = field(default_factory=dict)  # CFG_CHANGES seq -> kind
    poison_unknown: int = 0
    writer_buses: list[Bus] = field(default_factory=list)  # writer w uses [w % n] (or ``bus``)
    accepted_at: dict[str, float] = field(default_factory=dict)  # monotonic
    announced_at: dict[str, float] = field(default_factory=dict)
    stop: anyio.Event = field(default_factory=anyio.Event)
    _sub: object | None = None

    async def watch_events(self) -> None:
        async def on_event(msg: Msg) -> None:
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                ev = decode_event(msg.data)
                if isinstance(ev, VersionCreated | VersionRejected):
                    self.announced.add(ev.change_id)
                    self.announced_at.setdefault(ev.change_id, time.monotonic())

        self._sub = await self.bus.nc.subscribe(subjects.event(NS, "version.*"), cb=on_event)

    async def writer(
        self, w: int, *, count: int | None = None, rate: float = 50.0, retries: int = 40
    ) -> None:
        """Propose changes until ``stop`` (or ``count``), ~``rate`` per second."""
        i = 0
        while not self.stop.is_set() and (count is None or i < count):
            change_id = f"w{w}-{i}"
            i += 1
            self.attempted.add(change_id)
            await self.propose_until_acked(f"w{w}", change_id, retries, w)
            await anyio.sleep(1.0 / rate)  # pacing the load, not synchronisation

    async def propose_until_acked(
        self, process: str, change_id: str, retries: int, w: int = 0
    ) -> bool:
        content = content_of(change_id)
        bus = self.writer_buses[w % len(self.writer_buses)] if self.writer_buses else self.bus

        async def attempt() -> PubAck:
            return await ops.propose(bus, NS, change_id, content)

        for _ in range(retries):
            if await self.history.run(process, "publish", NS, change_id, attempt) is not None:
                self.accepted.add(change_id)
                self.accepted_at.setdefault(change_id, time.monotonic())
                return True
            await anyio.sleep(0.2)  # CI's retry delay, same change id
        return False

    async def poison(self, kinds: Iterable[str]) -> None:
        """Messages that can never succeed: each must be dead-lettered."""
        for n, kind in enumerate(kinds):
            if kind == "garbage":
                data = b"\xff not json " + bytes([n % 256])
            elif kind == "wrong-namespace":
                data = encode(
                    ChangeProposed(namespace="elsewhere", change_id=f"p{n}", content=b"{}")
                )
            else:  # "bug": validation raises every time (tests.faults.shims.version_store)
                data = encode(
                    ChangeProposed(namespace=NS, change_id=f"poison-{n}", content=b'{"a": 1}')
                )
            try:
                ack = await self.bus.js.publish(subjects.change(NS), data, timeout=5)
                self.poison_seqs[ack.seq] = kind
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                self.poison_unknown += 1

    def store_delay(self) -> float | None:
        """Longest time from a change's acceptance to its announcement (seen live)."""
        delays = [
            self.announced_at[c] - t for c, t in self.accepted_at.items() if c in self.announced_at
        ]
        return round(max(delays), 3) if delays else None

    async def drain(self, timeout: float) -> set[str]:
        """Until every accepted change is announced (asking the store for those whose event
        we missed). Returns the ones still unresolved at the deadline."""
        pending = self.accepted - self.announced
        with anyio.move_on_after(timeout):
            while pending:
                for change_id in sorted(pending)[:50]:
                    with contextlib.suppress(ConfbusError):
                        st = await call(
                            self.bus,
                            store_api.CHANGE_STATUS,
                            ChangeStatusRequest(namespace=NS, change_id=change_id),
                            timeout=2,
                        )
                        if st.status != "unknown":
                            self.announced.add(change_id)
                pending = self.accepted - self.announced
                if pending:
                    await anyio.sleep(0.2)  # poll interval
        return pending

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]


async def changes_pending(bus: Bus) -> int:
    info = await bus.js.stream_info(CFG_CHANGES.name)
    return int(info.state.messages)


async def wait_consumed(bus: Bus, timeout: float) -> bool:
    """Until ``CFG_CHANGES`` is empty (a work queue: every message acked or terminated)."""

    async def empty() -> bool:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            return await changes_pending(bus) == 0
        return False

    return await until(empty, timeout, every=0.2)


@dataclass
class StoreFacts:
    by_change: dict[str, list[int]]
    versions: list[int]
    integrity_ok: bool


async def read_store(path: Path) -> StoreFacts:
    """The SQLite store itself (the service is stopped): every version of ``NS``."""
    async with SqliteStore(path) as store:
        infos = await store.history(NS, limit=1_000_000)
        report = await store.check_integrity(NS) if infos else None
    by_change: dict[str, list[int]] = {}
    for info in infos:
        by_change.setdefault(info.change_id, []).append(info.version)
    return StoreFacts(by_change, sorted(i.version for i in infos), report is None or report.ok)


async def drain(fig: Figures, wl: Workload, bus: Bus, timeout: float) -> bool:
    """Until every accepted change is consumed and every unknown outcome resolved (each for at
    most ``timeout``); how long it took in ``notes["drain_s"]``; whether both happened."""
    started = time.monotonic()
    consumed = await wait_consumed(bus, timeout)
    unresolved = await wl.drain(timeout)
    fig.notes["drain_s"] = round(time.monotonic() - started, 2)
    return consumed and not unresolved


def add_publishes(fig: Figures, wl: Workload, *, drained: bool) -> None:
    """The workload's publishes in ``fig``: their outcomes, availability and rates around the
    faults, the longest time none was accepted; and whether the end drained (every accepted
    change consumed, every unknown outcome resolved)."""
    fig.notes["drained"] = int(drained)
    fig.add_history(wl.history, "publish")
    fig.longest_unavailable_s = wl.history.longest_gap("publish")


async def check(
    fig: Figures,
    wl: Workload,
    bus: Bus,
    store: StoreFacts,
) -> None:
    """Fill the safety counts of ``fig`` from the store, the events and the DLQ."""
    events = await read_events(bus, NS)
    rejected = {ev.change_id for _, ev in events if isinstance(ev, VersionRejected)}
    dead: Counter[int] = Counter()
    dead_good: set[str] = set()
    for m in await read_stream(bus, CFG_DLQ.name, subjects.dlq(CFG_CHANGES.name)):
        letter = decode_dead_letter(m.data)
        if letter.stream_seq is not None:
            dead[letter.stream_seq] += 1
        with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
            change = msgspec.json.decode(letter.data, type=ChangeProposed)
            if change.change_id in wl.attempted:
                dead_good.add(change.change_id)

    stored = set(store.by_change)
    # Accepted changes that are neither stored nor rejected; a dead-lettered good change is
    # one of them (the DLQ is for messages that can never succeed).
    lost = {c for c in wl.accepted if c not in stored and c not in rejected}
    fig.lost = len(lost)
    created = created_events(events)
    fig.duplicates = sum(len(v) - 1 for v in store.by_change.values() if len(v) > 1) + sum(
        n - 1 for n in created.values() if n > 1
    )
    # An announced version must be in the store, under the change id it was announced for.
    announced_missing = sum(
        1
        for _, ev in events
        if isinstance(ev, VersionCreated)
        and ev.version not in store.by_change.get(ev.change_id, [])
    )
    # A stored version nobody announced is missing from the audit log (invariant 8).
    unannounced = sum(1 for v in store.versions if created[v] == 0)
    expected = list(range(1, len(store.versions) + 1))
    poisoned_stored = sum(1 for c in stored if c.startswith("poison-"))
    fig.safety = {
        "unexpected": len(stored - wl.attempted - {c for c in stored if c.startswith("poison-")}),
        "version_gaps": len(set(expected) - set(store.versions)),
        "announced_missing": announced_missing,
        "stored_not_announced": unannounced,
        "integrity_failures": 0 if store.integrity_ok else 1,
        "poison_not_dead_lettered": sum(1 for seq in wl.poison_seqs if dead[seq] == 0),
        "poison_dead_lettered_twice": sum(1 for seq in wl.poison_seqs if dead[seq] > 1),
        "poison_stored": poisoned_stored,
    }
    fig.notes.update(
        {
            "accepted": len(wl.accepted),
            "stored": len(stored),
            "rejected": len(rejected),
            "good_changes_dead_lettered": len(dead_good),
            "poison_messages": len(wl.poison_seqs),
            "version_created_events": sum(created.values()),
        }
    )
    delay = wl.store_delay()
    if delay is not None:
        fig.notes["accept_to_stored_max_s"] = delay
    if lost:
        fig.notes["lost_sample"] = ",".join(sorted(lost)[:5])
