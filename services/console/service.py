"""The console process: the web console and the HTTP API on ``--http-port`` (beside
``/metrics`` and ``/healthz``), over the bus.

Its ready line carries ``console_url``: ``confbus up`` shows it as ``console=http://…``.
Tokens come from ``--tokens-file`` (default ``$CONFBUS_DATA_DIR/console/tokens.json``,
written by ``confbus console token``); it binds 127.0.0.1 unless ``--http-host`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from confbus.console import api, openapi
from confbus.console.auth import TokenStore
from confbus.console.backend import Backend
from confbus.console.metrics import ConsoleMetrics
from confbus.console.pages import Pages
from confbus.console.views import environment
from confbus.runtime.service import ServiceContext, service_main
from confbus.schemas import tokens

STATIC = Path(__file__).with_name("static")


def add_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("console")
    g.add_argument(
        "--tokens-file",
        default=os.environ.get("CONFBUS_CONSOLE_TOKENS"),
        help="the tokens it accepts (env CONFBUS_CONSOLE_TOKENS; default "
        "$CONFBUS_DATA_DIR/console/tokens.json, written by confbus console token)",
    )


def tokens_path(args: argparse.Namespace) -> Path:
    if args.tokens_file:
        return Path(args.tokens_file)
    return Path(os.environ.get("CONFBUS_DATA_DIR", ".confbus")).joinpath(*tokens.TOKENS_FILE)


def build_app(backend: Backend, token_store: TokenStore, metrics: ConsoleMetrics) -> Starlette:
    document = openapi.document()

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(document)

    async def favicon(request: Request) -> Response:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    app = Starlette(
        routes=[
            Route(api.PREFIX + "/openapi.json", openapi_json, methods=["GET"]),
            *api.routes(metrics),
            *Pages(environment(), metrics).routes(),
            Route("/favicon.ico", favicon, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={404: api.no_route, 405: api.no_route},
    )
    app.state.backend = backend
    app.state.tokens = token_store
    app.state.metrics = metrics
    return app


def http_app(ctx: ServiceContext) -> Starlette:
    metrics = ConsoleMetrics.create(ctx.registry)
    return build_app(Backend(ctx.bus, metrics), TokenStore(tokens_path(ctx.args)), metrics)


async def run(ctx: ServiceContext, task_status: TaskStatus[None]) -> None:
    host = ctx.settings.http_host
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    ctx.ready_info["console_url"] = f"http://{shown}:{ctx.http_port}/"
    task_status.started()
    await anyio.sleep_forever()  # the web app serves; this only keeps the service's main alive


def main() -> None:
    service_main("console", run, add_args, http_app=http_app)
