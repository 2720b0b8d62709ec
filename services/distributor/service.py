"""The distributor service: heartbeats and events in, switches and events out.

Tasks (one anyio task group):

- a core subscription to ``cfg.node.*.heartbeat`` → membership, catch-up and drift repair;
- durable consumers on ``CFG_EVENTS``: ``distributor`` (``cfg.event.*.version.>``: record
  rollout intents, follow promotions), ``distributor-txn`` (``cfg.event.*.txn.committed``:
  raise node targets), ``distributor-rollback`` (``cfg.event.*.rollback.started``: end the
  namespace's rollout as ``rolled_back``);
- KV watches of ``target.>`` and ``rollout.*`` (every replica mirrors them);
- the leases (``lease.distributor.<ns>`` per namespace, ``lease.distributor._members``): free
  ones taken as they are wanted, held ones renewed, all released on a clean stop;
- the rollout supervisor (one driver task per namespace with work, where we hold its lease);
- the membership keeper (node records and ``node.status`` events, under the members lease);
- the ``cfg.api.dist.*`` endpoints.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.msg import Msg

from confbus.distributor.api import DistApi
from confbus.distributor.driver import Driver
from confbus.distributor.intent import Intents
from confbus.distributor.membership import MEMBERS_LEASE, Membership, MembershipKeeper
from confbus.distributor.metrics import DistributorMetrics
from confbus.distributor.repairs import Repairs
from confbus.distributor.rollouts import Rollouts
from confbus.distributor.store import Store
from confbus.distributor.switching import WaveSwitch
from confbus.distributor.targets import Targets
from confbus.runtime.api import serve_api, stop_api
from confbus.runtime.consumer import Consumer, per_key
from confbus.runtime.kv import Entry, StateKV
from confbus.runtime.leases import Leases
from confbus.runtime.metrics import ConsumerMetrics
from confbus.runtime.service import ServiceContext
from confbus.schemas import subjects
from confbus.schemas.api.dist import decode_rollout_info
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.events import (
    AnyEvent,
    NodeForgotten,
    RollbackStarted,
    TxnCommitted,
    VersionApproved,
    VersionCreated,
    VersionPromoted,
    decode_event,
)
from confbus.schemas.node import decode_heartbeat
from confbus.schemas.state import ROLLOUTS, rollout_of
from confbus.schemas.streams import CFG_EVENTS, CFG_STATE

log = logging.getLogger("confbus.distributor")

ROLE = "distributor"  # lease.distributor.<ns>: the replica driving the namespace


def add_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("distributor")
    g.add_argument(
        "--heartbeat-interval",
        type=float,
        default=2.0,
        help="the agents' heartbeat interval, seconds (warm-up before planning a rollout)",
    )
    g.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        help="how long a replica's lease on a namespace lasts unless renewed, seconds",
    )
    g.add_argument(
        "--catchup-base", type=float, default=0.5, help="first catch-up retry delay, seconds"
    )
    g.add_argument(
        "--catchup-cap", type=float, default=60.0, help="longest catch-up retry delay, seconds"
    )
    g.add_argument(
        "--verdict-timeout",
        type=float,
        default=10.0,
        help="how long to wait for the health-watcher's verdict, seconds",
    )
    g.add_argument(
        "--status-event-gap",
        type=float,
        default=5.0,
        help="at most one node.status event per node this often, seconds",
    )
    g.add_argument(
        "--forget-after",
        type=float,
        default=3600.0,
        help="forget a node gone this long (its records are deleted), seconds; 0: never",
    )


class Distributor:
    def __init__(self, ctx: ServiceContext, kv: StateKV) -> None:
        args = ctx.args
        self.ctx = ctx
        self.bus = ctx.bus
        self.instance = ctx.settings.instance_id
        self.kv = kv
        self.metrics = DistributorMetrics.create(ctx.registry)
        self.store = Store(ctx.bus)
        self.membership = Membership(heartbeat_interval_s=args.heartbeat_interval)
        self.leases = Leases.on_bus(ctx.bus, kv.kv, ROLE, self.instance, args.lease_ttl)
        self.leases.on_change = self.on_lease_change
        self.targets = Targets(kv, self.store)
        self.rollouts = Rollouts(ctx.bus, kv, self.metrics, self.instance)
        self.intents = Intents(
            self.rollouts, ctx.bus, self.store, self.targets, self.metrics, self.instance
        )
        self.waves = WaveSwitch(
            self.rollouts,
            ctx.bus,
            self.store,
            self.membership,
            self.targets,
            self.metrics,
            self.instance,
        )
        self.driver = Driver(
            self.rollouts,
            self.waves,
            ctx.bus,
            self.store,
            self.membership,
            self.targets,
            self.leases,
            self.instance,
            verdict_timeout_s=args.verdict_timeout,
        )
        self.repairs = Repairs(
            ctx.bus,
            self.store,
            self.targets,
            self.leases,
            self.metrics,
            self.instance,
            busy=self.waves.busy,
            base_s=args.catchup_base,
            cap_s=args.catchup_cap,
        )
        self.waves.catching_up = self.repairs.in_flight
        self.keeper = MembershipKeeper(
            ctx.bus,
            kv,
            self.membership,
            self.leases,
            self.metrics,
            self.instance,
            min_event_gap_s=args.status_event_gap,
            forget_after_s=args.forget_after,
        )

    # -- inputs ----------------------------------------------------------------------------------

    def heartbeat_handler(self, tg: TaskGroup):  # type: ignore[no-untyped-def]
        async def on_heartbeat(msg: Msg) -> None:
            try:
                hb = decode_heartbeat(msg.data)
            except DECODE_ERRORS as exc:
                log.warning("bad heartbeat", extra={"subject": msg.subject, "error": str(exc)})
                return
            if msg.subject != subjects.heartbeat(hb.node):
                return  # a node may speak only for itself
            member = self.membership.observe(hb)
            self.repairs.on_heartbeat(member, tg)

        return on_heartbeat

    async def on_forgotten(self, msg: Msg) -> None:
        try:
            ev = decode_event(msg.data)
        except DECODE_ERRORS:
            return
        if isinstance(ev, NodeForgotten):
            self.membership.forgotten(ev.node)

    # Each consumer's handler takes one event; one that raises is failed alone (retried, then
    # dead-lettered), the others of its batch are acked. The events of a batch are handled
    # namespace by namespace side by side, each namespace's in order (runtime.consumer.per_key):
    # one namespace's round trips to the store do not delay the next namespace's rollout.

    async def on_version(self, ev: AnyEvent) -> None:
        if isinstance(ev, VersionCreated) and ev.status == "approved":
            await self.intents.on_version(
                ev.namespace, ev.version, strategy=ev.strategy, selector=ev.selector
            )
        elif isinstance(ev, VersionApproved):
            await self.intents.on_version(
                ev.namespace, ev.version, strategy=None, selector=None, from_approval=True
            )
        elif (
            isinstance(ev, VersionPromoted)
            # Our own rollouts' promotions are known from the store's reply already.
            and self.targets.production_version(ev.namespace) != ev.version
        ):
            await self.targets.production_of(ev.namespace, refresh=True)

    async def on_txn(self, ev: AnyEvent) -> None:
        if isinstance(ev, TxnCommitted):
            await self.targets.raise_to(ev.namespace, ev.participants, ev.version, ev.txid)

    async def on_rollback(self, ev: AnyEvent) -> None:
        if isinstance(ev, RollbackStarted):
            await self.intents.on_rollback(ev)

    def on_rollout_key(self, key: str, value: bytes | None, revision: int) -> None:
        ns = rollout_of(key)
        if self.rollouts.holds(ns, revision):
            return  # our own write coming back (or an older one): nothing to decode
        if value is None:
            self.rollouts.observed(ns, Entry(None, revision))
            return
        try:
            self.rollouts.observed(ns, Entry(decode_rollout_info(value), revision))
        except DECODE_ERRORS:
            log.warning("unreadable rollout record", extra={"key": key})

    def consumer(
        self, durable: str, subject: str, handle: Callable[[AnyEvent], Awaitable[None]]
    ) -> Consumer[AnyEvent]:
        return Consumer(
            bus=self.bus,
            stream=CFG_EVENTS,
            durable=durable,
            decode=decode_event,
            handler=per_key(lambda ev, _msg: handle(ev), key=lambda ev: ev.namespace),
            metrics=ConsumerMetrics.create(self.ctx.registry, "distributor", durable),
            filter_subject=subject,
            batch=50,
            ack_wait_s=60.0,
        )

    # -- leases ----------------------------------------------------------------------------------

    def wanted_leases(self) -> set[str]:
        """The members lease, and every namespace with agents or a rollout record."""
        return (
            {MEMBERS_LEASE}
            | self.membership.namespaces()
            | {ns for ns, e in self.rollouts.records.items() if e.value is not None}
        )

    def on_lease_change(self, name: str, held: bool) -> None:
        if held and name != MEMBERS_LEASE:
            self.rollouts.kick(name)  # a driver starts at once if the namespace has work

    async def release_all(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await self.leases.release_all()


async def main(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    kv = await StateKV.open(ctx.bus, CFG_STATE)
    d = Distributor(ctx, kv)
    await d.keeper.load()
    async with anyio.create_task_group() as tg:
        await tg.start(d.targets.watch)
        await tg.start(lambda *, task_status: kv.watch(
            ROLLOUTS, d.on_rollout_key, task_status=task_status))  # fmt: skip
        await tg.start(d.leases.keep)
        tg.start_soon(d.leases.pursue, d.wanted_leases)
        await ctx.bus.nc.subscribe(subjects.HEARTBEATS_ALL, cb=d.heartbeat_handler(tg))
        await ctx.bus.nc.subscribe(subjects.NODES_FORGOTTEN, cb=d.on_forgotten)
        await tg.start(d.consumer("distributor", "cfg.event.*.version.>", d.on_version).run)
        await tg.start(d.consumer("distributor-txn", "cfg.event.*.txn.committed", d.on_txn).run)
        await tg.start(
            d.consumer("distributor-rollback", "cfg.event.*.rollback.started", d.on_rollback).run
        )
        tg.start_soon(d.keeper.run)
        tg.start_soon(d.driver.supervise, tg)
        svc = await serve_api(
            ctx.bus,
            DistApi(
                d.membership, d.targets, d.rollouts, d.intents, d.repairs, d.keeper
            ).endpoints(),
            tg=tg,
        )
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            await stop_api(svc)
            await d.release_all()
