"""The coordinator service: the ``cfg.api.txn.*`` API and the recovery sweep."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskStatus

from schemas.api import txn as api
from schemas.streams import CFG_STATE
from services.coordinator.head import Heads
from services.coordinator.liveness import ALIVE_INTERVAL_S, Liveness
from services.coordinator.metrics import CoordinatorMetrics
from services.coordinator.twophase import Coordinator
from services.runtime.api import Endpoint, serve_api, stop_api
from services.runtime.service import ServiceContext

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


async def main(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    heads = await Heads.open(ctx.bus)
    metrics = CoordinatorMetrics.create(ctx.registry)
    liveness = Liveness(await ctx.bus.kv(CFG_STATE.name), ctx.settings.instance_id)
    await liveness.beat()
    coord = Coordinator(
        ctx.bus,
        heads,
        ctx.settings.instance_id,
        metrics,
        default_timeout_s=ctx.args.vote_timeout,
        liveness=liveness,
    )

    async def heartbeat() -> None:
        while True:
            await anyio.sleep(ALIVE_INTERVAL_S)
            try:
                await liveness.beat()
            except Exception as exc:  # the bus is down: we will simply look dead
                log.warning("liveness beat failed", extra={"error": repr(exc)})

    async def switch(req: api.SwitchRequest) -> api.SwitchReply:
        return await coord.switch(
            req.namespace, req.version, req.nodes, req.timeout_s, actor=req.actor, reason=req.reason
        )

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
                out.append(
                    api.InDoubtTxn(
                        namespace=ns,
                        txid=h.txid,
                        version=h.version,
                        epoch=h.epoch,
                        participants=h.participants,
                        started_at=h.started_at,
                        age_s=age,
                    )
                )
        return api.InDoubtReply(txns=out)

    async with anyio.create_task_group() as tg:
        svc = await serve_api(
            ctx.bus,
            api.SERVICE,
            [
                Endpoint("switch", api.SwitchRequest, switch, concurrent=True),
                Endpoint("resolve", api.ResolveRequest, resolve, concurrent=True),
                Endpoint("in_doubt", api.InDoubtRequest, in_doubt),
            ],
            tg=tg,
        )
        try:
            # A restarted coordinator first settles what its predecessor left undecided.
            await coord.recover_all()
            tg.start_soon(heartbeat)
            task_status.started()
            while True:
                await anyio.sleep(ctx.args.recovery_interval)
                try:
                    metrics.oldest_in_doubt.set(await coord.recover_all())
                except Exception:  # the sweep is retried; it must never kill the service
                    log.exception("recovery sweep failed")
        finally:
            await stop_api(svc)
