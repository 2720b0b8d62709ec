"""Keeping the two change streams apart (a replicated stack): ``CFG_CHANGES_ALT`` and the
version-store's consumer of it are led by a server that leads neither ``CFG_CHANGES`` nor the
version-store's consumer of it — so a SIGKILL of any one server leaves one whole way for a change
(publish, consume, store) that does not wait for a raft election (docs/design.md §3.1).

nats-server moves a stream's or a consumer's leader on a stepdown request naming a preferred
server (``placement.preferred``, nats-server ≥ 2.11). Every version-store replica runs this
loop; they pick the same server (the present leader when it is free, else the first free
replica), and a stepdown towards the leader already there is refused, harmlessly.
"""

from __future__ import annotations

import contextlib
import json
import logging

import anyio
import nats.errors
import nats.js.errors
from nats.js.api import ClusterInfo

from confbus.runtime.bus import Bus
from confbus.schemas.streams import CFG_CHANGES, CFG_CHANGES_ALT
from confbus.version_store.metrics import StoreMetrics

log = logging.getLogger("confbus.version_store")

# How often the leaders are looked at: after a kill, the stream that lost its leader elects one
# in 4-9 s, maybe on the server the other leads; a move takes milliseconds.
PLACE_EVERY_S = 1.0
_ASK_S = 1.0  # one stream's or consumer's info; a leaderless one answers nothing


async def keep_apart(bus: Bus, durable: str, metrics: StoreMetrics) -> None:
    """Forever: move ``CFG_CHANGES_ALT``'s leader and its ``durable`` consumer's off the servers
    leading ``CFG_CHANGES`` and its ``durable`` consumer (polled every ``PLACE_EVERY_S``)."""
    while True:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await place_once(bus, durable, metrics)
        await anyio.sleep(PLACE_EVERY_S)  # the polling interval, not a synchronisation


async def place_once(bus: Bus, durable: str, metrics: StoreMetrics) -> None:
    """One look, and the moves it calls for."""
    with anyio.fail_after(4 * _ASK_S):
        first = await _clusters(bus, CFG_CHANGES.name, durable)
        alt = await _clusters(bus, CFG_CHANGES_ALT.name, durable)
    if first is None or alt is None:
        return
    taken = {first[0].leader, first[1].leader}
    stream, consumer = alt
    free = [
        name
        for name in (stream.leader, *(p.name for p in stream.replicas or () if p.current))
        if name and name not in taken
    ]
    if not free:
        return  # nowhere to go (a server down): the next look will do
    target = free[0]
    api = f"$JS.API.{{}}.LEADER.STEPDOWN.{CFG_CHANGES_ALT.name}"
    if stream.leader != target:
        await _step_down(bus, api.format("STREAM"), target, stream.leader, metrics)
    if consumer.leader != target:
        subject = f"{api.format('CONSUMER')}.{durable}"
        await _step_down(bus, subject, target, consumer.leader, metrics)


async def _clusters(bus: Bus, stream: str, durable: str) -> tuple[ClusterInfo, ClusterInfo] | None:
    """The stream's and its consumer's cluster info (None on a single server)."""
    s = (await bus.js.stream_info(stream)).cluster
    c = (await bus.js.consumer_info(stream, durable, timeout=_ASK_S)).cluster
    return None if s is None or c is None else (s, c)


async def _step_down(
    bus: Bus, subject: str, target: str, leader: str | None, metrics: StoreMetrics
) -> None:
    body = json.dumps({"placement": {"preferred": target}}).encode()
    reply = await bus.nc.request(subject, body, timeout=_ASK_S)
    try:
        moved = json.loads(reply.data).get("success") is True
    except (ValueError, AttributeError):  # not JSON, or not an object: not a move
        moved = False
    log.info(
        "change stream leader moved" if moved else "change stream leader not moved",
        extra={"api": subject, "from": leader, "to": target, "reply": reply.data[:200].decode()},
    )
    if moved:
        metrics.leader_moves.inc()
