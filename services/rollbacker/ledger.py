"""The ledgers in ``CFG_STATE`` (key ``rollback.<ns>``), changed only by compare-and-set.

``change`` applies a pure function to the ledger as it is *now* (``confbus.runtime.kv``: read,
apply, compare-and-set, again if another writer got there first), so a decision (start, refuse,
take over) is never made on a stale view.

A running rollback is driven by the replica holding ``lease.rollbacker.<ns>``: ``take`` writes
its name and the lease's epoch into the rollback, and ``update_rollback`` refuses a writer
whose name or epoch is not the rollback's (``Fenced``) — so a replica that lost the lease,
paused or cut off, can never write over its successor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import msgspec
from anyio.abc import TaskStatus

from confbus.rollbacker.records import with_rollback
from confbus.runtime.errors import Fenced
from confbus.runtime.kv import KVMirror, StateKV
from confbus.schemas.base import utcnow
from confbus.schemas.state import LEDGERS, Ledger, Rollback, decode_ledger, ledger_key, ledger_of

T = TypeVar("T")


class Ledgers:
    def __init__(self, kv: StateKV) -> None:
        self.kv = kv
        # Every ledger as last written, while ``mirror`` runs.
        self._mirror = KVMirror(kv, LEDGERS, decode_ledger)

    async def read(self, namespace: str) -> Ledger:
        # Absent, or unreadable (a bug, or a much newer layout): start afresh rather than never
        # roll back this namespace again; the old value stays in the bucket's history.
        ledger = (await self.kv.read(ledger_key(namespace), decode_ledger)).value
        return ledger or Ledger(namespace=namespace)

    async def change(
        self, namespace: str, fn: Callable[[Ledger], tuple[Ledger | None, T]]
    ) -> tuple[Ledger, T]:
        """Apply ``fn`` by compare-and-set; ``fn`` returns (new ledger or None, result)."""
        results: list[T] = []

        def apply(cur: Ledger | None) -> Ledger | None:
            results.clear()
            new, result = fn(cur or Ledger(namespace=namespace))
            results.append(result)
            return new

        entry, _ = await self.kv.mutate(ledger_key(namespace), decode_ledger, apply)
        return entry.value or Ledger(namespace=namespace), results[0]

    async def take(
        self, namespace: str, rollback_id: str, owner: str, epoch: int
    ) -> tuple[Rollback | None, bool]:
        """Make ``owner``, holding the namespace's lease at ``epoch``, the driver of the running
        rollback (None: it is not running any more), and whether that took it over: it had
        been driven before, by another replica or by an earlier life of ours."""

        def apply(ledger: Ledger) -> tuple[Ledger | None, tuple[Rollback | None, bool]]:
            rb = ledger.running
            if rb is None or rb.rollback_id != rollback_id:
                return None, (None, False)
            if rb.epoch > epoch:
                raise Fenced(f"rollback {rollback_id} is driven by {rb.owner} now", holder=rb.owner)
            if rb.owner == owner and rb.epoch == epoch:
                return None, (rb, False)
            mine = msgspec.structs.replace(rb, owner=owner, epoch=epoch, updated_at=utcnow())
            return with_rollback(ledger, mine), (mine, rb.epoch != 0 or rb.owner != owner)

        return (await self.change(namespace, apply))[1]

    async def update_rollback(
        self,
        namespace: str,
        rollback_id: str,
        owner: str,
        epoch: int,
        fn: Callable[[Rollback], Rollback],
    ) -> Rollback:
        """Change one rollback we drive (``take``); ``Fenced`` if we do not drive it now."""

        def apply(ledger: Ledger) -> tuple[Ledger | None, Rollback]:
            rb = ledger.find(rollback_id)
            if rb is None or rb.owner != owner or rb.epoch != epoch or rb.state != "running":
                holder = rb.owner if rb else ""
                why = f"rollback {rollback_id} is driven by {holder or 'nobody'} now"
                raise Fenced(why, holder=holder)
            new = msgspec.structs.replace(fn(rb), updated_at=utcnow())
            out = with_rollback(ledger, new)
            if new.state != "running" and ledger.active == rollback_id:
                out = msgspec.structs.replace(out, active=None)
            return out, new

        return (await self.change(namespace, apply))[1]

    async def namespaces(self) -> list[str]:
        """Namespaces that have a ledger."""
        return [ledger_of(key) for key in await self.kv.keys(LEDGERS)]

    async def mirror(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow every ledger as it is written, so the resume sweep reads only the ledgers
        with a rollback running (``with_running``) instead of listing and reading all of them
        every round. Runs until cancelled."""
        await self._mirror.run(task_status=task_status)

    async def with_running(self) -> list[str]:
        """The namespaces whose ledger, as last written, has a running rollback — every
        namespace with a ledger when they are not mirrored. A guess to read, never a decision."""
        ledgers = self._mirror.values
        if ledgers is None:
            return await self.namespaces()
        return sorted(
            ledger_of(key) for key, ledger in ledgers.items() if ledger.running is not None
        )
