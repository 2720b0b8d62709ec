"""How every service process runs.

``service_main`` parses the common flags, sets up logs, connects (retrying until the bus
is there), provisions streams and buckets, serves ``/metrics`` and ``/healthz`` (beside the
service's own web app, if it has one: ``http_app``), starts the
service's own ``main`` in an anyio task group, and prints **one JSON ready line on stdout**
once ``main`` has called ``task_status.started()`` — ``confbus up`` waits for that line.
SIGINT/SIGTERM cancel the group; consumers unsubscribe and the connection drains.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from confbus.runtime.bus import Bus, connect, provision
from confbus.runtime.errors import Unavailable
from confbus.runtime.http import HttpServer
from confbus.runtime.log import setup_logging
from confbus.runtime.settings import Settings, add_common_args, settings_from_args

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from starlette.types import ASGIApp

log = logging.getLogger("confbus.service")


@dataclass
class ServiceContext:
    name: str
    settings: Settings
    bus: Bus
    registry: CollectorRegistry
    http: HttpServer | None  # None: the service's own web app serves /metrics and /healthz
    args: argparse.Namespace
    # Filled by main: extra facts for the ready line (e.g. the alertmanager port).
    ready_info: dict[str, Any] = field(default_factory=dict)
    healthy: bool = True
    health_detail: str = "ok"
    http_port: int = 0  # where /metrics and /healthz (and the web app, if any) are served


ServiceMain = Callable[[ServiceContext, TaskStatus[None]], Coroutine[Any, Any, None]]
# A service's own web app (the console's): built once the context exists, served on
# --http-port with /metrics and /healthz beside it.
HttpApp = Callable[[ServiceContext], "ASGIApp"]


async def connect_with_retry(
    settings: Settings, name: str, timeout: float | None = None, *, no_echo: bool = False
) -> Bus:
    """A service started before its NATS keeps trying (with a cap), instead of crashing.
    ``no_echo``: see ``confbus.runtime.bus.connect``."""
    delay = 0.1
    with anyio.fail_after(timeout):
        while True:
            try:
                return await connect(
                    settings.nats_url,
                    name=name,
                    user=settings.nats_user,
                    password=settings.nats_password,
                    creds=settings.nats_creds,
                    tls_ca=settings.tls_ca,
                    no_echo=no_echo,
                )
            except Unavailable as exc:
                log.warning("waiting for NATS", extra={"error": str(exc)})
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)


async def run_service(
    name: str,
    settings: Settings,
    main: ServiceMain,
    args: argparse.Namespace,
    http_app: HttpApp | None = None,
) -> None:
    settings = dataclasses.replace(settings, service=settings.service or name)
    bus = await connect_with_retry(settings, f"confbus-{settings.instance_id}")
    try:
        if settings.provision:
            await provision(bus, replicas=settings.replicas)
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        ctx_holder: list[ServiceContext] = []

        def health() -> tuple[bool, str]:
            ctx = ctx_holder[0]
            if not bus.nc.is_connected:
                return False, "nats disconnected"
            return ctx.healthy, ctx.health_detail

        host, port = settings.http_host, settings.http_port
        http = None if http_app else HttpServer(registry, host=host, port=port, health=health)
        ctx = ServiceContext(name, settings, bus, registry, http, args)
        ctx_holder.append(ctx)
        if http_app is None:
            assert http is not None
            serve_http = http.serve
        else:
            # Imported only here: the services without a web app start without the framework.
            from confbus.runtime.asgi import AsgiServer, with_metrics_and_health

            app = with_metrics_and_health(http_app(ctx), registry, health)
            serve_http = AsgiServer(app, host, port).serve
        stopping = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_signal, tg.cancel_scope, stopping)
            tg.start_soon(_dump_tasks_on_sigusr1)
            ctx.http_port = http_port = await tg.start(serve_http)
            await tg.start(_guarded, main, ctx, stopping)
            ready = {"event": "ready", "service": name, "http_port": http_port, **ctx.ready_info}
            print_ready(ready)
            log.info("ready", extra=ready)
    finally:
        with anyio.CancelScope(shield=True):
            await bus.close()
        log.info("stopped")


def print_ready(info: dict[str, Any]) -> None:
    """The one JSON line on stdout that says a process is serving (``confbus up`` and the
    tests wait for it)."""
    print(json.dumps(info), flush=True)  # noqa: T201 - the ready line is the contract


async def _guarded(
    main: ServiceMain,
    ctx: ServiceContext,
    stopping: anyio.Event,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service's main; if it ends while we are not stopping, fail the process.

    A main task must never end by itself. One that does — typically a CancelledError that no
    cancel scope of ours raised (gRPC cancels the calls of a channel it closes), which anyio
    takes for a cancellation and swallows — would leave a process that answers /healthz but
    no longer works. Exiting instead lets the supervisor restart it."""
    try:
        await main(ctx, task_status)
    except anyio.get_cancelled_exc_class():
        if stopping.is_set():
            raise
        log.error("main task cancelled, not by us: exiting so that it is restarted")
        raise RuntimeError("the service's main task was cancelled from outside") from None
    if not stopping.is_set():
        log.error("main task ended by itself: exiting so that it is restarted")
        raise RuntimeError("the service's main task ended by itself")


async def _cancel_on_signal(scope: anyio.CancelScope, stopping: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            stopping.set()
            scope.cancel()
            return


async def _dump_tasks_on_sigusr1() -> None:
    """``kill -USR1 <pid>``: log every asyncio task with the stack it is awaiting in — how
    to tell where a service that went quiet is waiting (py-spy shows only an idle loop)."""
    with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            for task in asyncio.all_tasks():
                out = io.StringIO()
                task.print_stack(limit=30, file=out)
                log.warning("task dump", extra={"task": task.get_name(), "stack": out.getvalue()})


def service_main(
    name: str,
    main: ServiceMain,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
    *,
    http_app: HttpApp | None = None,
) -> None:
    """Entry point of ``python -m confbus.<name>``."""
    parser = argparse.ArgumentParser(prog=f"confbus-{name}")
    add_common_args(parser)
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    setup_logging(name, settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run_service, name, settings, main, args, http_app, backend="asyncio")
    sys.exit(0)
