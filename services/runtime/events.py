"""Emitting audit events on ``CFG_EVENTS``: subject ``cfg.event.<ns>.<type>``."""

from __future__ import annotations

import contextlib
from datetime import datetime

import anyio
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck

from confbus.runtime.bus import Bus
from confbus.runtime.errors import Unavailable
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.events import AnyEvent, Event, NodeApplied, decode_event
from confbus.schemas.streams import CFG_EVENTS


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


async def read_events(
    bus: Bus, subject: str, *, since: datetime | None = None, page: int = 256
) -> list[AnyEvent]:
    """Every event stored under ``subject`` (a filter of ``CFG_EVENTS``), oldest first, as the
    stream holds them now (from ``since``, if given); bytes this build cannot decode — a newer
    confbus's, or someone else's — are skipped. For the rare reads of a short history (a
    namespace's last-good marks, a redelivered change's announcements), never per message."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL if since is None else DeliverPolicy.BY_START_TIME,
        opt_start_time=since,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    try:
        psub = await bus.js.pull_subscribe(subject, stream=CFG_EVENTS.name, config=config)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error) as e:
        raise Unavailable(f"cannot read {CFG_EVENTS.name}: {e!r}") from e
    out: list[AnyEvent] = []
    name = ""
    try:
        info = await psub.consumer_info()
        name, pending = info.name, info.num_pending
        while pending:
            try:
                msgs = await psub.fetch(min(page, pending), timeout=5.0)
            except nats.errors.TimeoutError as e:
                raise Unavailable(f"reading {CFG_EVENTS.name} stalled") from e
            for msg in msgs:
                pending = msg.metadata.num_pending
                with contextlib.suppress(*DECODE_ERRORS):
                    out.append(decode_event(msg.data))
    finally:
        # An ephemeral consumer would linger for its inactive_threshold; remove it now.
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
            if name:
                with contextlib.suppress(Exception):
                    await bus.js.delete_consumer(CFG_EVENTS.name, name)
    return out
