"""The version-store service: consumes ``CFG_CHANGES``, answers ``cfg.api.store.*``.

``python -m confbus.version_store --nats-url URL --store URL`` where the store is
``sqlite:///path/to/store.db`` (the default, under ``CONFBUS_DATA_DIR``) or
``etcd://host:port,host:port[/prefix/]``. Several replicas may run against one store: they
share the durable consumer and the API's queue group, and the store numbers versions safely
across processes. Members that serve TLS: ``--etcd-ca`` (and, when they ask for a client
certificate, ``--etcd-cert``/``--etcd-key``), or ``CONFBUS_ETCD_CA``/``…_CERT``/``…_KEY`` as
``confbus up --ha --secure`` gives them.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskStatus

from confbus.runtime.api import serve_api, stop_api
from confbus.runtime.consumer import Consumer
from confbus.runtime.errors import Unavailable
from confbus.runtime.etcd_tls import EtcdTls, add_etcd_tls_flags, etcd_tls_from
from confbus.runtime.metrics import ConsumerMetrics
from confbus.runtime.retry import Backoff
from confbus.runtime.service import ServiceContext
from confbus.schemas.changes import ChangeProposed, decode_change
from confbus.schemas.streams import CFG_CHANGES, StreamSpec, change_streams
from confbus.version_store.api import StoreApi
from confbus.version_store.changes import ChangeHandler, reject_undecodable
from confbus.version_store.metrics import StoreMetrics
from confbus.version_store.placement import keep_apart
from confbus.version_store.rejections import Rejections
from confbus.version_store.storage import Store, open_store
from confbus.version_store.variantcheck import Members

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


log = logging.getLogger("confbus.version_store")

DURABLE = "version-store"


def default_store_url() -> str:
    if url := os.environ.get("CONFBUS_STORE"):
        return url
    data_dir = Path(os.environ.get("CONFBUS_DATA_DIR", ".confbus")).resolve()
    return f"sqlite://{(data_dir / 'store.db').as_posix()}"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=default_store_url(),
        help="sqlite:///path/store.db or etcd://host:port,host:port "
        "(env CONFBUS_STORE; default: store.db under CONFBUS_DATA_DIR or .confbus)",
    )
    parser.add_argument(
        "--batch", type=int, default=256, help="changes per group commit, at most (%(default)s)"
    )
    parser.add_argument(
        "--ack-wait",
        type=float,
        default=30.0,
        help="seconds before an unacknowledged change is redelivered, when the durable "
        "consumer is first created (%(default)s)",
    )
    add_etcd_tls_flags(parser)
    parser.add_argument(
        "--store-timeout",
        type=float,
        default=60.0,
        help="give up if the store cannot be opened within this many seconds (%(default)s)",
    )


def store_kind(url: str) -> str:
    """The store named without its address or credentials, for logs and the ready line."""
    return urlsplit(url).scheme or "?"


async def open_with_retry(url: str, timeout: float, tls: EtcdTls | None = None) -> Store:
    """Open the store; an etcd cluster that is still electing a leader is waited for."""
    try:
        store = open_store(url, tls)
    except ValueError as exc:
        raise SystemExit(f"confbus-version-store: {exc}") from None
    delay = 0.1
    with anyio.fail_after(timeout):
        while True:
            try:
                await store.open()
                return store
            except Unavailable as exc:
                log.warning(
                    "waiting for the store", extra={"store": store_kind(url), "error": str(exc)}
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)


def change_consumer(
    handler: ChangeHandler,
    registry: CollectorRegistry,
    *,
    batch: int,
    ack_wait_s: float = 30.0,
    backoff: Backoff | None = None,
    stream: StreamSpec = CFG_CHANGES,
) -> Consumer[ChangeProposed]:
    """The version-store's durable consumer of ``stream`` (``CFG_CHANGES``, or in a replicated
    stack ``CFG_CHANGES_ALT`` too), feeding ``handler``."""
    scope = "changes" if stream is CFG_CHANGES else "changes-alt"
    return Consumer(
        bus=handler.bus,
        stream=stream,
        durable=DURABLE,
        decode=decode_change,
        handler=handler,
        metrics=ConsumerMetrics.create(registry, "version-store", scope),
        batch=batch,
        ack_wait_s=ack_wait_s,
        backoff=backoff or Backoff(),
        keep_data=False,  # changes may be secret config: dead letters keep only a hash
        on_undecodable=functools.partial(reject_undecodable, handler.bus, handler.rejections),
    )


async def main(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    args = ctx.args
    try:
        tls = etcd_tls_from(args)
    except ValueError as exc:
        raise SystemExit(f"confbus-version-store: {exc}") from None
    store = await open_with_retry(args.store, args.store_timeout, tls)
    try:
        rejections = await Rejections.open(ctx.bus, ctx.settings.replicas)

        def set_health(ok: bool, detail: str) -> None:
            ctx.healthy, ctx.health_detail = ok, detail

        metrics = StoreMetrics.create(ctx.registry)
        handler = ChangeHandler(ctx.bus, store, rejections, metrics, set_health, Members(ctx.bus))
        # A replicated stack accepts changes in two streams (docs/design.md §3.1).
        consumers = [
            change_consumer(
                handler,
                ctx.registry,
                batch=max(1, args.batch),
                ack_wait_s=args.ack_wait,
                stream=stream,
            )
            for stream in change_streams(ctx.settings.replicas)
        ]
        async with anyio.create_task_group() as tg:
            store_api = StoreApi(ctx.bus, store, rejections, replica=secrets.token_hex(6))
            svc = await serve_api(
                ctx.bus, store_api.endpoints(), description="confbus version store", tg=tg
            )
            try:
                for consumer in consumers:
                    await tg.start(consumer.run)
                if len(consumers) > 1:
                    tg.start_soon(keep_apart, ctx.bus, DURABLE, metrics)
                ctx.ready_info["store"] = store_kind(args.store)
                task_status.started()
                await anyio.sleep_forever()
            finally:
                await stop_api(svc)
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
