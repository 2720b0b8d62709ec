"""Serve a service's own web app (Starlette, on uvicorn) in the service's task group, with
``/metrics`` and ``/healthz`` beside its routes — what ``confbus.runtime.http`` serves for
services that need no more than those.

Uvicorn runs inside our anyio task group instead of owning the process: it installs no signal
handlers (the service's own handler stops the group), and stopping it is graceful — new
connections are refused, open ones (Server-Sent Event streams, say) get a few seconds to end.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Generator

import anyio
import uvicorn
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

log = logging.getLogger("confbus.asgi")

HealthCheck = Callable[[], tuple[bool, str]]
GRACEFUL_STOP_S = 3.0


def with_metrics_and_health(
    app: ASGIApp, registry: CollectorRegistry, health: HealthCheck
) -> Starlette:
    """``app`` with ``/metrics`` (Prometheus) and ``/healthz`` (200, or 503 with the reason)
    in front of it; every other path goes to ``app``."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        ok, detail = health()
        return PlainTextResponse(detail + "\n", status_code=200 if ok else 503)

    routes: list[BaseRoute] = [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Mount("/", app=app),
    ]
    return Starlette(routes=routes)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The service's task group owns SIGINT/SIGTERM; uvicorn must not take them over.
        yield


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here rather than by uvicorn, so that port 0 tells which port
    it got before the service says it is ready.

    Made with ``IPPROTO_TCP`` spelled out: asyncio turns Nagle off only on sockets whose
    ``proto`` says TCP, and ``socket.create_server`` leaves it 0 — then every response after the
    first on a kept-alive connection waited ~40 ms for the client's delayed ACK (uvicorn writes
    the head and the body separately)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class AsgiServer:
    """An ASGI app on ``host:port`` (0: any free port), run by uvicorn until cancelled."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        sock = _listen(self.host, self.port)
        port: int = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,  # our JSON logging, not uvicorn's
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(GRACEFUL_STOP_S),
        )
        server = _Server(config)
        stopped = anyio.Event()

        async def run() -> None:
            # Shielded: a cancelled group must not cut uvicorn's shutdown short; should_exit
            # (below) is how it stops.
            with anyio.CancelScope(shield=True):
                try:
                    await server.serve(sockets=[sock])
                finally:
                    sock.close()
                    stopped.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            task_status.started(port)
            try:
                await anyio.sleep_forever()
            finally:
                server.should_exit = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(GRACEFUL_STOP_S + 2):
                    await stopped.wait()
