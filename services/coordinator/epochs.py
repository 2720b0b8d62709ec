"""Epoch markers: the stream itself refuses the prepares of an older epoch (docs/design.md §4.1).

The head's compare-and-set fences decisions, but a prepare goes to ``CFG_TXN``, another stream:
a coordinator paused between its head write and its prepare's publish could publish that
prepare after a successor took over. So every epoch opened on a namespace's head gets a marker
on ``cfg.txn.<ns>.epoch`` before anything is decided at it, and every prepare is published
expecting its epoch's marker to be that subject's last message
(``Nats-Expected-Last-Subject-Sequence`` with ``-Subject``, nats-server ≥ 2.11). Once a newer
epoch's marker is stored, the stream refuses the older epoch's prepares — one atomic check,
as the head's compare-and-set is for decisions.

Markers only go up: each is published expecting the sequence of the last one read, and only
over a lower epoch. Before a decision of epoch *e* is announced, a marker of *e* or newer is
stored (``cover``), so in the stream no prepare of an older epoch ever follows a decision or a
marker of a newer one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
import nats.js.errors

from confbus.coordinator.decisions import WRONG_LAST_SEQUENCE
from confbus.coordinator.head import Heads
from confbus.runtime.bus import Bus
from confbus.runtime.errors import Fenced, Unavailable
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.streams import CFG_TXN
from confbus.schemas.txn import EpochMarker, decode_epoch_marker

log = logging.getLogger("confbus.coordinator")

# A clustered stream refuses a publish whose per-subject check meets another one on the same
# subject still being replicated ("wrong last sequence", 10164): transient, try again.
CHECK_IN_FLIGHT = 10164
EXPECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECT_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
ATTEMPTS = 20


@dataclass(frozen=True)
class Marker:
    epoch: int  # -1: a record on the subject that is not a marker (never written by confbus)
    seq: int


class PrepareRefused(Fenced):
    """The stream refused our prepare: a newer epoch's marker is stored, the namespace has
    another leader. Not retried."""

    def __init__(self, namespace: str, epoch: int, newer: int) -> None:
        self.namespace, self.epoch, self.newer = namespace, epoch, newer
        super().__init__(
            f"prepare of {namespace} at epoch {epoch} refused by the stream: epoch {newer} leads"
        )


class EpochMarkers:
    def __init__(self, bus: Bus, heads: Heads, instance: str) -> None:
        self.bus = bus
        self.heads = heads
        self.instance = instance
        self._known: dict[str, Marker] = {}  # the newest marker each namespace showed us

    async def last(self, namespace: str) -> Marker | None:
        """The subject's last marker, read from the stream's leader."""
        msg = await self.bus.last_msg(CFG_TXN.name, subjects.txn_epoch(namespace))
        if msg is None:
            return None
        try:
            epoch = decode_epoch_marker(msg.data or b"").epoch
        except DECODE_ERRORS:
            log.warning("not an epoch marker", extra={"namespace": namespace, "seq": msg.seq})
            epoch = -1
        return self._saw(namespace, Marker(epoch, int(msg.seq or 0)))

    def _saw(self, namespace: str, m: Marker) -> Marker:
        known = self._known.get(namespace)
        if known is None or m.epoch >= known.epoch:
            self._known[namespace] = m
        return m

    async def _raise_to(self, namespace: str, epoch: int) -> Marker:
        """The subject's last marker once it is of ``epoch`` or newer: ``epoch``'s is published
        over a lower one (compare-and-set on its sequence)."""
        for attempt in range(ATTEMPTS):
            last = await self.last(namespace)
            if last is not None and last.epoch >= epoch:
                return last
            marker = EpochMarker(namespace=namespace, epoch=epoch, leader=self.instance)
            try:
                ack = await self.bus.publish(
                    subjects.txn_epoch(namespace),
                    marker,
                    headers={EXPECT_SEQ: str(last.seq if last is not None else 0)},
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code not in (WRONG_LAST_SEQUENCE, CHECK_IN_FLIGHT):
                    raise
                # Another marker (or our own, its ack lost) landed since we read: read again.
                await anyio.sleep(0.005 * attempt)
                continue
            log.info("epoch marker stored", extra={"namespace": namespace, "epoch": epoch})
            return self._saw(namespace, Marker(epoch, int(ack.seq)))
        raise Unavailable(f"epoch marker of {namespace}: the subject kept moving, retry")

    async def open(self, namespace: str, epoch: int) -> int:
        """After the head's compare-and-set opened ``epoch``: its marker's sequence, which our
        prepares will expect. ``Fenced`` if a newer epoch's marker is there already."""
        m = await self._raise_to(namespace, epoch)
        if m.epoch > epoch:
            raise Fenced(f"{namespace}: epoch {m.epoch} is open, ours was {epoch}")
        return m.seq

    async def cover(self, namespace: str, epoch: int) -> None:
        """Before a decision of ``epoch`` is announced: a marker of ``epoch`` or newer is stored,
        so no prepare of an older epoch can follow that decision in the stream."""
        known = self._known.get(namespace)
        if known is None or known.epoch < epoch:
            await self._raise_to(namespace, epoch)

    async def publish_prepare(
        self, namespace: str, epoch: int, subject: str, data: bytes, msg_id: str
    ) -> None:
        """Store the prepare only while ``epoch``'s marker is the last; ``PrepareRefused`` once
        a newer one is. A retry with the same message id is deduplicated by the stream — or,
        if a newer marker landed meanwhile, refused (then the prepare, if stored, came before
        that marker, and the new leader aborts its transaction)."""
        for attempt in range(ATTEMPTS):
            known = self._known.get(namespace)
            seq = known.seq if known is not None and known.epoch == epoch else None
            if seq is None:
                seq = await self._reopen(namespace, epoch)
            try:
                await self.bus.publish(
                    subject,
                    data,
                    msg_id=msg_id,
                    headers={EXPECT_SEQ: str(seq), EXPECT_SUBJECT: subjects.txn_epoch(namespace)},
                )
                return
            except nats.js.errors.APIError as exc:
                if exc.err_code == CHECK_IN_FLIGHT:
                    await anyio.sleep(0.005 * attempt)
                    continue
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
            last = await self.last(namespace)
            if last is not None and last.epoch > epoch:
                raise PrepareRefused(namespace, epoch, last.epoch)
            # Our marker is gone (aged out of the stream) or was written again: open it anew,
            # if the head still says we may.
            self._known.pop(namespace, None)
        raise Unavailable(f"prepare of {namespace}: its epoch marker kept moving, retry")

    async def _reopen(self, namespace: str, epoch: int) -> int:
        head = (await self.heads.get(namespace)).value
        if head.epoch != epoch:
            raise PrepareRefused(namespace, epoch, head.epoch)
        try:
            return await self.open(namespace, epoch)
        except Fenced:
            last = self._known.get(namespace)
            raise PrepareRefused(namespace, epoch, last.epoch if last else epoch + 1) from None
