"""An agent stopping on purpose says so, so that no wave waits for its vote.

On SIGTERM/SIGINT the agent sends a last heartbeat marked ``leaving`` — the distributor counts
it ``away`` at once (``confbus.distributor.membership``), where a silent node would be live for
three more intervals and then hold up a wave's vote — and announces ``node.left`` for each of
its namespaces (the audit log's record of it). When it comes back, it is behind its target and
catches up like any node that was away. All of it bounded: a bus that is down makes the agent
stop anyway, a little later, as a crash would.
"""

from __future__ import annotations

import logging

import anyio
import msgspec

from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import ConfbusError
from confbus.runtime.events import emit
from confbus.schemas import subjects
from confbus.schemas.events import NodeLeft
from confbus.schemas.node import Heartbeat

log = logging.getLogger("confbus.agent")

LEAVE_TIMEOUT_S = 2.0


async def announce_leaving(bus: Bus, heartbeat: Heartbeat) -> None:
    """The last heartbeat (``leaving``), then ``node.left`` per namespace; at most 2 s."""
    node = heartbeat.node
    with anyio.move_on_after(LEAVE_TIMEOUT_S) as scope:
        try:
            last = msgspec.structs.replace(heartbeat, leaving=True)
            await bus.nc.publish(subjects.heartbeat(node), encode(last))
            await bus.nc.flush()
            for ns in heartbeat.namespaces:
                await emit(
                    bus,
                    NodeLeft(
                        namespace=ns.namespace,
                        actor=node,
                        node=node,
                        instance=heartbeat.instance,
                    ),
                    msg_id=f"left:{ns.namespace}:{node}:{heartbeat.instance}:"
                    f"{heartbeat.at.timestamp():.0f}",
                )
        except (ConfbusError, Exception) as exc:  # the bus down or closed: stopping anyway
            log.warning("could not announce leaving", extra={"node": node, "error": repr(exc)})
            return
    if scope.cancelled_caught:
        log.warning("could not announce leaving in time", extra={"node": node})
        return
    log.info("left", extra={"node": node})
