"""Which coordinator replicas are alive: each writes ``coord.alive.<instance>`` in
``CFG_STATE`` every second.

This only decides who *should* take over a namespace whose leader went quiet; it never
decides anything about a transaction. Safety comes from the epoch on the head: a replica
declared dead by mistake (clock skew, a long GC pause) is fenced, not trusted.
"""

from __future__ import annotations

import time

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from services.runtime.codec import encode

ALIVE_INTERVAL_S = 1.0
DEAD_AFTER_S = 3.0


class _Alive(msgspec.Struct, frozen=True):
    instance: str
    at: float  # wall clock seconds of the writer


def _key(instance: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in instance)
    return f"coord.alive.{safe}"


class Liveness:
    def __init__(self, kv: KeyValue | None, instance: str) -> None:
        self.kv = kv
        self.instance = instance

    async def beat(self) -> None:
        if self.kv is not None:
            await self.kv.put(_key(self.instance), encode(_Alive(self.instance, time.time())))

    async def alive(self, instance: str) -> bool:
        if self.kv is None or not instance:
            return True  # no liveness data: never take over on a guess
        try:
            entry = await self.kv.get(_key(instance))
        except nats.js.errors.KeyNotFoundError:
            return False
        if entry.value is None:
            return False
        seen = msgspec.json.decode(entry.value, type=_Alive)
        return time.time() - seen.at < DEAD_AFTER_S
