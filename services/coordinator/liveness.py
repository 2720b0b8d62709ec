"""Which coordinator replicas are alive: each writes ``coord.alive.<instance>`` (an ``Alive``)
in ``CFG_STATE`` every second.

This only decides who *should* lead a namespace (``Peers.owner``: rendezvous hashing over the
live replicas spreads free namespaces over them); it never decides anything about a
transaction. Safety comes from the epoch on the head: a replica declared dead by mistake
(clock skew, a long GC pause) is fenced, not trusted.
"""

from __future__ import annotations

import hashlib
import time

import anyio
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from confbus.runtime.bus import Bus
from confbus.runtime.kv import StateKV
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.state import ALIVE, Alive, alive_key, bucket_subject, decode_alive
from confbus.schemas.streams import CFG_STATE
from confbus.schemas.subjects import instance_token as token

ALIVE_INTERVAL_S = 1.0
DEAD_AFTER_S = 3.0


# The beats as they are written to the bucket. A core subscription to the bucket's own subjects
# sees each put without a consumer that a cluster failover could leave stalled.
_BEATS = bucket_subject(CFG_STATE, ALIVE)


class Liveness:
    def __init__(self, kv: KeyValue | None, instance: str) -> None:
        self.kv = StateKV(kv) if kv is not None else None
        self.instance = instance

    async def beat(self) -> None:
        if self.kv is not None:
            await self.kv.put(alive_key(token(self.instance)), Alive(self.instance, time.time()))

    async def alive(self, instance: str) -> bool:
        if self.kv is None or not instance:
            return True  # no liveness data: never take over on a guess
        seen = (await self.kv.read(alive_key(token(instance)), decode_alive)).value
        return seen is not None and time.time() - seen.at < DEAD_AFTER_S


class Peers:
    """The coordinator replicas heard from lately (always including ourselves)."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._seen: dict[str, float] = {}  # instance -> monotonic time of its last beat

    async def watch(self, bus: Bus, *, task_status: TaskStatus[None]) -> None:
        async def on_beat(msg: Msg) -> None:
            try:
                seen = decode_alive(msg.data)
            except DECODE_ERRORS:
                return
            self._seen[seen.instance] = time.monotonic()

        sub = await bus.nc.subscribe(_BEATS, cb=on_beat)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await sub.unsubscribe()
                except Exception:  # the connection may be closed already
                    pass

    def alive(self) -> list[str]:
        now = time.monotonic()
        live = {i for i, at in self._seen.items() if now - at < DEAD_AFTER_S}
        live.add(self.instance)
        return sorted(live)

    def forget(self, instance: str) -> None:
        """It did not answer a forwarded request: do not prefer it until it beats again."""
        self._seen.pop(instance, None)

    def owner(self, namespace: str) -> str:
        """Rendezvous hashing: the live replica that should lead a free namespace. Every
        replica with the same view picks the same one; one leaving moves only its share."""
        return max(self.alive(), key=lambda i: _weight(i, namespace))


def _weight(instance: str, namespace: str) -> bytes:
    return hashlib.blake2b(f"{instance}\0{namespace}".encode(), digest_size=8).digest()
