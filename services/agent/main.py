"""``confbus agent``: the node agent process.

It serves what it has on disk at once (the app always has its file), then joins the bus
when it can — retrying forever, and saying so on its status endpoint while the bus is down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

import anyio

from confbus.agent.instance import NodeIdTaken, StateDirInUse, claim_state_dir
from confbus.agent.lastgood import connect_or_fall_back
from confbus.agent.leaving import announce_leaving
from confbus.agent.node import Binding, NodeAgent
from confbus.agent.trust import Trust, TrustConfigError
from confbus.runtime.http import HttpServer, Request, Response
from confbus.runtime.log import setup_logging
from confbus.runtime.service import print_ready
from confbus.runtime.settings import Settings, add_common_args, from_flags, settings_from_args
from confbus.schemas.names import check_name

log = logging.getLogger("confbus.agent")


def add_agent_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", required=True, help="this node's id ([a-z0-9][a-z0-9_-]*)")
    parser.add_argument(
        "--namespace",
        action="append",
        required=True,
        dest="namespaces",
        metavar="NS",
        help="a namespace to follow (repeat, paired with --path)",
    )
    parser.add_argument(
        "--path",
        action="append",
        required=True,
        dest="paths",
        metavar="FILE",
        help="the live file of the namespace before it",
    )
    parser.add_argument(
        "--state-dir",
        default="./.confbus-agent",
        help="where the agent keeps its state (default %(default)s)",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="a label for rollout selectors, e.g. dc=eu1 (repeatable)",
    )
    parser.add_argument(
        "--validate",
        dest="validate_cmd",
        metavar="CMD",
        help="run on the staged file before voting yes, like 'nginx -t -c {}'",
    )
    parser.add_argument(
        "--validate-timeout", dest="validate_timeout_s", type=float, default=30.0, metavar="S"
    )
    parser.add_argument(
        "--on-change", dest="on_change_cmd", metavar="CMD", help="run after each apply"
    )
    parser.add_argument(
        "--heartbeat-interval", dest="heartbeat_interval_s", type=float, default=2.0, metavar="S"
    )
    parser.add_argument("--keep", type=int, default=10, help="versions kept on disk")
    parser.add_argument(
        "--health-url",
        metavar="URL",
        help="the app's Prometheus /metrics or plain health endpoint (http://…), forwarded "
        "as health samples on cfg.health.<ns>.<node>",
    )
    parser.add_argument(
        "--health-interval",
        dest="health_interval_s",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between health scrapes (default %(default)s)",
    )
    parser.add_argument(
        "--trust",
        type=Path,
        metavar="FILE",
        help="trust roots (JSON: per namespace the keys that must sign, confbus keys trust-file): "
        "a prepare not signed as they require gets a no vote",
    )
    parser.add_argument(
        "--kek",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a key-encryption key that opens sealed secret namespaces (repeatable: rotation)",
    )


def build_agent(args: argparse.Namespace) -> NodeAgent:
    check_name(args.node, "node id")
    if len(args.namespaces) != len(args.paths):
        raise SystemExit("confbus agent: give one --path for each --namespace")
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"confbus agent: label {item!r} is not K=V")
        labels[key] = value
    if args.health_url is not None:
        from confbus.agent.health import check_health_url

        try:
            check_health_url(args.health_url)
        except ValueError as exc:
            raise SystemExit(f"confbus agent: --health-url: {exc}") from None
    if args.health_interval_s <= 0:
        raise SystemExit("confbus agent: --health-interval must be positive")
    try:
        trust = Trust.load(args.trust, args.kek)
        trust.require_rules(args.namespaces)
    except TrustConfigError as exc:
        raise SystemExit(f"confbus agent: {exc}") from None
    bindings = [
        Binding(check_name(ns, "namespace"), p)
        for ns, p in zip(args.namespaces, args.paths, strict=True)
    ]
    return from_flags(args, NodeAgent, bindings=bindings, labels=labels, trust=trust)


async def run_agent(agent: NodeAgent, settings: Settings) -> None:
    await agent.load()

    def health() -> tuple[bool, str]:
        missing = [n for n, ns in agent.namespaces.items() if not ns.state.has_config]
        if missing:
            return False, "no config yet: " + ", ".join(missing)
        if agent.bus_connected is None:
            return True, "ok (connecting to the bus)"
        return True, "ok" if agent.bus_connected else "ok (bus down: serving the files it has)"

    # No registry: the agent's figures are its events and heartbeats on the bus, and an
    # agent that imported prometheus_client would carry it in every node's memory.
    http = HttpServer(None, host=settings.http_host, port=settings.http_port, health=health)

    async def status(_req: Request) -> Response:
        return Response(200, json.dumps(agent.status()).encode())

    http.route("GET", "/status", status)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_cancel_on_signal, tg.cancel_scope)
        port = await tg.start(http.serve)
        print_ready(
            {
                "event": "ready",
                "service": "agent",
                "node": agent.node,
                "http_port": port,
                "status": agent.status(),
            }
        )
        # With no bus, fall back to the last known good if the cached policy says so.
        bus = await connect_or_fall_back(agent, settings)
        agent.bus_connected = True
        refused = False
        try:
            await agent.run(bus)
        except* NodeIdTaken:
            refused = True  # not ours to say the node left: another agent holds it
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if not refused:
                    await announce_leaving(bus, agent.heartbeat())
                await bus.close()


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="confbus agent")
    add_common_args(parser)
    add_agent_args(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [
        leaf
        for e in group.exceptions
        for leaf in (_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    ]


def run_from_args(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    setup_logging("agent", settings.log_level)
    agent = build_agent(args)
    try:
        agent.instance, lock = claim_state_dir(Path(args.state_dir))
    except StateDirInUse as exc:
        sys.stderr.write(f"confbus agent: {exc}\n")
        return 1
    refused: list[BaseException] = []
    try:
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(run_agent, agent, settings, backend="asyncio")
    except* NodeIdTaken as group:
        refused += _leaves(group)
    finally:
        os.close(lock)
    if refused:
        log.error("refused", extra={"node": agent.node, "error": str(refused[0])})
        sys.stderr.write(f"confbus agent: {refused[0]}\n")
        return 1
    return 0
