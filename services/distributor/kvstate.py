"""The distributor's shared state in ``CFG_STATE``: typed reads, compare-and-set writes, leases.

Keys (all values msgspec JSON)::

    rollout.<ns>                  RolloutInfo (schemas/api/dist.py): the current or last rollout
    target.<ns>.<node>            TargetRecord: the highest version of a committed transaction
                                  that included the node (its target is this or production,
                                  whichever is higher)
    node.<node>                   NodeRecord: labels, namespaces and their applied state, last
                                  heartbeat, liveness (as last judged)
    lease.distributor.<ns>        LeaseRecord: which replica drives the namespace (rollouts,
                                  catch-up, drift repair)
    lease.distributor._members    LeaseRecord: which replica writes node records and emits
                                  node.status events

Every write that changes a decision is a compare-and-set on the revision read
(``kv.update(key, value, last=revision)``): two replicas cannot both move a rollout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from confbus.runtime.codec import encode
from confbus.runtime.errors import Conflict, Unavailable
from confbus.schemas.base import DECODE_ERRORS, utcnow
from confbus.schemas.names import NodeId
from confbus.schemas.node import NamespaceState

log = logging.getLogger("confbus.distributor")

T = TypeVar("T")

MEMBERS_LEASE = "_members"


def rollout_key(namespace: str) -> str:
    return f"rollout.{namespace}"


def target_key(namespace: str, node: str) -> str:
    return f"target.{namespace}.{node}"


def node_key(node: str) -> str:
    return f"node.{node}"


def lease_key(name: str) -> str:
    return f"lease.distributor.{name}"


class TargetRecord(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    txid: str | None = None
    at: datetime = msgspec.field(default_factory=utcnow)


class NodeRecord(msgspec.Struct, frozen=True, kw_only=True):
    node: NodeId
    labels: dict[str, str] = {}
    namespaces: list[NamespaceState] = []
    interval_s: float = 2.0
    last_heartbeat: datetime | None = None
    started_at: datetime | None = None
    liveness: str = "live"  # live | suspect | gone
    since: datetime | None = None  # when it entered that liveness


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    holder: str
    expires_at: datetime
    acquired_at: datetime = msgspec.field(default_factory=utcnow)


class Stale(Conflict):
    """The key moved on since it was read (another replica wrote it)."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    value: T | None
    revision: int  # 0: never written (a deleted key keeps its marker's revision)


class StateKV:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def read(self, key: str, decode: Callable[[bytes], T]) -> Entry[T]:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            marker = getattr(exc, "entry", None)
            return Entry(None, int(getattr(marker, "revision", 0) or 0))
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"CFG_STATE is not answering: {exc!r}") from exc
        assert entry.revision is not None
        if not entry.value:
            return Entry(None, entry.revision)
        try:
            return Entry(decode(entry.value), entry.revision)
        except DECODE_ERRORS:
            # Written by a newer confbus or garbage: treat as absent, keep the revision so a
            # compare-and-set still orders against it.
            log.warning("unreadable state value", extra={"key": key})
            return Entry(None, entry.revision)

    async def cas(self, key: str, value: object, revision: int) -> int:
        data = encode(value)
        try:
            if revision == 0:
                return int(await self.kv.create(key, data))
            return int(await self.kv.update(key, data, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Stale(f"{key} moved on since revision {revision}") from exc
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"CFG_STATE is not answering: {exc!r}") from exc

    async def mutate(
        self,
        key: str,
        decode: Callable[[bytes], T],
        change: Callable[[T | None], T | None],
        *,
        attempts: int = 20,
        hint: Entry[T] | None = None,
    ) -> tuple[Entry[T], bool]:
        """Read, apply ``change`` (None: leave it), compare-and-set; again on a conflict.

        ``hint``: the entry as a watch last showed it — tried first without a read; if it is
        out of date the compare-and-set fails and the loop reads as usual (and "nothing to
        change" is only ever concluded from a read).
        Returns the entry as it now is and whether this call wrote it.
        """
        for _ in range(attempts):
            guessed = hint is not None
            cur = hint if hint is not None else await self.read(key, decode)
            hint = None
            new = change(cur.value)
            if new is None:
                if guessed:
                    continue  # only a read may conclude there is nothing to change
                return cur, False
            try:
                rev = await self.cas(key, new, cur.revision)
            except Stale:
                continue
            return Entry(new, rev), True
        raise Conflict(f"{key} keeps moving: gave up after {attempts} attempts")

    async def delete(self, key: str) -> None:
        try:
            await self.kv.delete(key)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"CFG_STATE is not answering: {exc!r}") from exc


decode_target = msgspec.json.Decoder(TargetRecord).decode
decode_node = msgspec.json.Decoder(NodeRecord).decode
decode_lease = msgspec.json.Decoder(LeaseRecord).decode


@dataclass
class Leases:
    """Who should drive what. A lease is a TTL-ish wall-clock deadline in ``CFG_STATE``, taken
    and renewed by compare-and-set. It only says who should *try*: safety comes from the
    compare-and-set on the rollout record and from the coordinator's epoch fencing.

    ``held`` is judged on our monotonic clock, with a margin, so we stop acting a little
    before another replica may think our lease expired.
    """

    kv: StateKV
    holder: str
    ttl_s: float = 5.0
    _until: dict[str, float] = field(default_factory=dict)  # name → monotonic deadline

    def held(self, name: str) -> bool:
        return self._until.get(name, 0.0) > time.monotonic()

    def held_names(self) -> list[str]:
        now = time.monotonic()
        return [n for n, t in self._until.items() if t > now]

    async def acquire(self, name: str) -> bool:
        """Take the lease if it is free, expired or ours; renew it if ours. True if held."""
        key = lease_key(name)
        started = time.monotonic()
        try:
            cur = await self.kv.read(key, decode_lease)
            now = datetime.now(UTC)
            rec = cur.value
            if rec is not None and rec.holder != self.holder and rec.expires_at > now:
                self._until.pop(name, None)
                return False
            new = LeaseRecord(
                holder=self.holder,
                expires_at=now + timedelta(seconds=self.ttl_s),
                acquired_at=rec.acquired_at if rec and rec.holder == self.holder else now,
            )
            await self.kv.cas(key, new, cur.revision)
        except (Stale, Unavailable):
            self._until.pop(name, None)
            return False
        if not self.held(name):
            log.info("lease taken", extra={"lease": name, "holder": self.holder})
        # Trust it for 2/3 of the TTL from when we *asked*: the write may have been slow.
        self._until[name] = started + self.ttl_s * 2 / 3
        return True

    async def release(self, name: str) -> None:
        self._until.pop(name, None)
        key = lease_key(name)
        try:
            cur = await self.kv.read(key, decode_lease)
            if cur.value is not None and cur.value.holder == self.holder:
                expired = LeaseRecord(holder=self.holder, expires_at=datetime.now(UTC))
                await self.kv.cas(key, expired, cur.revision)
        except (Stale, Unavailable):
            pass
