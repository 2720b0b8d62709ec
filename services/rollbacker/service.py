"""The rollbacker service: alerts in (``CFG_ALERTS``), manual requests in
(``cfg.api.rollback.start``), rollbacks driven to the end; rollback steps and rollout outcomes
(``CFG_EVENTS``) notified by webhook and mail."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from confbus.rollbacker.announce import Announcer
from confbus.rollbacker.driver import Driver, DriverConfig
from confbus.rollbacker.engine import Engine
from confbus.rollbacker.ledger import Ledgers
from confbus.rollbacker.metrics import RollbackerMetrics
from confbus.rollbacker.notify import Notifier
from confbus.rollbacker.outcomes import FILTER as OUTCOMES
from confbus.rollbacker.outcomes import OutcomeNotifier
from confbus.rollbacker.peers import Peers
from confbus.runtime.api import Endpoint, serve_api, stop_api
from confbus.runtime.consumer import Consumer, per_message
from confbus.runtime.kv import StateKV
from confbus.runtime.leases import Leases
from confbus.runtime.metrics import ConsumerMetrics
from confbus.runtime.service import ServiceContext
from confbus.runtime.signing import SigningKey
from confbus.schemas.api import rollback as api
from confbus.schemas.events import AnyEvent, decode_event
from confbus.schemas.health import Alert, decode_alert
from confbus.schemas.streams import CFG_ALERTS, CFG_EVENTS, CFG_STATE

log = logging.getLogger("confbus.rollbacker")

ROLE = "rollbacker"  # lease.rollbacker.<ns>: the replica driving the namespace's rollback


def add_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("rollbacker")
    g.add_argument(
        "--lease",
        type=float,
        default=15.0,
        help="seconds a replica's lease on a namespace's running rollback lasts unrenewed; "
        "another replica (or this one restarted) takes it over after that (default %(default)s)",
    )
    g.add_argument(
        "--verify-timeout",
        type=float,
        default=30.0,
        help="after a batch's bake, how long to wait for a health verdict with data "
        "(default %(default)s)",
    )
    g.add_argument("--verify-interval", type=float, default=0.5, help=argparse.SUPPRESS)
    g.add_argument(
        "--create-timeout",
        type=float,
        default=120.0,
        help="how long the version-store may take to store a rollback version "
        "(default %(default)s)",
    )
    g.add_argument("--resume-interval", type=float, default=2.0, help=argparse.SUPPRESS)
    g.add_argument("--webhook-timeout", type=float, default=5.0, help="per attempt, seconds")
    g.add_argument("--webhook-attempts", type=int, default=5)
    g.add_argument("--webhook-backoff", type=float, default=0.5, help="first retry delay, seconds")
    g.add_argument(
        "--webhook-secret-file",
        default=os.environ.get("CONFBUS_WEBHOOK_SECRET_FILE") or None,
        metavar="FILE",
        help="sign every webhook with this shared secret (header Confbus-Signature: t=…,v1=HMAC; "
        "env CONFBUS_WEBHOOK_SECRET_FILE)",
    )
    g.add_argument(
        "--signing-key",
        type=Path,
        default=os.environ.get("CONFBUS_ROLLBACKER_SIGNING_KEY") or None,
        metavar="FILE",
        help="Ed25519 key (confbus keys new) that signs rollback versions of signed namespaces; "
        "agents list its public key among their rollbackers (env CONFBUS_ROLLBACKER_SIGNING_KEY)",
    )


async def main(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    args = ctx.args
    instance = ctx.settings.instance_id
    metrics = RollbackerMetrics.create(ctx.registry)
    notifier = Notifier(
        metrics.webhook,
        attempts=args.webhook_attempts,
        attempt_timeout_s=args.webhook_timeout,
        backoff_base_s=args.webhook_backoff,
        webhook_secret=_read_secret(args.webhook_secret_file),
    )
    peers = Peers(ctx.bus, actor=instance)
    state = await StateKV.open(ctx.bus, CFG_STATE)
    ledgers = Ledgers(state)
    leases = Leases.on_bus(ctx.bus, state.kv, ROLE, instance, args.lease)
    announcer = Announcer(peers, notifier, actor=instance)
    config = DriverConfig(
        verify_timeout_s=args.verify_timeout,
        verify_interval_s=args.verify_interval,
        create_timeout_s=args.create_timeout,
        signing_key=None if args.signing_key is None else SigningKey.load(Path(args.signing_key)),
    )
    driver = Driver(peers, ledgers, leases, announcer, metrics, instance, config)

    async with anyio.create_task_group() as tg:
        await tg.start(notifier.run)
        await tg.start(leases.keep)
        await tg.start(ledgers.mirror)  # before the first resume: it reads through it
        engine = Engine(peers, ledgers, driver, announcer, metrics, instance, tg)

        async def on_alert(alert: Alert, msg: Msg) -> None:
            # Returns once the decision is in the ledger (the rollback itself runs on in
            # its own task): only then is the alert acked.
            await engine.on_alert(alert, redelivered=msg.metadata.num_delivered > 1)

        consumer: Consumer[Alert] = Consumer(
            bus=ctx.bus,
            stream=CFG_ALERTS,
            durable="rollbacker",
            decode=decode_alert,
            handler=per_message(on_alert),
            metrics=ConsumerMetrics.create(ctx.registry, "rollbacker", "alerts"),
        )
        outcomes: Consumer[AnyEvent] = Consumer(
            bus=ctx.bus,
            stream=CFG_EVENTS,
            durable="rollbacker-outcomes",
            decode=decode_event,
            handler=per_message(OutcomeNotifier(peers, notifier).on_event),
            metrics=ConsumerMetrics.create(ctx.registry, "rollbacker", "outcomes"),
            filter_subject=OUTCOMES,
            deliver_policy=DeliverPolicy.NEW,
        )
        svc = await serve_api(ctx.bus, [Endpoint(api.START, engine.manual, concurrent=True)], tg=tg)
        try:
            # Rollbacks left running by our previous self (or a dead replica) first.
            await engine.resume()
            tg.start_soon(engine.resume_loop, args.resume_interval)
            await tg.start(consumer.run)
            await tg.start(outcomes.run)
            task_status.started()
            await anyio.sleep_forever()
        finally:
            await stop_api(svc)
            # A clean stop hands the namespaces over at once instead of after the lease.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await leases.release_all()


def _read_secret(path: str | None) -> bytes | None:
    """Read once at start (a blocking read of a small file, before anything serves)."""
    return None if path is None else Path(path).read_bytes().strip()
