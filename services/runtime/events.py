"""Emitting audit events on ``CFG_EVENTS``: subject ``cfg.event.<ns>.<type>``."""

from __future__ import annotations

from nats.js.api import PubAck

from confbus.runtime.bus import Bus
from confbus.schemas import subjects
from confbus.schemas.events import Event, NodeApplied


def event_type(event: Event) -> str:
    tag = event.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


async def emit(bus: Bus, event: Event, *, msg_id: str | None = None) -> PubAck:
    """Publish an event and wait for the stream's ack.

    Give a ``msg_id`` on every path that may run twice (redelivery, recovery): within the
    stream's duplicate window the second publish is a no-op.
    """
    return await bus.publish(event_subject(event), event, msg_id=msg_id)


def event_subject(event: Event) -> str:
    """``cfg.event.<ns>.<type>``; ``node.applied`` also names its node (agents may publish
    only their own)."""
    if isinstance(event, NodeApplied):
        return subjects.node_applied(event.namespace, event.node)
    return subjects.event(event.namespace, event_type(event))
