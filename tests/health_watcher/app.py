"""A tiny real HTTP app for health tests: a Prometheus page whose counters the test controls,
and a plain health endpoint whose status the test sets."""

from __future__ import annotations

from dataclasses import dataclass, field

from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry

from confbus.runtime.http import HttpServer, Request, Response

METRICS_PATH = "/app/metrics"
HEALTH_PATH = "/app/health"


@dataclass
class MetricsApp:
    requests: float = 0.0
    errors: float = 0.0
    latency_p99_s: float | None = 0.05  # a summary quantile, in seconds
    health_status: int = 200
    scrapes: int = 0
    server: HttpServer = field(default_factory=lambda: HttpServer(CollectorRegistry()))

    def serve_traffic(self, requests: int, error_ratio: float) -> None:
        """Pretend the app answered ``requests`` requests, this share of them with an error."""
        self.requests += requests
        self.errors += round(requests * error_ratio)

    def restart(self) -> None:
        """The app restarted: its counters start again from zero."""
        self.requests = 0.0
        self.errors = 0.0

    def text(self) -> str:
        lines = [
            "# HELP app_requests_total Requests served.",
            "# TYPE app_requests_total counter",
            f'app_requests_total{{code="200"}} {self.requests - self.errors}',
            f'app_requests_total{{code="500"}} {self.errors}',
            "# TYPE requests_total counter",
            f"requests_total {self.requests}",
            "# TYPE errors_total counter",
            f"errors_total {self.errors}",
            "# TYPE in_flight gauge",
            "in_flight 3",
        ]
        if self.latency_p99_s is not None:
            lines += [
                "# TYPE request_latency_seconds summary",
                f'request_latency_seconds{{quantile="0.5"}} {self.latency_p99_s / 2}',
                f'request_latency_seconds{{quantile="0.99"}} {self.latency_p99_s}',
                f"request_latency_seconds_sum {self.requests * 0.01}",
                f"request_latency_seconds_count {self.requests}",
            ]
        return "\n".join(lines) + "\n"

    async def _metrics(self, _req: Request) -> Response:
        self.scrapes += 1
        return Response(200, self.text().encode(), "text/plain; version=0.0.4")

    async def _health(self, _req: Request) -> Response:
        return Response(self.health_status, b"OK\n" if self.health_status == 200 else b"down\n")

    async def start(self, tg: TaskGroup) -> int:
        self.server.route("GET", METRICS_PATH, self._metrics)
        self.server.route("GET", HEALTH_PATH, self._health)
        port: int = await tg.start(self.server.serve)
        return port

    def url(self, path: str = METRICS_PATH) -> str:
        return f"http://127.0.0.1:{self.server.bound_port}{path}"
