"""Exactly one replica evaluates a namespace: a lease per namespace in ``CFG_STATE``.

Key ``lease.health.<ns>``, value ``{holder, expires_at, ttl_s}`` (``expires_at`` in the
holder's wall-clock seconds). Every write is a compare-and-set on the key's revision:

- **acquire**: create the key, or update it (``last=rev``) when the lease there has expired
  (``expires_at`` passed on our clock) or is already ours (a restart under the same instance id);
- **renew**: every ``ttl/3``, update with ``last=`` the revision we wrote; any failure — a
  stale revision (someone took it), a timeout, the bus down — drops the lease at once;
- **validity**: we consider ourselves holder only until ``ttl × 0.8`` after the *start* of the
  last successful renewal, on our monotonic clock. ``holds()`` is checked before every
  evaluation and before every alert publish, so a replica that cannot renew (partitioned,
  paused) stops judging before anyone else may take over;
- **release**: on shutdown the lease is written back expired, so another replica takes over on
  its next tick instead of after a TTL.

Safety rests on the wall clocks of the replicas agreeing to within ``ttl × 0.2``; alerts carry
deterministic ids (and a per-namespace alert book, ``alerts.py``), so an overlap at the edge
repeats an alert id rather than inventing a second alert.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import anyio
import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.follow import watch_bucket
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.streams import CFG_STATE

log = logging.getLogger("confbus.health_watcher.lease")

VALID_SHARE = 0.8  # of the TTL, from the start of a successful renewal


class LeaseValue(msgspec.Struct, frozen=True, kw_only=True):
    holder: str
    expires_at: float  # unix seconds, holder's clock; 0: released
    ttl_s: float


_decode_lease = msgspec.json.Decoder(LeaseValue).decode


def lease_key(namespace: str) -> str:
    return f"lease.health.{namespace}"


@dataclass
class _Held:
    revision: int
    valid_until: float  # monotonic


@dataclass
class NamespaceLeases:
    kv: KeyValue
    instance: str
    ttl_s: float = 6.0
    held: dict[str, _Held] = field(default_factory=dict)
    # Someone else's lease: its expiry (our wall clock), so we do not read it before then.
    _others: dict[str, float] = field(default_factory=dict)

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3

    def holds(self, namespace: str) -> bool:
        h = self.held.get(namespace)
        return h is not None and time.monotonic() < h.valid_until

    def holder_namespaces(self) -> list[str]:
        return sorted(ns for ns in self.held if self.holds(ns))

    def _value(self, expires_at: float | None = None) -> bytes:
        at = time.time() + self.ttl_s if expires_at is None else expires_at
        return encode(LeaseValue(holder=self.instance, expires_at=at, ttl_s=self.ttl_s))

    async def tick(self, namespaces: Iterable[str]) -> tuple[list[str], list[str]]:
        """Renew what we hold, try to take what is free. Returns (gained, lost)."""
        gained: list[str] = []
        lost: list[str] = []
        for ns in list(self.held):
            if not await self._renew(ns):
                lost.append(ns)
        now = time.time()
        for ns in sorted(set(namespaces) - set(self.held)):
            if self._others.get(ns, 0.0) > now:
                continue
            if await self._acquire(ns):
                gained.append(ns)
        return gained, lost

    async def _renew(self, ns: str) -> bool:
        h = self.held[ns]
        started = time.monotonic()
        try:
            with anyio.fail_after(self.ttl_s / 2):
                rev = await self.kv.update(lease_key(ns), self._value(), last=h.revision)
        except (TimeoutError, nats.errors.Error) as exc:
            # Stop judging at once: another replica may hold it by the time we could retry.
            del self.held[ns]
            log.warning("lost the lease", extra={"namespace": ns, "error": repr(exc)})
            return False
        self.held[ns] = _Held(rev, started + self.ttl_s * VALID_SHARE)
        return True

    async def _acquire(self, ns: str) -> bool:
        key = lease_key(ns)
        started = time.monotonic()
        try:
            with anyio.fail_after(self.ttl_s / 2):
                try:
                    entry = await self.kv.get(key)
                except nats.js.errors.KeyNotFoundError:
                    rev = await self.kv.create(key, self._value())
                else:
                    current = _decode_lease(entry.value) if entry.value else None
                    if (
                        current is not None
                        and current.holder != self.instance
                        and current.expires_at > time.time()
                    ):
                        self._others[ns] = current.expires_at
                        return False
                    rev = await self.kv.update(key, self._value(), last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False  # another replica got there first
        except (TimeoutError, nats.errors.Error, msgspec.DecodeError) as exc:
            log.warning("could not take the lease", extra={"namespace": ns, "error": repr(exc)})
            return False
        self.held[ns] = _Held(rev, started + self.ttl_s * VALID_SHARE)
        self._others.pop(ns, None)
        log.info("took the lease", extra={"namespace": ns, "instance": self.instance})
        return True

    async def watch(self, bus: Bus) -> None:
        """Follow every replica's leases: a released or lapsed lease is noticed at once (not
        after the expiry last read), and a lease someone else now holds stops us at once."""
        await watch_bucket(bus, CFG_STATE.name, lease_key("*"), lambda k, v, _rev: self._seen(k, v))

    def _seen(self, key: str, value: bytes | None) -> None:
        ns = key.removeprefix(lease_key(""))
        if not value:
            self._others.pop(ns, None)  # deleted: free
            return
        try:
            lease = _decode_lease(value)
        except DECODE_ERRORS:
            return
        if lease.holder == self.instance:
            return
        self._others[ns] = lease.expires_at
        if ns in self.held and lease.expires_at > time.time():
            del self.held[ns]  # taken over (we must have missed a renewal): stop judging now
            log.warning("lease taken by another replica", extra={"namespace": ns})

    async def release_all(self) -> None:
        for ns, h in list(self.held.items()):
            del self.held[ns]
            try:
                with anyio.fail_after(1.0):
                    await self.kv.update(
                        lease_key(ns), self._value(expires_at=0.0), last=h.revision
                    )
            except (TimeoutError, nats.errors.Error):
                pass  # it simply expires
