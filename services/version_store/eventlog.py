"""Reading back what the version-store has already said on ``CFG_EVENTS``.

Events carry a message id, so a repeat within the stream's duplicate window is a no-op. A
redelivery can come later than that window (a crash between emitting and acking, and a restart
minutes later), so before re-emitting for a change it may already have announced, the service
looks in the stream itself: from the time the change was stored on ``CFG_CHANGES`` (nothing
about it can be older), over that namespace's ``version.*`` events. This runs only for
redelivered changes and repeated operations — the rare paths — never per change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from confbus.runtime.bus import Bus
from confbus.runtime.events import read_events
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.events import AnyEvent, VersionCreated, VersionRejected, decode_event
from confbus.schemas.streams import CFG_EVENTS

# Clocks of NATS servers (and of the service, for times it recorded) may differ a little.
MARGIN = timedelta(seconds=30)


@dataclass
class Announced:
    """What a namespace's events already say about changes."""

    created: set[int] = field(default_factory=set)  # versions with a version.created event
    rejected: set[str] = field(default_factory=set)  # change ids with a version.rejected event
    other: list[AnyEvent] = field(default_factory=list)


async def scan(bus: Bus, namespace: str, since: datetime, kind: str = "*") -> Announced:
    """The ``cfg.event.<ns>.version.<kind>`` events stored since ``since`` (minus a margin)."""
    out = Announced()
    subject = subjects.event(namespace, f"version.{kind}")
    for event in await read_events(bus, subject, since=since - MARGIN):
        if isinstance(event, VersionCreated):
            out.created.add(event.version)
        elif isinstance(event, VersionRejected):
            out.rejected.add(event.change_id)
        else:
            out.other.append(event)
    return out


async def last_event(bus: Bus, namespace: str, kind: str) -> AnyEvent | None:
    """The newest ``cfg.event.<ns>.version.<kind>`` event, if the stream still has one."""
    raw = await bus.last_msg(CFG_EVENTS.name, subjects.event(namespace, f"version.{kind}"))
    if raw is None or not raw.data:
        return None
    try:
        event: AnyEvent = decode_event(raw.data)
    except DECODE_ERRORS:
        return None
    return event
