"""The rollout records in ``CFG_STATE`` (``rollout.<ns>``): a compare-and-set store with an
outbox, shared by the intent (``intent``), the controls and the driver (``driver``).

Each write is a compare-and-set on the copy of the record this replica holds (its own last
write, or what the watch showed): no read first, and a stale copy only costs a failed
compare-and-set and a read. The events of a write go out from the record's outbox right
after it, and are then dropped from the outbox by a write of their own — or, in front of a
switch, by the write of its outcome (a driver restarted meanwhile publishes them again: a
no-op, by their message ids).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from confbus.distributor import record as R
from confbus.distributor.metrics import DistributorMetrics
from confbus.runtime.bus import Bus
from confbus.runtime.events import emit
from confbus.runtime.kv import Entry, StateKV
from confbus.schemas import subjects
from confbus.schemas.api.dist import TERMINAL_STATES, RolloutInfo, decode_rollout_info
from confbus.schemas.state import rollout_key

Change = Callable[[RolloutInfo | None], RolloutInfo | None]


class Gone(Exception):
    """The record is no longer this driver's to move (another rollout, or ended)."""


@dataclass
class Rollouts:
    bus: Bus
    kv: StateKV
    metrics: DistributorMetrics
    instance: str
    records: dict[str, Entry[RolloutInfo]] = field(default_factory=dict)
    _wake: dict[str, anyio.Event] = field(default_factory=dict)
    _any: anyio.Event = field(default_factory=anyio.Event)
    # Revision of our last write of each record: while the record is still there, a step
    # starts from it instead of reading it back.
    _written: dict[str, int] = field(default_factory=dict)
    # Outbox items published but still in the stored record: the next write drops them.
    _sent: dict[str, set[str]] = field(default_factory=dict)

    async def read(self, namespace: str) -> Entry[RolloutInfo]:
        entry = await self.kv.read(rollout_key(namespace), decode_rollout_info)
        self._remember(namespace, entry)
        return entry

    def _remember(self, namespace: str, entry: Entry[RolloutInfo]) -> None:
        # Only forward: tasks of this process (the driver, the consumer, the API) and the
        # watch each learn of revisions, and may come back in any order.
        cur = self.records.get(namespace)
        if cur is None or entry.revision >= cur.revision:
            self.records[namespace] = entry

    async def latest(self, namespace: str) -> Entry[RolloutInfo]:
        """The record as our own last write left it, if no one has written it since (as far
        as the watch shows); else read. Either is as fresh as a read: every write is a
        compare-and-set, so a record that moved in the meantime makes the next one fail."""
        cur = self.records.get(namespace)
        if cur is not None and cur.revision == self._written.get(namespace):
            return cur
        return await self.read(namespace)

    async def mutate(self, namespace: str, change: Change) -> tuple[Entry[RolloutInfo], bool]:
        """Compare-and-set ``change`` on the record, first against the copy we hold (no read
        when it is current), dropping outbox items already published."""
        dropped: set[str] = set()

        def write(cur: RolloutInfo | None) -> RolloutInfo | None:
            new = change(cur)
            dropped.clear()
            if new is None:
                return None
            sent = self._sent.get(namespace)
            if not sent or not new.outbox:
                return new
            dropped.update(i.msg_id for i in new.outbox if i.msg_id in sent)
            return R.replace(new, outbox=[i for i in new.outbox if i.msg_id not in sent])

        entry, wrote = await self.kv.mutate(
            rollout_key(namespace), decode_rollout_info, write, hint=self.records.get(namespace)
        )
        self._remember(namespace, entry)
        if wrote:
            self._written[namespace] = entry.revision
            if dropped:
                self._sent[namespace] -= dropped
            self.kick(namespace)
        return entry, wrote

    def holds(self, namespace: str, revision: int) -> bool:
        """We hold this revision of the record (or a later one): the watch's copy adds nothing."""
        cur = self.records.get(namespace)
        return cur is not None and cur.revision >= revision

    def observed(self, namespace: str, entry: Entry[RolloutInfo]) -> None:
        """A change seen by the ``rollout.*`` watch (ours or another replica's)."""
        self._remember(namespace, entry)
        self.kick(namespace)

    def kick(self, namespace: str) -> None:
        ev = self._wake.get(namespace)
        if ev is not None:
            ev.set()
        self._any.set()

    async def wait(self, namespace: str, timeout: float) -> None:
        """Until the record changes (or ``kick``), at most ``timeout`` seconds."""
        ev = self._wake.setdefault(namespace, anyio.Event())
        with anyio.move_on_after(max(0.0, timeout)):
            await ev.wait()
        if ev.is_set():
            self._wake[namespace] = anyio.Event()

    async def wait_any(self, timeout: float) -> None:
        """Until any record changes, at most ``timeout`` seconds."""
        self._any = anyio.Event()
        with anyio.move_on_after(timeout):
            await self._any.wait()

    def published(self, namespace: str, rec: RolloutInfo) -> bool:
        """Every event in the record's outbox was published by us: the next write drops them."""
        sent = self._sent.get(namespace, set())
        return all(i.msg_id in sent for i in rec.outbox)

    async def flush(self, namespace: str, entry: Entry[RolloutInfo], *, clear: bool = True) -> None:
        """Publish the record's outbox, then remove what was published — at once, or with
        ``clear=False`` by the next write (one the caller is about to make). Until then a
        restarted driver publishes it again, a no-op by its message id."""
        rec = entry.value
        if rec is None or not rec.outbox:
            return
        sent = self._sent.setdefault(namespace, set())
        if len(sent) > 256:  # ids another replica cleared: forget them (at worst, a no-op again)
            sent.clear()
        for item in rec.outbox:
            if item.msg_id in sent:
                continue
            if item.event is not None:
                await emit(self.bus, item.event, msg_id=item.msg_id)
            elif item.alert is not None:
                await self.bus.publish(
                    subjects.alert(namespace), item.alert, msg_id=item.alert.alert_id
                )
            sent.add(item.msg_id)
        if not clear:
            return

        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            if cur is None or not any(i.msg_id in sent for i in cur.outbox):
                return None
            return cur  # mutate drops what was sent

        await self.mutate(namespace, change)

    async def transition(
        self,
        namespace: str,
        rec: RolloutInfo,
        fn: Callable[[RolloutInfo], RolloutInfo],
        *,
        states: tuple[str, ...] = ("running",),
        planned: bool | None = None,
        publish: bool = True,
    ) -> Entry[RolloutInfo]:
        """Apply ``fn`` if the record is still this rollout in one of ``states`` (and planned
        or not, if ``planned`` says), then publish its outbox (``publish=False``: the caller
        will)."""

        def change(cur: RolloutInfo | None) -> RolloutInfo | None:
            if cur is None or cur.rollout_id != rec.rollout_id or cur.state not in states:
                return None
            if planned is not None and cur.planned != planned:
                return None
            return R.replace(fn(cur), holder=self.instance)

        entry, wrote = await self.mutate(namespace, change)
        if not wrote:
            raise Gone(namespace)
        if entry.value is not None:
            if entry.value.state != rec.state and entry.value.state in TERMINAL_STATES:
                self.metrics.rollouts.labels(entry.value.state).inc()
            if publish:
                await self.flush(namespace, entry)
        return entry
