"""Leases in ``CFG_STATE``: which replica should act for one thing (a namespace), for how long.
The one lease of every service: the coordinator leads a namespace under
``lease.coordinator.<ns>``, the distributor drives one under ``lease.distributor.<ns>`` (and
keeps node records under ``lease.distributor._members``), the health-watcher judges one under
``lease.health.<ns>``, and the rollbacker drives a namespace's rollback under
``lease.rollbacker.<ns>``.

```
lease.<role>._replica.<instance>   LeaseRecord{holder, life, epoch: lives, expires_at, ttl_s}
lease.<role>.<name>                LeaseRecord{holder, life, epoch, expires_at: BY_REPLICA}
```

One renewal per replica, not per name (etcd's model: many keys attached to one lease, one
keep-alive). A replica's **replica lease** is the only record it renews; each lease it takes
names the replica lease's ``life`` (a random token per life) and lives exactly as long as that
life does: while the replica key carries the same ``life`` and has not expired.

- **take** — by compare-and-set on the name's key, when it is absent, released, named after a
  life of its holder that is over (the replica key moved on to another life, was released, or
  expired: ``expires_at`` plus the allowed clock skew is past, on the wall clock) — or its
  holder is **gone**: its presence endpoint finds no responders twice
  (``confbus.runtime.presence``: its process died, the server dropped its subscriptions). A
  life that is expired but not yet over, or whose holder is gone, is first **ended** by us: a
  compare-and-set of the holder's replica key, at the revision read before we judged it, to
  expired-in-1970. A new holder bumps ``epoch``; the epoch is a fencing token: write it along
  with what the lease protects, and refuse older ones.
- **held** — judged on *our monotonic clock only*: from the moment we *sent* the last replica
  lease write that succeeded, for ``ttl × TRUST``, and only names taken in that same life. The
  write may have taken long, our process may have been paused: counting from before the write
  and stopping well before the TTL means we stop acting before another replica may take over
  (as long as wall clocks agree within the skew).
- **renew** — the replica key only, every ``ttl / 3`` by ``keep()`` while we hold anything,
  by compare-and-set on our own last revision. A renewal that finds the key changed (a life
  ended by another replica, or a new one written by a restart under our name) loses *every*
  lease at once; one that cannot reach the bus keeps trying until the trust runs out, and then
  every lease is lost.
- **lost** — ``held()`` turns false, and every scope opened with ``guard(name)`` is cancelled
  at once: a holder that cannot renew stops acting.
- **release** — on a clean stop: each name's record, ``expires_at`` = 1970, all at once, then
  the replica key (its life over); the rollbacker releases one name when its rollback ends.
- **watch** — ``pursue`` probes the holders of what it wants every ``WATCH_EVERY_S``, so a
  killed holder's leases are taken over in well under a second, not at their expiry.

**Why safety is what it was with one renewed record per name.** Another replica may take a
name only when the life it names is over — and a life is over only (a) when its own holder
wrote so (a release, a new life), (b) when someone ended it by compare-and-set after finding
it expired on the wall clock, or (c) after its holder was found gone. In (b) the holder's trust
(⅔ TTL from before its last successful write) ran out before the expiry plus the skew, so it
had stopped acting — the same argument as a per-name record's. The compare-and-set that ends
the life is what makes it hold with one record for many names: the holder's renewal is a
compare-and-set on the same revision, so either its renewal lands first (the life goes on; our
end fails and we take nothing) or our end does (its renewal fails and it loses everything). A
renewal sent just before a pause and delivered late cannot revive a life taken over. (c) is
the early take-over of a holder whose *connection* is gone that per-name leases already did,
with what it implies (docs/design.md §4.6): it may act for the rest of its trust, and every
write it can still make is fenced by the epoch or a compare-and-set. The epoch still goes up
with every new holder of a name.

**Mixed versions (a rolling upgrade).** A record without ``life`` is a per-name lease of a
confbus before replica leases: read as before (live until its ``expires_at``; taken over
from a gone holder). Ours carry an ``expires_at`` far off (``BY_REPLICA``), so an older
replica never takes one by expiry, while its holder may still act; it may take one over from
a gone holder as it always could, and then the holder, back on the bus, checks every name it
holds once (``keep``'s reconnect pass) and loses that one. So two versions never act on a name
at once beyond what a gone take-over allows — but an older replica cannot take over the names
of a newer holder that is paused or cut off (only of one that is gone or released): during an
upgrade, such a fail-over waits until the stack runs one version.

A lease gives liveness, not safety (etcd's locks do not exclude either: Jepsen 2020). What it
protects must still be fenced: the coordinator's epoch on the head, a compare-and-set on a
rollout record, the epoch on an alert book or a rollback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
from anyio.abc import TaskStatus
from nats.js.kv import KeyValue

from confbus.runtime.bus import Bus
from confbus.runtime.errors import Stale, Unavailable
from confbus.runtime.kv import StateKV
from confbus.runtime.presence import WATCH_EVERY_S, Presence
from confbus.schemas.state import LeaseRecord, decode_lease, lease_key, replica_key

log = logging.getLogger("confbus.leases")

# A lease is trusted for this share of its TTL, counted from before the write: the rest is
# room for a slow write, a scheduling delay and clock skew.
TRUST = 2 / 3
RENEW_EVERY = 1 / 3  # of the TTL
RELEASED = datetime.fromtimestamp(0, UTC)  # the expiry a released lease is written with
# The expiry of a name's lease that lives by its holder's replica lease: an older confbus,
# which reads only ``expires_at``, never takes it by expiry.
BY_REPLICA = datetime(9999, 1, 1, tzinfo=UTC)
# How long a replica lease read for one name serves for the next (``pursue`` asks about many
# names of one holder in a row). A stale copy only delays a take-over or fails a
# compare-and-set: every end and take is written against the revision read.
PEER_READ_S = 0.2


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
    life: str  # of the replica lease it was taken in: held only while that life is ours
    acquired_at: datetime | None = None


@dataclass(frozen=True)
class _Life:
    """Our replica lease as we last wrote it."""

    life: str
    epoch: int
    revision: int
    trusted_until: float  # monotonic
    acquired_at: datetime


@dataclass(frozen=True)
class _Peer:
    """Another replica's lease as read (``record`` None: never written), and when."""

    record: LeaseRecord | None
    revision: int
    read_at: float


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
    _renew_all: bool = False  # our connection came back: renew and check every lease at once
    _life: _Life | None = None
    _closed: bool = False  # released on a clean stop: take nothing more
    _freed: bool = False  # we ended another replica's life since pursue's pass began
    _grants: dict[str, Grant] = field(default_factory=dict)
    _peers: dict[str, _Peer] = field(default_factory=dict)
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

    def _trusted(self) -> _Life | None:
        life = self._life
        return life if life is not None and life.trusted_until > self.clock() else None

    def held(self, name: str) -> bool:
        grant = self._grants.get(name)
        life = self._trusted()
        return grant is not None and life is not None and grant.life == life.life

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

    # -- the records -----------------------------------------------------------------------------

    async def read(self, name: str) -> tuple[LeaseRecord | None, int]:
        """The record and its revision (0: never written); ``Unavailable`` if unread."""
        entry = await self._state.read(lease_key(self.role, name), decode_lease)
        return entry.value, entry.revision

    def _expired(self, record: LeaseRecord) -> bool:
        return record.expires_at + timedelta(seconds=self.skew_s) <= datetime.now(UTC)

    async def _peer(self, holder: str) -> _Peer:
        """``holder``'s replica lease, read at most ``PEER_READ_S`` ago; ``Unavailable`` if
        unread."""
        seen = self._peers.get(holder)
        if seen is not None and self.clock() - seen.read_at < PEER_READ_S:
            return seen
        read_at = self.clock()
        entry = await self._state.read(replica_key(self.role, holder), decode_lease)
        peer = _Peer(entry.value, entry.revision, read_at)
        self._peers[holder] = peer
        return peer

    async def _binding(self, record: LeaseRecord | None) -> tuple[bool, _Peer | None]:
        """Whether ``record`` still binds others (its holder may be acting), and the holder's
        replica lease when the record hangs on one whose life is not over yet (expired or
        not: such a life must be ended before the name is taken)."""
        if record is None or self._expired(record):
            return False, None  # free, released, or a per-name lease run out
        if record.life is None:
            return True, None  # a per-name lease (an older confbus): live until it expires
        peer = await self._peer(record.holder)
        current = peer.record
        if current is None or current.life != record.life or current.expires_at == RELEASED:
            return False, None  # that life is over
        return not self._expired(current), peer

    async def live_record(self, name: str) -> LeaseRecord | None:
        """The record if it still binds (None: free or expired); ``Unavailable`` if unread."""
        record, _ = await self.read(name)
        live, _ = await self._binding(record)
        return record if live else None

    async def current_holder(self, name: str) -> str | None:
        """Who holds the lease now, as the records say (None: nobody)."""
        if self.held(name):
            return self.holder
        record = await self.live_record(name)
        return record.holder if record is not None else None

    # -- our replica lease -----------------------------------------------------------------------

    async def _own_life(self) -> _Life | None:
        """Our replica lease, trusted for a while yet: renewed if half its trust is gone,
        begun anew if it is over. None if the bus did not let us."""
        if self._closed:
            return None
        life = self._trusted()
        if life is not None:
            if life.trusted_until - self.clock() > self.ttl_s * TRUST / 2:
                return life
            if await self._renew_life():
                return self._trusted()
            if self._life is not None:
                return None  # the bus did not answer: what we hold is kept while trusted
        elif self._life is not None:
            self._end_life("not renewed in time")
        return await self._begin_life()

    def _replica_record(self, life: str, epoch: int, acquired: datetime) -> LeaseRecord:
        now = datetime.now(UTC)
        return LeaseRecord(
            holder=self.holder,
            epoch=epoch,
            expires_at=now + timedelta(seconds=self.ttl_s),
            ttl_s=self.ttl_s,
            acquired_at=acquired,
            life=life,
        )

    async def _begin_life(self) -> _Life | None:
        """A new life of our replica lease, over whatever the key held (an earlier life of
        ours, ended or not: a restart under the same instance name ends its predecessor's)."""
        key = replica_key(self.role, self.holder)
        try:
            entry = await self._state.read(key, decode_lease)
        except Unavailable:
            return None
        epoch = (entry.value.epoch if entry.value is not None else 0) + 1
        life = secrets.token_hex(6)
        started = self.clock()
        record = self._replica_record(life, epoch, datetime.now(UTC))
        try:
            revision = await self._state.cas(key, record, entry.revision)
        except (Stale, Unavailable) as exc:
            log.warning("replica lease not taken", extra={"lease": key, "error": str(exc)})
            return None
        assert record.acquired_at is not None
        self._life = _Life(life, epoch, revision, started + self.ttl_s * TRUST, record.acquired_at)
        log.info("replica lease taken", extra={"lease": key, "epoch": epoch})
        self._wake.set()  # keep() renews it from now on
        return self._life

    async def _renew_life(self) -> bool:
        """One renewal of our replica lease; False if it failed (the life may be over: then
        every lease is lost)."""
        life = self._life
        if life is None:
            return False
        key = replica_key(self.role, self.holder)
        started = self.clock()
        try:
            revision = await self._state.cas(
                key, self._replica_record(life.life, life.epoch, life.acquired_at), life.revision
            )
        except Stale:
            # Maybe our own write whose reply was lost (a timeout): the record tells.
            try:
                entry = await self._state.read(key, decode_lease)
            except Unavailable:
                return False
            current = entry.value
            if current is None or current.life != life.life or current.expires_at == RELEASED:
                self._end_life("ended by another replica" if current else "its record is gone")
                return False
            self._life = dataclasses.replace(life, revision=entry.revision)
            return await self._renew_life()
        except Unavailable as exc:
            log.warning("replica lease renewal failed", extra={"lease": key, "error": exc.message})
            return False
        if self._life is life:
            self._life = dataclasses.replace(
                life, revision=revision, trusted_until=started + self.ttl_s * TRUST
            )
        return True

    def _end_life(self, why: str) -> None:
        """Our replica lease is over (or no longer trusted): every lease it held is lost."""
        self._life = None
        for name in list(self._grants):
            self._lose(name, why)

    async def _end(self, peer: _Peer, holder: str) -> bool:
        """End another replica's life by compare-and-set on the revision read: from then on
        its renewals fail and every lease naming that life is free."""
        if peer.record is None:
            return False
        ended = msgspec.structs.replace(peer.record, expires_at=RELEASED)
        key = replica_key(self.role, holder)
        try:
            await self._state.cas(key, ended, peer.revision)
        except (Stale, Unavailable):
            self._peers.pop(holder, None)  # it renewed meanwhile (or we could not tell)
            return False
        self._peers.pop(holder, None)
        self._freed = True  # every name of that life is free: pursue takes them at once
        log.warning("replica lease ended", extra={"lease": key, "life": peer.record.life})
        return True

    # -- take, renew, release --------------------------------------------------------------

    async def acquire(self, name: str) -> Grant | None:
        """Take the lease if it is free, expired or ours. None if another replica holds it or
        the bus did not answer."""
        return await self._take(name, None)

    async def _take(self, name: str, gone: dict[str, bool] | None) -> Grant | None:
        """``acquire``; ``gone``: what probes found of each holder earlier in this pass of
        ``pursue`` (a paused holder's probe waits out its timeout: once per pass, not once
        per name it holds)."""
        if self.held(name):
            return self._grants[name]
        life = await self._own_life()
        if life is None:
            return None
        try:
            record, revision = await self.read(name)
            live, peer = (False, None) if record is None else await self._binding(record)
        except Unavailable:
            return None
        if record is not None and record.holder != self.holder and (live or peer is not None):
            if live:
                self._elsewhere[name] = record.holder
                found = gone.get(record.holder) if gone is not None else None
                if found is None:
                    found = await self._gone(record.holder)
                    if gone is not None:
                        gone[record.holder] = found
                if not found:
                    self._lose(name, f"held by {record.holder}")
                    return None
                # Its process is gone: a new term now, after ending its life by compare-and-set
                # on the revision read before the probes (a renewal in between means it was
                # there after all, and the end fails).
                log.warning("lease holder gone, taking over", extra={
                    "lease": lease_key(self.role, name), "holder": record.holder})  # fmt: skip
            if peer is not None and not await self._end(peer, record.holder):
                return None
        self._elsewhere.pop(name, None)
        # A new term: free, over, or named after an earlier life of ours (restarted under the
        # same --instance, or a life that ran out), which no longer acts.
        epoch = (record.epoch if record is not None else 0) + 1
        return await self._write(name, epoch, revision, life)

    async def _gone(self, holder: str) -> bool:
        return self.presence is not None and await self.presence.gone(holder)

    async def _write(self, name: str, epoch: int, revision: int, life: _Life) -> Grant | None:
        key = lease_key(self.role, name)
        now = datetime.now(UTC)
        record = LeaseRecord(
            holder=self.holder,
            epoch=epoch,
            expires_at=BY_REPLICA,
            ttl_s=self.ttl_s,
            acquired_at=now,
            life=life.life,
        )
        try:
            new_rev = await self._state.cas(key, record, revision)
        except Stale:
            self._lose(name, "another replica wrote it first")
            return None
        except Unavailable as exc:
            log.warning("lease write failed", extra={"lease": key, "error": exc.message})
            return None
        if self._life is None or self._life.life != life.life:
            return None  # our life ended while we wrote: what names it is free for anyone
        self._grants[name] = grant = Grant(name, self.holder, epoch, new_rev, life.life, now)
        log.info("lease taken", extra={"lease": key, "epoch": epoch})
        if self.on_change is not None:
            self.on_change(name, True)
        self._wake.set()  # keep() renews our replica lease while we hold anything
        return grant

    async def renew(self, name: str) -> bool:
        """Renew our replica lease now; whether ``name`` is still held."""
        if name not in self._grants:
            return False
        if self._trusted() is None:
            self._end_life("not renewed in time")
            return False
        await self._renew_life()
        return self.held(name)

    async def _check(self, name: str) -> None:
        """Read ``name``'s record and lose it if it no longer names us in this term (an older
        confbus took it over while our connection was gone)."""
        grant = self._grants.get(name)
        if grant is None:
            return
        try:
            record, _ = await self.read(name)
        except Unavailable:
            return
        if record is None or (record.holder, record.epoch, record.life) != (
            self.holder,
            grant.epoch,
            grant.life,
        ):
            self._lose(name, f"taken by {record.holder if record else 'nobody'}")

    async def release(self, name: str) -> None:
        """Give the lease up now: another replica may take it at once."""
        grant = self._grants.get(name)
        self._lose(name, "released")
        if grant is not None:
            await self._write_released(grant)

    async def _write_released(self, grant: Grant) -> None:
        # Expired since 1970: free at once for anyone, whatever the skew allowance.
        expired = LeaseRecord(
            holder=self.holder,
            epoch=grant.epoch,
            expires_at=RELEASED,
            ttl_s=self.ttl_s,
            life=grant.life,
        )
        with contextlib.suppress(Stale, Unavailable):  # it simply ends with our life
            await self._state.cas(lease_key(self.role, grant.name), expired, grant.revision)

    async def release_all(self) -> None:
        """A clean stop: take nothing more, stop acting, release every name at once (each
        record written released, side by side), then end our replica lease."""
        self._closed = True
        grants = list(self._grants.values())
        life = self._life
        self._end_life("released")  # we stop acting before anything says we did
        async with anyio.create_task_group() as tg:
            for grant in grants:
                tg.start_soon(self._write_released, grant)
        if life is not None:
            record = self._replica_record(life.life, life.epoch, life.acquired_at)
            ended = msgspec.structs.replace(record, expires_at=RELEASED)
            with contextlib.suppress(Stale, Unavailable):  # it simply expires
                await self._state.cas(replica_key(self.role, self.holder), ended, life.revision)

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
        """Renew our replica lease every ``ttl / 3`` while we hold anything; the moment its
        trust runs out unrenewed, lose every lease (cancel their guards); answer our presence
        probes meanwhile. Runs until cancelled."""
        async with anyio.create_task_group() as tg:
            if self.presence is None:
                task_status.started()
                await self._renewals()
                return
            await tg.start(self.presence.serve)
            # Back from a lost connection, a peer may have taken leases over meanwhile (we
            # were "gone"): renew and check everything now, so what was taken is lost at once.
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
        next_renewal = math.inf
        while True:
            now = self.clock()
            life = self._life
            if life is not None and life.trusted_until <= now:
                self._end_life("not renewed in time")
                life = None
            if life is None or not self._grants:
                next_renewal = math.inf  # holding nothing: let the life lapse
            else:
                if self._renew_all:
                    self._renew_all = False
                    next_renewal = now
                    for name in list(self._grants):
                        await self._check(name)
                if next_renewal == math.inf:
                    next_renewal = now + self.ttl_s * RENEW_EVERY
                if next_renewal <= now:
                    ok = await self._renew_life()
                    # A failed renewal is tried again soon, until the trust runs out.
                    step = self.ttl_s * RENEW_EVERY if ok else min(0.2, self.ttl_s / 10)
                    next_renewal = self.clock() + step
            life = self._life
            wake_at = min(next_renewal, life.trusted_until if life is not None else math.inf)
            self._wake = anyio.Event()
            if self._renew_all and self._grants:
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
            self._freed = False
            gone: dict[str, bool] = {}
            for name in names:
                if not self.held(name):
                    await self._take(name, gone)  # None when held elsewhere or unreachable
            if self._freed:
                continue  # we ended a life mid-pass: its names before that are free too
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
