"""Leases in ``CFG_STATE``: which replica should act for one thing (a namespace), for how long.
The one lease of every service: the coordinator leads a namespace under
``lease.coordinator.<ns>``, the distributor drives one under ``lease.distributor.<ns>`` (and
keeps node records under ``lease.distributor._members``), the health-watcher judges one under
``lease.health.<ns>``, and the rollbacker drives a namespace's rollback under
``lease.rollbacker.<ns>``.

```
lease.<role>.<name>    LeaseRecord{holder, epoch, expires_at, ttl_s, acquired_at}
```

- **take** — by compare-and-set, when the key is absent, expired (``expires_at`` plus the
  allowed clock skew is past, on the wall clock), already ours — or its holder is **gone**:
  its presence endpoint finds no responders twice (``confbus.runtime.presence``: its process
  died, the server dropped its subscriptions). A new holder bumps ``epoch``; a renewal keeps
  it. The epoch is a fencing token: write it along with what the lease protects, and refuse
  older ones.
- **held** — judged on *our monotonic clock only*: from the moment we *sent* the write that
  succeeded, for ``ttl × TRUST``. The write may have taken long, our process may have been
  paused: counting from before the write and stopping well before the TTL means we stop acting
  before another replica may take the lease (as long as wall clocks agree within the skew).
- **renew** — every ``ttl / 3`` by ``keep()``. A renewal that finds another holder loses the
  lease at once; one that cannot reach the bus keeps trying until the trust runs out, and then
  the lease is lost.
- **lost** — ``held()`` turns false, and every scope opened with ``guard(name)`` is cancelled
  at once: a holder that cannot renew stops acting.
- **release** — on a clean stop: ``expires_at`` = 1970, so another replica takes over at once.
- **watch** — ``pursue`` probes the holders of what it wants every ``WATCH_EVERY_S``, so a
  killed holder's lease is taken over in well under a second, not at its expiry.

A lease gives liveness, not safety (etcd's locks do not exclude either: Jepsen 2020). What it
protects must still be fenced: the coordinator's epoch on the head, a compare-and-set on a
rollout record, the epoch on an alert book or a rollback.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
from anyio.abc import TaskStatus
from nats.js.kv import KeyValue

from confbus.runtime.bus import Bus
from confbus.runtime.errors import Stale, Unavailable
from confbus.runtime.kv import StateKV
from confbus.runtime.presence import WATCH_EVERY_S, Presence
from confbus.schemas.state import LeaseRecord, decode_lease, lease_key

log = logging.getLogger("confbus.leases")

# A lease is trusted for this share of its TTL, counted from before the write: the rest is
# room for a slow write, a scheduling delay and clock skew.
TRUST = 2 / 3
RENEW_EVERY = 1 / 3  # of the TTL
RELEASED = datetime.fromtimestamp(0, UTC)  # the expiry a released lease is written with


class NotHeld(Unavailable):
    """We do not hold this lease (any more): someone else should act; the caller may retry."""

    def __init__(self, key: str, holder: str | None = None) -> None:
        self.key = key
        self.holder = holder
        who = f"held by {holder}" if holder else "not held by us"
        super().__init__(f"lease {key} is {who}; retry")


@dataclass(frozen=True)
class Grant:
    name: str
    holder: str
    epoch: int
    revision: int
    trusted_until: float  # monotonic
    acquired_at: datetime | None = None


@dataclass
class Leases:
    """The leases one replica takes for one role (``coordinator``: one per namespace)."""

    kv: KeyValue  # CFG_STATE
    role: str
    holder: str
    ttl_s: float = 5.0
    skew_s: float = 0.5
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[str, bool], None] | None = None  # (name, held) for metrics and logs
    # Who else holds what: with it a holder whose process is gone is taken over at once
    # (served by ``keep``); without it, only at the lease's expiry.
    presence: Presence | None = None
    _elsewhere: dict[str, str] = field(default_factory=dict)  # name -> its live other holder
    _renew_all: bool = False  # our connection came back: check every lease at once
    _grants: dict[str, Grant] = field(default_factory=dict)
    _scopes: dict[str, set[anyio.CancelScope]] = field(default_factory=dict)
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _state: StateKV = field(init=False)

    def __post_init__(self) -> None:
        self._state = StateKV(self.kv)

    @classmethod
    def on_bus(cls, bus: Bus, kv: KeyValue, role: str, holder: str, ttl_s: float) -> Leases:
        """A replica's leases: its presence answered (``keep``), its peers' probed, so a
        holder that died is taken over at once (``confbus.runtime.presence``)."""
        return cls(kv, role, holder, ttl_s=ttl_s, presence=Presence(bus, role, holder))

    # -- what we hold ------------------------------------------------------------------------

    def held(self, name: str) -> bool:
        grant = self._grants.get(name)
        return grant is not None and grant.trusted_until > self.clock()

    def grant(self, name: str) -> Grant | None:
        return self._grants.get(name) if self.held(name) else None

    def require(self, name: str) -> Grant:
        """Our grant of ``name`` (its epoch is the fencing token); ``NotHeld`` if we do not
        hold it now."""
        grant = self.grant(name)
        if grant is None:
            raise NotHeld(lease_key(self.role, name))
        return grant

    def held_names(self) -> list[str]:
        return sorted(n for n in self._grants if self.held(n))

    @contextlib.contextmanager
    def guard(self, name: str) -> Iterator[anyio.CancelScope]:
        """A scope that is cancelled the moment the lease is lost; ``NotHeld`` if it is not
        held now. After the block, ``scope.cancelled_caught`` tells whether it was lost."""
        self.require(name)
        scope = anyio.CancelScope()
        self._scopes.setdefault(name, set()).add(scope)
        try:
            with scope:
                yield scope
        finally:
            scopes = self._scopes.get(name)
            if scopes is not None:
                scopes.discard(scope)
                if not scopes:
                    del self._scopes[name]

    # -- the record ------------------------------------------------------------------------------

    async def read(self, name: str) -> tuple[LeaseRecord | None, int]:
        """The record and its revision (0: never written); ``Unavailable`` if unread."""
        entry = await self._state.read(lease_key(self.role, name), decode_lease)
        return entry.value, entry.revision

    def live(self, record: LeaseRecord | None) -> bool:
        """Whether ``record`` still binds others (its holder may be acting)."""
        if record is None:
            return False
        return record.expires_at + timedelta(seconds=self.skew_s) > datetime.now(UTC)

    async def live_record(self, name: str) -> LeaseRecord | None:
        """The record if it still binds (None: free or expired); ``Unavailable`` if unread."""
        record, _ = await self.read(name)
        return record if self.live(record) else None

    async def current_holder(self, name: str) -> str | None:
        """Who holds the lease now, as the record says (None: nobody)."""
        if self.held(name):
            return self.holder
        record, _ = await self.read(name)
        return record.holder if record is not None and self.live(record) else None

    # -- take, renew, release --------------------------------------------------------------

    async def acquire(self, name: str) -> Grant | None:
        """Take the lease if it is free, expired or ours (renewing it). None if another
        replica holds it or the bus did not answer."""
        try:
            record, revision = await self.read(name)
        except Unavailable:
            return None
        if record is not None and record.holder != self.holder and self.live(record):
            self._elsewhere[name] = record.holder
            if not await self._gone(record.holder):
                self._lose(name, f"held by {record.holder}")
                return None
            # Its process is gone: a new term now, by compare-and-set on the revision read
            # before the probes (a renewal in between means it was there after all).
            log.warning("lease holder gone, taking over", extra={
                "lease": lease_key(self.role, name), "holder": record.holder})  # fmt: skip
            return await self._write(name, record.epoch + 1, revision, None)
        self._elsewhere.pop(name, None)
        mine = self._grants.get(name)
        if record is not None and mine is not None and mine.epoch == record.epoch:
            return await self._write(name, record.epoch, revision, record.acquired_at)
        # A new term: free, expired, or named after us by an earlier life of this replica
        # (restarted under the same --instance), which is gone.
        epoch = (record.epoch if record is not None else 0) + 1
        return await self._write(name, epoch, revision, None)

    async def _gone(self, holder: str) -> bool:
        return self.presence is not None and await self.presence.gone(holder)

    async def _write(
        self, name: str, epoch: int, revision: int, acquired: datetime | None
    ) -> Grant | None:
        key = lease_key(self.role, name)
        started = self.clock()
        now = datetime.now(UTC)
        record = LeaseRecord(
            holder=self.holder,
            epoch=epoch,
            expires_at=now + timedelta(seconds=self.ttl_s),
            ttl_s=self.ttl_s,
            acquired_at=acquired or now,
        )
        try:
            new_rev = await self._state.cas(key, record, revision)
        except Stale:
            self._lose(name, "another replica wrote it first")
            return None
        except Unavailable as exc:
            log.warning("lease write failed", extra={"lease": key, "error": exc.message})
            return None
        grant = Grant(
            name, self.holder, epoch, new_rev, started + self.ttl_s * TRUST, record.acquired_at
        )
        fresh = name not in self._grants or self._grants[name].epoch != epoch
        self._grants[name] = grant
        if fresh:
            log.info("lease taken", extra={"lease": key, "epoch": epoch})
            if self.on_change is not None:
                self.on_change(name, True)
            self._wake.set()  # keep() plans its next renewal with this one in it
        return grant

    async def renew(self, name: str) -> bool:
        grant = self._grants.get(name)
        if grant is None:
            return False
        if not self.held(name):
            self._lose(name, "not renewed in time")
            return False
        key = lease_key(self.role, name)
        started = self.clock()
        now = datetime.now(UTC)
        record = LeaseRecord(
            holder=self.holder,
            epoch=grant.epoch,
            expires_at=now + timedelta(seconds=self.ttl_s),
            ttl_s=self.ttl_s,
            acquired_at=grant.acquired_at,
        )
        try:
            new_rev = await self._state.cas(key, record, grant.revision)
        except Stale:
            # Maybe our own write whose reply was lost (a timeout): the record tells.
            try:
                current, revision = await self.read(name)
            except Unavailable:
                return self.held(name)
            if current is None or current.holder != self.holder or current.epoch != grant.epoch:
                self._lose(name, f"taken by {current.holder if current else 'nobody'}")
                return False
            return await self._write(name, grant.epoch, revision, current.acquired_at) is not None
        except Unavailable as exc:
            log.warning("lease renewal failed", extra={"lease": key, "error": exc.message})
            return self.held(name)
        if name in self._grants:
            self._grants[name] = Grant(
                name,
                self.holder,
                grant.epoch,
                new_rev,
                started + self.ttl_s * TRUST,
                grant.acquired_at,
            )
        return True

    async def release(self, name: str) -> None:
        """Give the lease up now (a clean stop): another replica may take it at once."""
        grant = self._grants.get(name)
        self._lose(name, "released")
        if grant is None:
            return
        # Expired since 1970: free at once for anyone, whatever the skew allowance.
        expired = LeaseRecord(
            holder=self.holder, epoch=grant.epoch, expires_at=RELEASED, ttl_s=self.ttl_s
        )
        with contextlib.suppress(Stale, Unavailable):  # it simply expires
            await self._state.cas(lease_key(self.role, name), expired, grant.revision)

    async def release_all(self) -> None:
        for name in list(self._grants):
            await self.release(name)

    def _lose(self, name: str, why: str) -> None:
        grant = self._grants.pop(name, None)
        for scope in self._scopes.pop(name, set()):
            scope.cancel()
        if grant is not None:
            log.warning("lease lost", extra={"lease": lease_key(self.role, name), "reason": why})
            if self.on_change is not None:
                self.on_change(name, False)

    # -- keeping them ------------------------------------------------------------------------------

    async def keep(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew what we hold every ``ttl / 3``; the moment a lease's trust runs out unrenewed,
        lose it (cancel its guards); answer our presence probes meanwhile. Runs until
        cancelled."""
        async with anyio.create_task_group() as tg:
            if self.presence is None:
                task_status.started()
                await self._renewals()
                return
            await tg.start(self.presence.serve)
            # Back from a lost connection, a peer may have taken a lease over meanwhile (we
            # were "gone"): renew everything now, so a lease taken is lost at once.
            stop = self.presence.bus.on_reconnect(self._on_reconnect)
            try:
                task_status.started()
                await self._renewals()
            finally:
                stop()

    def _on_reconnect(self) -> None:
        self._renew_all = True
        self._wake.set()

    async def _renewals(self) -> None:
        next_renewal: dict[str, float] = {}
        while True:
            now = self.clock()
            if self._renew_all:
                self._renew_all = False
                next_renewal = dict.fromkeys(next_renewal, now)
            for name in list(self._grants):
                grant = self._grants.get(name)
                if grant is None:
                    continue
                if grant.trusted_until <= now:
                    self._lose(name, "not renewed in time")
                    next_renewal.pop(name, None)
                    continue
                due = next_renewal.setdefault(name, now + self.ttl_s * RENEW_EVERY)
                if due <= now:
                    ok = await self.renew(name)
                    # A failed renewal is tried again soon, until the trust runs out.
                    step = self.ttl_s * RENEW_EVERY if ok else min(0.2, self.ttl_s / 10)
                    next_renewal[name] = self.clock() + step
            for name in list(next_renewal):
                if name not in self._grants:
                    del next_renewal[name]
            wake_at = min(
                [*next_renewal.values(), *(g.trusted_until for g in self._grants.values())],
                default=math.inf,
            )
            self._wake = anyio.Event()
            if self._renew_all:
                continue  # a reconnect while we renewed
            with anyio.move_on_after(max(0.0, min(wake_at - self.clock(), 1.0))):
                await self._wake.wait()

    async def pursue(
        self,
        wanted: Callable[[], Iterable[str]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Every ``ttl / 3``, try to take each name of ``wanted()`` we do not hold (what we hold,
        ``keep()`` renews): replicas that share many names out take the free ones as they come.
        In between, the other holders of those names are probed (``watch``): one that is gone
        starts the next pass at once. Runs until cancelled."""
        task_status.started()
        while True:
            try:
                names = sorted(set(wanted()))
            except Exception:  # a bad list must never stop the taking
                log.exception("cannot tell which leases are wanted")
                names = []
            for name in names:
                if not self.held(name):
                    await self.acquire(name)  # None when held elsewhere or unreachable
            with anyio.move_on_after(max(0.1, self.ttl_s * RENEW_EVERY)):
                if not await self.watch(names):
                    await anyio.sleep_forever()  # nobody to watch: the next pass when due

    async def watch(self, names: Iterable[str]) -> bool:
        """True once a replica holding one of ``names`` (as ``acquire`` last found) no longer
        answers its presence, probed every ``WATCH_EVERY_S``; False at once when there is no
        one to watch. The first probe waits a period too: a holder that stays gone while it
        cannot be taken over (the bus half down) costs a pass per period, not a busy loop."""
        if self.presence is None:
            return False
        wanted = set(names)
        while holders := {
            self._elsewhere[n] for n in wanted if n in self._elsewhere and not self.held(n)
        }:
            await anyio.sleep(WATCH_EVERY_S)
            for holder in sorted(holders):
                if not await self.presence.answers(holder):
                    return True
        return False
