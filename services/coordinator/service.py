"""The coordinator service: the ``cfg.api.txn.*`` API and the recovery sweep.

Several replicas may run (``--instance`` tells them apart). Each namespace is led by the replica
holding ``lease.coordinator.<ns>`` in ``CFG_STATE`` (``leadership.py``); the others forward its
switch requests there. ``--lease-ttl`` is how long a replica that died keeps its namespaces
before another takes them over.
"""

from __future__ import annotations

import argparse
import functools
import logging
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskStatus

from confbus.coordinator.head import Heads
from confbus.coordinator.leadership import ROLE, Leadership
from confbus.coordinator.liveness import ALIVE_INTERVAL_S, Liveness, Peers
from confbus.coordinator.metrics import CoordinatorMetrics
from confbus.coordinator.twophase import Coordinator
from confbus.runtime.api import Endpoint, serve_api, stop_api
from confbus.runtime.kv import StateKV
from confbus.runtime.leases import Leases
from confbus.runtime.nodelabels import labels_of
from confbus.runtime.service import ServiceContext
from confbus.schemas.api import txn as api
from confbus.schemas.base import project
from confbus.schemas.streams import CFG_STATE
from confbus.schemas.subjects import instance_token as token

log = logging.getLogger("confbus.coordinator")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vote-timeout",
        type=float,
        default=5.0,
        help="default vote deadline of a transaction, seconds",
    )
    parser.add_argument(
        "--recovery-interval",
        type=float,
        default=1.0,
        help="how often undecided transactions are checked, seconds",
    )
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        help="seconds a namespace's leadership lasts unrenewed: how long the namespaces of a "
        "replica that died wait before another replica takes them (%(default)s)",
    )


async def main(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    instance = ctx.settings.instance_id
    heads = await Heads.open(ctx.bus)
    metrics = CoordinatorMetrics.create(ctx.registry)
    state = await ctx.bus.kv(CFG_STATE.name)
    liveness = Liveness(state, instance)
    leases = Leases.on_bus(ctx.bus, state, ROLE, instance, ctx.args.lease_ttl)
    peers = Peers(instance)
    coord = Coordinator(
        ctx.bus,
        heads,
        instance,
        metrics,
        default_timeout_s=ctx.args.vote_timeout,
        liveness=liveness,
        labels_of=functools.partial(labels_of, StateKV(state)),
    )
    leadership = Leadership(ctx.bus, coord, leases, peers, metrics)
    coord.claim = leadership.claim
    leases.on_change = leadership.on_lease_change

    async def heartbeat() -> None:
        while True:
            await anyio.sleep(ALIVE_INTERVAL_S)
            try:
                await liveness.beat()
            except Exception as exc:  # the bus is down: we will simply look dead
                log.warning("liveness beat failed", extra={"error": repr(exc)})

    async def resolve(req: api.ResolveRequest) -> api.ResolveReply:
        return await coord.resolve(req.namespace, req.txid)

    async def in_doubt(req: api.InDoubtRequest) -> api.InDoubtReply:
        out = []
        names = [req.namespace] if req.namespace else await heads.namespaces()
        now = datetime.now(UTC)
        for ns in names:
            h = (await heads.get(ns)).value
            if h.state == "preparing" and h.txid is not None and h.version is not None:
                age = (now - h.started_at).total_seconds() if h.started_at else 0.0
                out.append(project(h, api.InDoubtTxn, namespace=ns, age_s=age))
        return api.InDoubtReply(txns=out)

    async with anyio.create_task_group() as tg:
        direct = api.SWITCH_AT.at(token(instance))
        svc = await serve_api(
            ctx.bus,
            [
                Endpoint(api.SWITCH, leadership.switch, concurrent=True),
                Endpoint(direct, leadership.switch_direct, concurrent=True),
                Endpoint(api.RESOLVE, resolve, concurrent=True),
                Endpoint(api.IN_DOUBT, in_doubt),
            ],
            tg=tg,
            presence=leases.presence,
        )
        # Alive means serving: a peer waiting on a killed holder forwards to it again as soon
        # as it beats (``Leadership._until_free``), so the first beat follows the endpoints.
        await liveness.beat()
        try:
            await tg.start(peers.watch, ctx.bus)
            await tg.start(leases.keep)
            # The sweep reads only the heads the mirror shows with something to do.
            await tg.start(heads.mirror)
            # A restarted coordinator first settles what its predecessor left undecided.
            await coord.recover_all()
            tg.start_soon(heartbeat)
            ctx.ready_info["instance"] = instance
            task_status.started()
            while True:
                await anyio.sleep(ctx.args.recovery_interval)
                try:
                    metrics.oldest_in_doubt.set(await coord.recover_all())
                except Exception:  # the sweep is retried; it must never kill the service
                    log.exception("recovery sweep failed")
        finally:
            await stop_api(svc)
            # A clean stop hands the namespaces over at once instead of after the TTL.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await leases.release_all()
