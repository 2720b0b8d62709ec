"""The namespace's transaction head in ``CFG_TXN_HEAD``: the single point of decision.

Every write is a compare-and-set on the revision we read. Taking leadership bumps the
epoch; every later write of ours compares against a revision carrying our epoch, so once
another coordinator has bumped it, nothing of ours can be written (a zombie is fenced).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio
import msgspec
from anyio.abc import TaskStatus
from nats.js.kv import KeyValue

from confbus.runtime.bus import Bus
from confbus.runtime.errors import Fenced, Stale
from confbus.runtime.kv import KVMirror, StateKV
from confbus.schemas.base import utcnow
from confbus.schemas.state import HEADS, head_key
from confbus.schemas.streams import CFG_TXN_HEAD
from confbus.schemas.txn import TxnHead, decode_head


@dataclass(frozen=True)
class Head:
    value: TxnHead
    revision: int  # 0: no head yet


class Heads:
    def __init__(self, kv: KeyValue, bus: Bus | None = None) -> None:
        """``bus``: the connection ``kv`` came from, needed only to ``mirror``."""
        self.kv = kv
        self._state = StateKV(kv, bus)
        self._known: dict[str, Head] = {}  # the last head each get or cas showed us
        # Every head as last written, while ``mirror`` runs.
        self._mirror = KVMirror(self._state, HEADS, decode_head)

    def known(self, namespace: str) -> Head | None:
        """The head as we last saw it: a guess for a compare-and-set, which fails (``Fenced``)
        if anyone wrote it since — never a basis for a decision by itself."""
        return self._known.get(namespace)

    def _saw(self, head: Head) -> Head:
        cur = self._known.get(head.value.namespace)
        if cur is None or head.revision >= cur.revision:
            self._known[head.value.namespace] = head
        return head

    @classmethod
    async def open(cls, bus: Bus) -> Heads:
        return cls(await bus.kv(CFG_TXN_HEAD.name), bus)

    async def get(self, namespace: str) -> Head:
        entry = await self._state.read(head_key(namespace), decode_head)
        if entry.value is None:
            return Head(TxnHead(namespace=namespace, epoch=0), entry.revision)
        return self._saw(Head(entry.value, entry.revision))

    async def cas(self, head: Head, new: TxnHead) -> Head:
        """Write ``new`` only if the head is still at ``head.revision``; ``Fenced`` if not."""
        new = msgspec.structs.replace(new, updated_at=utcnow())
        try:
            rev = await self._state.cas(head_key(new.namespace), new, head.revision)
        except Stale as exc:
            raise Fenced(
                f"head of {new.namespace} moved on since revision {head.revision}"
            ) from exc
        return self._saw(Head(new, rev))

    async def namespaces(self) -> list[str]:
        return sorted(await self._state.keys(HEADS))

    async def mirror(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow every head as it is written: the recovery sweep then reads only the heads
        with something left to do (``unsettled``) instead of listing and reading every one
        each second. Runs until cancelled."""
        await self._mirror.run(task_status=task_status)

    async def unsettled(self, settled: Callable[[TxnHead], bool]) -> list[str]:
        """The namespaces whose head, as last written, is not ``settled`` — every namespace
        when the heads are not mirrored. A guess to read the head of, never a decision."""
        heads = self._mirror.values
        if heads is None:
            return await self.namespaces()
        return sorted(ns for ns, head in heads.items() if not settled(head))
