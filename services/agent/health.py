"""The agent's health forwarding: ``confbus agent --health-url URL [--health-interval S]``.

Every interval the agent GETs the app's health URL — a Prometheus ``/metrics`` page or a plain
health endpoint — and publishes one ``HealthSample`` per namespace it follows on
``cfg.health.<ns>.<node>`` (stream ``CFG_HEALTH``), tagged with the version it has applied
there, so the health-watcher judges each version on its own nodes' samples.

What goes into a sample (``confbus.runtime.scrape`` has the whole mapping):

- a Prometheus page: its counters and gauges (``requests_total``, ``errors_total``, …),
  quantiles as ``<name>_pNN[_ms]`` (and ``latency_pNN_ms``), plus ``status_code`` 200;
- a plain endpoint: ``status_code`` only;
- a failed scrape: ``error`` (the health-watcher counts it as status 599).

Samples are short-lived facts: when the bus is down they are dropped, not queued (a backlog
of stale samples would only mislead a verdict later), with one log line per outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
import nats.errors

from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError
from confbus.runtime.http import split_http_url
from confbus.runtime.scrape import Scraper, ScrapeResult
from confbus.schemas import subjects
from confbus.schemas.health import HealthSample

log = logging.getLogger("confbus.agent.health")

DEFAULT_INTERVAL_S = 5.0


def check_health_url(url: str) -> str:
    """The URL as given, or ``ValueError`` with the reason (plain http only)."""
    split_http_url(url)
    return url


@dataclass
class HealthForwarder:
    node: str
    url: str
    # namespace -> the version applied there (None: no config yet), read at each scrape
    versions: Callable[[], Mapping[str, int | None]]
    interval_s: float = DEFAULT_INTERVAL_S
    scraper: Scraper = field(init=False)
    _failing: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        # A scrape may take at most the interval (and never more than 5 s): a hung app must
        # not make its samples pile up or arrive late.
        self.scraper = Scraper(self.url, timeout_s=min(5.0, max(0.1, self.interval_s)))

    async def run(self, bus: Bus) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.forward_once(bus)
            except Exception:  # health forwarding must never take the node's agent down
                log.exception("health forwarding failed")
            await anyio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    def samples(self, result: ScrapeResult) -> list[HealthSample]:
        return [
            HealthSample(
                namespace=ns,
                node=self.node,
                version=version,
                metrics=result.metrics,
                status_code=result.status_code,
                error=result.error,
            )
            for ns, version in self.versions().items()
        ]

    async def forward_once(self, bus: Bus) -> list[HealthSample]:
        """Scrape once and publish; returns the samples published."""
        result = await self.scraper.scrape()
        sent = []
        for sample in self.samples(result):
            try:
                await bus.publish(
                    subjects.health(sample.namespace, self.node),
                    sample,
                    timeout=max(0.5, min(self.interval_s, 5.0)),
                )
            except (ConfbusError, nats.errors.Error) as exc:
                if not self._failing:
                    log.warning(
                        "health sample not forwarded (the bus is down?); dropping samples",
                        extra={"namespace": sample.namespace, "error": repr(exc)},
                    )
                self._failing = True
                continue
            if self._failing:
                log.info("health samples forwarded again")
                self._failing = False
            sent.append(sample)
        return sent
