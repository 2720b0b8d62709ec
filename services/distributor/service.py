"""The distributor service: heartbeats in, version events in, switches out."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import anyio
import msgspec
from anyio.abc import TaskStatus
from nats.aio.msg import Msg

from schemas import subjects
from schemas.events import AnyEvent, VersionApproved, VersionCreated, VersionPromoted, decode_event
from schemas.node import decode_heartbeat
from schemas.streams import CFG_EVENTS
from services.distributor.membership import Membership
from services.distributor.rollout import Distributor
from services.runtime.consumer import Consumer, Delivery
from services.runtime.metrics import ConsumerMetrics
from services.runtime.service import ServiceContext

log = logging.getLogger("confbus.distributor")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=2.0,
        help="the agents' heartbeat interval, seconds (for the warm-up)",
    )


async def main(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    membership = Membership()
    dist = Distributor(ctx.bus, membership, ctx.settings.instance_id)

    async with anyio.create_task_group() as tg:

        async def on_heartbeat(msg: Msg) -> None:
            try:
                hb = decode_heartbeat(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.warning("bad heartbeat", extra={"subject": msg.subject, "error": str(exc)})
                return
            if msg.subject != subjects.heartbeat(hb.node):
                return  # a node may speak only for itself
            await dist.on_heartbeat(hb, tg)

        async def on_events(batch: Sequence[Delivery[AnyEvent]]) -> None:
            for item in batch:
                ev = item.value
                try:
                    if isinstance(ev, VersionCreated) and ev.status == "approved":
                        await dist.rollout(ev.namespace, ev.version, ev.selector)
                    elif isinstance(ev, VersionApproved):
                        await dist.rollout(ev.namespace, ev.version, None)
                    elif isinstance(ev, VersionPromoted):
                        await dist.production_of(ev.namespace, refresh=True)
                except Exception as exc:
                    item.fail(exc)

        await ctx.bus.nc.subscribe(subjects.HEARTBEATS_ALL, cb=on_heartbeat)
        consumer: Consumer[AnyEvent] = Consumer(
            bus=ctx.bus,
            stream=CFG_EVENTS,
            durable="distributor",
            decode=decode_event,
            handler=on_events,
            metrics=ConsumerMetrics.create(ctx.registry, "distributor", "events"),
            filter_subject="cfg.event.*.version.>",
            ack_wait_s=120.0,
        )
        await tg.start(consumer.run)
        task_status.started()
