"""The health-watcher service: samples in; verdicts, alerts and the Alertmanager receiver out.

Tasks in one task group:

- **samples**: an ordered reader (``runtime.follow``, back within a second of a broker
  restart) over all of ``CFG_HEALTH`` from ``now - horizon`` (every replica keeps every
  namespace's windows; no durable consumer — samples are short-lived);
  the service is ready once it has caught up;
- **heartbeats**: ``cfg.node.*.heartbeat`` (which namespaces nodes follow, their versions);
- **leases**: take ``lease.health.<ns>`` for the namespaces that have samples or scrape
  targets, renew what we hold (``confbus.runtime.leases``), release it all on a clean stop;
- **evaluation**: every ``--eval-interval``, the held namespaces' rules → alerts;
- **scraping**: the held namespaces' ``scrape_targets`` → samples;
- the ``cfg.api.health.verdict`` endpoint (any replica answers, from its own windows);
- the Alertmanager receiver on its own HTTP port (``alertmanager_port`` in the ready line).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import nats.errors
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from confbus.health_watcher.alertmanager import PATH, Receiver
from confbus.health_watcher.alerts import Alerter, NamespaceEvaluator
from confbus.health_watcher.metrics import WatcherMetrics
from confbus.health_watcher.policies import Catalog, Directory, PolicyCache
from confbus.health_watcher.promql import Prometheus
from confbus.health_watcher.rules import Point
from confbus.health_watcher.scraping import TargetScraper
from confbus.health_watcher.verdicts import Verdicts
from confbus.health_watcher.windows import SampleStore
from confbus.runtime.api import Endpoint, serve_api, stop_api
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError
from confbus.runtime.follow import Follower
from confbus.runtime.http import HttpServer
from confbus.runtime.kv import StateKV
from confbus.runtime.leases import Leases
from confbus.runtime.service import ServiceContext
from confbus.schemas import subjects
from confbus.schemas.api import health as api
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.health import decode_sample
from confbus.schemas.node import own_heartbeat
from confbus.schemas.streams import CFG_HEALTH, CFG_STATE

log = logging.getLogger("confbus.health_watcher")

ROLE = "health"  # lease.health.<ns>: the replica judging the namespace
CATCH_UP_TIMEOUT_S = 15.0
DISCOVERY_EVERY_S = 30.0


def add_args(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--alertmanager-port",
        type=int,
        default=int(env("CONFBUS_ALERTMANAGER_PORT", "0")),
        help="port of the Alertmanager webhook receiver, POST /alertmanager "
        "(env CONFBUS_ALERTMANAGER_PORT; 0: a free port, printed in the ready line)",
    )
    parser.add_argument(
        "--alertmanager-token-file",
        default=env("CONFBUS_ALERTMANAGER_TOKEN_FILE") or None,
        metavar="FILE",
        help="require this bearer token on the receiver (Alertmanager's http_config."
        "authorization credentials_file; env CONFBUS_ALERTMANAGER_TOKEN_FILE)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=6.0,
        help="seconds a namespace's evaluation lease lasts unless renewed (every ttl/3)",
    )
    parser.add_argument(
        "--eval-interval", type=float, default=1.0, help="seconds between rule evaluations"
    )
    parser.add_argument(
        "--policy-ttl", type=float, default=5.0, help="seconds a namespace's policy is cached"
    )
    parser.add_argument(
        "--horizon",
        type=float,
        default=900.0,
        help="seconds of samples kept in memory (and read back at start): the longest window",
    )


class SampleReader:
    def __init__(self, bus: Bus, store: SampleStore, metrics: WatcherMetrics) -> None:
        self.bus = bus
        self.store = store
        self.metrics = metrics

    def accept(self, msg: Msg) -> None:
        try:
            sample = decode_sample(msg.data)
        except DECODE_ERRORS:
            # The stream is short-lived and nobody else acts on a sample: count it, drop it.
            self.metrics.samples.labels("invalid").inc()
            return
        if msg.subject != subjects.health(sample.namespace, sample.node):
            self.metrics.samples.labels("impostor").inc()  # a node speaks only for itself
            return
        t = msg.metadata.timestamp.timestamp()  # the stream's clock: one clock for all nodes
        self.store.add(sample.namespace, sample.version, sample.node, Point.of(sample, t))
        self.metrics.samples.labels("accepted").inc()

    async def run(self, horizon_s: float, *, task_status: TaskStatus[None]) -> None:
        follower = Follower(
            self.bus,
            CFG_HEALTH.name,
            subjects.HEALTH_ALL,
            deliver=DeliverPolicy.BY_START_TIME,
            start_time=datetime.now(UTC) - timedelta(seconds=horizon_s),
        )
        async with follower as f:
            ready = f.pending_at_start == 0
            deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
            while not ready:
                msg = None
                with anyio.move_on_after(deadline - time.monotonic()):
                    msg = await f.next()
                if msg is not None:
                    self.accept(msg)
                ready = msg is None or msg.metadata.num_pending == 0
            task_status.started()
            while True:
                self.accept(await f.next())


def receiver_url(host: str, port: int) -> str:
    """The Alertmanager receiver's whole URL (a wildcard bind is reached by the host's name)."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://{host}:{port}{PATH}"


async def main(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    args = ctx.args
    bus = ctx.bus
    instance = ctx.settings.instance_id
    metrics = WatcherMetrics.create(ctx.registry)
    store = SampleStore(horizon_s=args.horizon)
    kv = await StateKV.open(bus, CFG_STATE)
    leases = Leases.on_bus(bus, kv.kv, ROLE, instance, args.lease_ttl)
    policies = PolicyCache(bus, ttl_s=args.policy_ttl)
    directory = Directory()
    catalog = Catalog(bus, directory)
    evaluators: dict[str, NamespaceEvaluator] = {}
    scrape_namespaces: dict[str, tuple[float, bool]] = {}  # ns -> (checked at, has targets)

    async def discovery_loop() -> None:
        """Which namespaces without samples have scrape targets (so someone must lead them).
        Off the lease loop: a slow or absent version-store must never delay a renewal."""
        while True:
            try:
                candidates = (await catalog.refresh()) | directory.namespaces()
                for ns in sorted(candidates):
                    checked = scrape_namespaces.get(ns)
                    if checked is not None and time.monotonic() - checked[0] < DISCOVERY_EVERY_S:
                        continue
                    try:
                        policy = await policies.get(ns)
                    except ConfbusError:
                        continue
                    scrape_namespaces[ns] = (time.monotonic(), bool(policy.scrape_targets))
            except Exception:
                log.exception("discovery failed")
            await anyio.sleep(1.0)

    def wanted() -> set[str]:
        """Namespaces worth a lease: those with samples, and those with scrape targets."""
        return store.namespaces() | {ns for ns, (_, has) in scrape_namespaces.items() if has}

    def on_lease_change(ns: str, held: bool) -> None:
        # A new term judges afresh: the alert book is read again, its pending alerts published.
        if held:
            evaluators[ns] = NamespaceEvaluator(ns, Alerter(ns, bus, kv, leases, metrics), metrics)
        else:
            evaluators.pop(ns, None)
        metrics.leases.set(len(leases.held_names()))

    leases.on_change = on_lease_change

    async def eval_loop() -> None:
        while True:
            await anyio.sleep(args.eval_interval)
            now = time.time()
            store.prune(now)
            for ns, evaluator in list(evaluators.items()):
                if not leases.held(ns):
                    continue
                try:
                    policy = await policies.get(ns)
                    await evaluator.evaluate(policy, store, now)
                except (ConfbusError, nats.errors.Error) as exc:
                    log.warning("evaluation skipped", extra={"namespace": ns, "error": repr(exc)})
                except Exception:
                    log.exception("evaluation failed", extra={"namespace": ns})

    async def on_heartbeat(msg: Msg) -> None:
        if (hb := own_heartbeat(msg.subject, msg.data)) is not None:
            directory.observe(hb)

    http = httpx.AsyncClient()  # Prometheus's API, for PromQL rules
    verdicts = Verdicts(
        bus, store, policies, directory, Prometheus(http), metrics, instance=instance
    )
    reader = SampleReader(bus, store, metrics)
    scraper = TargetScraper(bus, leases, policies, directory, metrics)
    receiver = Receiver(bus, catalog, metrics, token=_read_token(args.alertmanager_token_file))
    am_http = HttpServer(ctx.registry, host=ctx.settings.http_host, port=args.alertmanager_port)
    am_http.route("POST", PATH, receiver.handle)
    hb_sub = await bus.nc.subscribe(subjects.HEARTBEATS_ALL, cb=on_heartbeat)
    svc = None
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(reader.run, args.horizon)
            await tg.start(leases.keep)
            tg.start_soon(discovery_loop)
            tg.start_soon(leases.pursue, wanted)
            tg.start_soon(eval_loop)
            tg.start_soon(scraper.run)
            svc = await serve_api(
                bus, [Endpoint(api.VERDICT, verdicts.answer)], description="confbus health verdicts"
            )
            am_port = await tg.start(am_http.serve)
            ctx.ready_info["alertmanager_port"] = am_port
            # The whole webhook URL, for Alertmanager's receiver config (no path to guess).
            ctx.ready_info["alertmanager_url"] = receiver_url(ctx.settings.http_host, am_port)
            task_status.started()
    finally:
        with anyio.CancelScope(shield=True):
            if svc is not None:
                await stop_api(svc)
            with anyio.move_on_after(2):
                await leases.release_all()
            try:
                await hb_sub.unsubscribe()
            except Exception:  # the connection may already be gone
                pass
            await http.aclose()


def _read_token(path: str | None) -> str | None:
    if path is None:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise SystemExit(f"health-watcher: {path} holds no token")
    return token
