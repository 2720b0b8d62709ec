"""Putting a change on the bus — the one home of every publisher of a change (``Client.publish``,
the version-store's ``propose``, the rollbacker): ``CFG_CHANGES``, or ``CFG_CHANGES_ALT`` when
the first has not acknowledged it in time (docs/design.md §3.1)."""

from __future__ import annotations

import contextlib

import anyio
import nats.errors
from nats.js.api import PubAck

from confbus.runtime.bus import Bus
from confbus.runtime.errors import Unavailable
from confbus.schemas import subjects

# How long CFG_CHANGES has to acknowledge before the change goes to CFG_CHANGES_ALT. A healthy
# R3 stream acks in ~0.5 ms (p99 1.5 ms on loopback); a stream whose leader died answers
# nothing until nats-server's raft election, 4-9 s in 2.15 and not configurable.
FIRST_ACK_S = 0.5


async def publish_change(
    bus: Bus, namespace: str, data: bytes, *, msg_id: str, timeout: float = 5.0
) -> PubAck:
    """Publish the encoded change ``data`` with ``msg_id``; the ack of the stream that took it.

    ``CFG_CHANGES`` first, for ``FIRST_ACK_S``; then ``CFG_CHANGES_ALT`` (led by another
    server) for the rest of ``timeout``. A stack of one server has no such stream (no
    responders): ``CFG_CHANGES`` again for the rest. An ack that says *duplicate* (the change
    was published before, and its publisher is asking again because no outcome came) sends it
    to ``CFG_CHANGES_ALT`` too, best effort: the earlier copy may sit in a stream whose leader,
    or whose consumer's leader, died with its server. Whichever stream brings a change, and how
    many times, the version-store maps its change id to one version.
    """
    first, alt = subjects.change_subjects(namespace)
    deadline = anyio.current_time() + timeout

    def rest() -> float:
        return max(deadline - anyio.current_time(), 0.1)

    try:
        ack = await bus.publish(first, data, msg_id=msg_id, timeout=min(FIRST_ACK_S, timeout))
    except Unavailable:
        try:
            return await bus.publish(alt, data, msg_id=msg_id, timeout=rest())
        except Unavailable as exc:
            if not isinstance(exc.__cause__, nats.errors.NoRespondersError):
                raise
        return await bus.publish(first, data, msg_id=msg_id, timeout=rest())
    if ack.duplicate:
        with contextlib.suppress(Unavailable):
            await bus.publish(alt, data, msg_id=msg_id, timeout=FIRST_ACK_S)
    return ack
