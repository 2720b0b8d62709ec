"""Typed records in a KV bucket, changed by compare-and-set: the one read, the one write and
the one retry loop every service uses (``CFG_STATE``, ``CFG_TXN_HEAD``; the keys and records
are in ``confbus.schemas.state``).

- ``read(key, decode)`` → ``Entry(value, revision)``. Revision 0: never written (a deleted key
  keeps its marker's revision). A value that does not decode (garbage, or a newer confbus's)
  reads as absent with its revision, so a compare-and-set still orders against it.
- ``cas(key, value, revision)`` writes only if the key is still at ``revision`` (0: creates
  it); ``Stale`` if it moved on.
- ``mutate(key, decode, change)`` reads, applies a pure ``change`` and compare-and-sets, and
  on ``Stale`` reads and decides again: a decision is always made on the record as it is now.
- ``watch(pattern, on_entry)`` mirrors keys: the current values, then every write; back within
  a second of a broker restart (``confbus.runtime.follow``).

Errors are mapped here, once: ``Stale`` when a compare-and-set loses, ``InvalidInput`` when a
value is larger than the bucket holds (permanent), ``Unavailable`` when the bucket does not
answer (a cluster electing a stream leader answers 503s, times out, or has no responders) —
callers never see a nats error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import nats.errors
import nats.js.errors
from anyio.abc import TaskStatus
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from confbus.runtime.bus import Bus, too_large
from confbus.runtime.codec import encode
from confbus.runtime.errors import InvalidInput, Stale, Unavailable
from confbus.runtime.follow import Follower
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.streams import BucketSpec

log = logging.getLogger("confbus.kv")

T = TypeVar("T")

# What a bucket that does not answer raises (nats.js.errors.APIError for a 503 is an Error).
BUS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError)
# How a KV write shows on the bucket's stream: a header for a delete or a purge.
_KV_OPERATION = "KV-Operation"
KEYS_IDLE_S = 10.0  # how long the server keeps a key listing's consumer after it stops
_KV_DELETED = ("DEL", "PURGE")


@dataclass(frozen=True)
class Entry(Generic[T]):
    value: T | None
    revision: int  # 0: never written (a deleted key keeps its marker's revision)


def _down(what: str, key: str, exc: BaseException) -> Unavailable:
    return Unavailable(f"cannot {what} {key}: the KV bucket is not answering ({exc!r})")


def _refused(key: str, data: bytes, exc: BaseException) -> InvalidInput | Unavailable:
    """Why a write failed: too large for the bucket (permanent), else the bucket is down."""
    return too_large(exc, f"the value of {key}", len(data)) or _down("write", key, exc)


class StateKV:
    def __init__(self, kv: KeyValue, bus: Bus | None = None) -> None:
        """``bus``: the connection ``kv`` came from, needed only to ``watch`` (``open`` gives
        it)."""
        self.kv = kv
        self.bus = bus
        self.bucket = kv._name  # nats-py keeps the bucket's name only there

    @classmethod
    async def open(cls, bus: Bus, bucket: BucketSpec) -> StateKV:
        return cls(await bus.kv(bucket.name), bus)

    async def read(self, key: str, decode: Callable[[bytes], T]) -> Entry[T]:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            marker = getattr(exc, "entry", None)
            return Entry(None, int(getattr(marker, "revision", 0) or 0))
        except BUS_ERRORS as exc:
            raise _down("read", key, exc) from exc
        revision = int(entry.revision or 0)
        if not entry.value:
            return Entry(None, revision)
        try:
            return Entry(decode(entry.value), revision)
        except DECODE_ERRORS:
            log.warning("unreadable KV value, taken as absent", extra={"key": key})
            return Entry(None, revision)

    async def cas(self, key: str, value: object, revision: int) -> int:
        """Write ``value`` if the key is still at ``revision`` (0: if it has none); the new
        revision. ``Stale`` if it moved on."""
        data = encode(value)
        try:
            if revision == 0:
                return int(await self.kv.create(key, data))
            return int(await self.kv.update(key, data, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Stale(f"{key} moved on since revision {revision}") from exc
        except BUS_ERRORS as exc:
            raise _refused(key, data, exc) from exc

    async def mutate(
        self,
        key: str,
        decode: Callable[[bytes], T],
        change: Callable[[T | None], T | None],
        *,
        attempts: int = 50,
        hint: Entry[T] | None = None,
    ) -> tuple[Entry[T], bool]:
        """Read, apply ``change`` (None: leave it), compare-and-set; again on ``Stale``.

        ``hint``: the entry as a watch or our own last write showed it — tried first without a
        read; if it is out of date the compare-and-set fails and the loop reads as usual (and
        "nothing to change" is only ever concluded from a read). ``change`` may raise (say
        ``Fenced``): nothing is written then.
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
        # Contention, not a fault of the request: whoever asked may retry.
        raise Unavailable(f"{key} keeps changing under us: gave up after {attempts} attempts")

    async def put(self, key: str, value: object) -> int:
        """Write without comparing: only for a key with a single writer (a liveness beat)."""
        data = encode(value)
        try:
            return int(await self.kv.put(key, data))
        except BUS_ERRORS as exc:
            raise _refused(key, data, exc) from exc

    async def delete(self, key: str) -> None:
        try:
            await self.kv.delete(key)
        except BUS_ERRORS as exc:
            raise _down("delete", key, exc) from exc

    async def keys(self, pattern: str) -> list[str]:
        """The keys matching ``pattern`` that hold a value now."""
        try:
            # Its consumer outlives the watcher's stop by ``inactive_threshold`` (nats-py: 5 min
            # by default): a caller listing every second (the coordinator's recovery sweep)
            # then kept ~300 of them per replica, and with those left by kills the bucket's
            # 1000-consumer cap was reached — a restarted coordinator could not start.
            watcher = await self.kv.watch(
                pattern, meta_only=True, ignore_deletes=True, inactive_threshold=KEYS_IDLE_S
            )
        except BUS_ERRORS as exc:
            raise _down("list", pattern, exc) from exc
        out: list[str] = []
        try:
            async for entry in watcher:
                if entry is None:  # the end of the current values
                    break
                out.append(entry.key)
        except BUS_ERRORS as exc:
            raise _down("list", pattern, exc) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(watcher)
        return out

    async def watch(
        self,
        pattern: str,
        on_entry: Callable[[str, bytes | None, int], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Mirror the keys matching ``pattern`` (``>``, ``*`` wildcards): every current value
        first — then ``started`` — then each write as it happens, with its revision; ``None``
        for a deleted key. Runs until cancelled.

        nats-py's ``kv.watch`` is an ordered consumer that notices a lost consumer only after
        10-20 s (a broker restart, a stream leader moving); this one reads the bucket's stream
        with ``runtime.follow`` and is back within a second of a reconnect."""
        if self.bus is None:
            raise TypeError("a StateKV made without its bus cannot watch: use StateKV.open")
        prefix = f"$KV.{self.bucket}."
        reader = Follower(
            self.bus, f"KV_{self.bucket}", prefix + pattern, deliver=DeliverPolicy.LAST_PER_SUBJECT
        )
        async with reader:
            # Nothing to load (or the bus down at first: values come when it is back).
            started = reader.created == 0 or reader.pending_at_start == 0
            if started:
                task_status.started()
            while True:
                msg = await reader.next()
                op = (msg.headers or {}).get(_KV_OPERATION)
                value = None if op in _KV_DELETED or not msg.data else msg.data
                md = msg.metadata
                on_entry(msg.subject[len(prefix) :], value, md.sequence.stream)
                if not started and md.num_pending == 0:
                    started = True
                    task_status.started()


class KVMirror(Generic[T]):
    """Every key of a bucket matching ``pattern`` as last written, decoded, while ``run``
    runs (``StateKV.watch``: one consumer of the bucket's stream): a sweep that would list
    and read every key each round reads only those the mirror shows with something to do.
    A value that does not decode, or a deleted key, is left out, as a read finds it empty.
    What it shows is a guess to read the key of, never a decision."""

    def __init__(self, state: StateKV, pattern: str, decode: Callable[[bytes], T]) -> None:
        self.state = state
        self.pattern = pattern
        self.decode = decode
        self.values: dict[str, T] | None = None  # key -> value; None: not running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the keys until cancelled; ``task_status`` once every current value is in."""
        self.values = {}
        try:
            await self.state.watch(self.pattern, self._on_write, task_status=task_status)
        finally:
            self.values = None

    def _on_write(self, key: str, value: bytes | None, revision: int) -> None:
        if self.values is None:
            return
        try:
            decoded = self.decode(value) if value else None
        except DECODE_ERRORS:
            decoded = None
        if decoded is None:
            self.values.pop(key, None)
        else:
            self.values[key] = decoded


async def _stop(watcher: KeyValue.KeyWatcher) -> None:
    try:
        await watcher.stop()  # type: ignore[no-untyped-call]
    except Exception:  # the connection may be gone
        pass
