"""A real app whose error rate its configuration decides: one HTTP server (in the test's event
loop) serving ``/<node>/metrics`` for each node, whose counters grow at the rate and error ratio
of the config file the node's agent installed — ``{"rps": 100, "error_ratio": 0.02}``. No file,
or ``"rps": 0``: no traffic. So a version's bytes, once switched, are what Prometheus sees: the
bad version is bad because of what it says, as in life.

Counters advance by the time elapsed at each scrape, as floats: the rates Prometheus computes
are the configured ones, and a canary's ratio to its baseline is exact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry

from confbus.runtime.http import HttpServer, Request, Response


def config(rps: float, error_ratio: float) -> bytes:
    return json.dumps({"rps": rps, "error_ratio": error_ratio}).encode() + b"\n"


@dataclass
class NodeTraffic:
    live_file: Path
    requests: float = 0.0
    errors: float = 0.0
    last: float = field(default_factory=time.monotonic)

    def advance(self) -> None:
        now = time.monotonic()
        elapsed, self.last = now - self.last, now
        try:
            cfg = json.loads(self.live_file.read_bytes())
        except (OSError, ValueError):
            return  # no config yet: the app serves nothing
        rps, ratio = float(cfg.get("rps", 0.0)), float(cfg.get("error_ratio", 0.0))
        self.requests += rps * elapsed
        self.errors += rps * elapsed * ratio


@dataclass
class TrafficApp:
    nodes: Mapping[str, Path]  # node -> the live file its agent writes
    server: HttpServer = field(default_factory=lambda: HttpServer(CollectorRegistry()))
    traffic: dict[str, NodeTraffic] = field(default_factory=dict)

    def page(self, node: str) -> bytes:
        t = self.traffic[node]
        t.advance()
        return (
            "# TYPE app_requests_total counter\n"
            f"app_requests_total {t.requests}\n"
            "# TYPE app_errors_total counter\n"
            f"app_errors_total {t.errors}\n"
        ).encode()

    async def start(self, tg: TaskGroup) -> int:
        for node, path in self.nodes.items():
            self.traffic[node] = NodeTraffic(path)

            async def metrics(_req: Request, node: str = node) -> Response:
                return Response(200, self.page(node), "text/plain; version=0.0.4")

            self.server.route("GET", f"/{node}/metrics", metrics)
        port: int = await tg.start(self.server.serve)
        return port
