"""The ledgers in ``CFG_STATE`` (key ``rollback.<ns>``), changed only by compare-and-set.

``change`` reads the ledger, applies a pure function to it and writes the result with
``update(last=revision)``; when another writer got there first it reads again and re-applies.
The function decides on the ledger as it is *now*, so a decision (start, refuse, take over) is
never made on a stale view.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from confbus.rollbacker.records import (
    KEY_PREFIX,
    Ledger,
    Rollback,
    decode_ledger,
    key,
    with_rollback,
)
from confbus.runtime.codec import encode
from confbus.runtime.errors import Conflict, Unavailable
from confbus.schemas.base import DECODE_ERRORS, utcnow

log = logging.getLogger("confbus.rollbacker")

T = TypeVar("T")
MAX_CAS_ATTEMPTS = 50


class Fenced(Conflict):
    """Another replica owns this rollback now: stop driving it."""

    def __init__(self, rollback_id: str, owner: str) -> None:
        self.rollback_id = rollback_id
        self.owner = owner
        super().__init__(f"rollback {rollback_id} is driven by {owner or 'nobody'} now")


class Ledgers:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def read(self, namespace: str) -> tuple[Ledger, int]:
        """The ledger and its revision (0: no key yet)."""
        try:
            entry = await self.kv.get(key(namespace))
        except nats.js.errors.KeyNotFoundError:
            return Ledger(namespace=namespace), 0
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"CFG_STATE is not answering: {exc!r}") from exc
        if entry.value is None:
            return Ledger(namespace=namespace), entry.revision or 0
        try:
            return decode_ledger(entry.value), entry.revision or 0
        except DECODE_ERRORS:
            # Unreadable (a bug, or a much newer layout): start afresh rather than never
            # roll back this namespace again; the old value stays in the bucket's history.
            log.error("unreadable rollback ledger, starting a new one", extra={"ns": namespace})
            return Ledger(namespace=namespace), entry.revision or 0

    async def change(
        self, namespace: str, fn: Callable[[Ledger], tuple[Ledger | None, T]]
    ) -> tuple[Ledger, T]:
        """Apply ``fn`` by compare-and-set; ``fn`` returns (new ledger or None, result)."""
        for _ in range(MAX_CAS_ATTEMPTS):
            ledger, rev = await self.read(namespace)
            new, result = fn(ledger)
            if new is None:
                return ledger, result
            try:
                if rev == 0:
                    await self.kv.create(key(namespace), encode(new))
                else:
                    await self.kv.update(key(namespace), encode(new), last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # someone else wrote first: decide again on what is there now
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                raise Unavailable(f"CFG_STATE is not answering: {exc!r}") from exc
            return new, result
        raise Unavailable(f"the rollback ledger of {namespace} keeps changing under us")

    async def update_rollback(
        self,
        namespace: str,
        rollback_id: str,
        owner: str,
        fn: Callable[[Rollback], Rollback],
        *,
        lease_s: float,
    ) -> Rollback:
        """Change one rollback we own (and renew our lease); ``Fenced`` if we do not own it."""

        def apply(ledger: Ledger) -> tuple[Ledger | None, Rollback]:
            rb = ledger.find(rollback_id)
            if rb is None or rb.owner != owner or rb.state != "running":
                raise Fenced(rollback_id, rb.owner if rb else "")
            now = utcnow()
            new = fn(rb)
            new = msgspec.structs.replace(
                new,
                updated_at=now,
                lease_until=now + timedelta(seconds=lease_s) if new.state == "running" else None,
            )
            out = with_rollback(ledger, new)
            if new.state != "running" and ledger.active == rollback_id:
                out = msgspec.structs.replace(out, active=None)
            return out, new

        return (await self.change(namespace, apply))[1]

    async def namespaces(self) -> list[str]:
        """Namespaces that have a ledger (a watch over ``rollback.*``, read to its end)."""
        try:
            watcher = await self.kv.watch(f"{KEY_PREFIX}*", meta_only=True, ignore_deletes=True)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"CFG_STATE is not answering: {exc!r}") from exc
        out: list[str] = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                out.append(entry.key[len(KEY_PREFIX) :])
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return out
