"""Scraping the policies' ``scrape_targets`` ourselves.

Only the lease holder of a namespace scrapes its targets (one scrape per target, not one per
replica). Each scrape becomes an ordinary ``HealthSample`` on ``cfg.health.<ns>.<node>``, tagged
with the version the node's agent last reported in its heartbeat, so every replica's windows —
and every verdict — see it exactly like an agent's sample. The mapping of the page is the
agent's (``confbus.runtime.scrape``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio
import nats.errors
from anyio.abc import TaskGroup

from confbus.health_watcher.metrics import WatcherMetrics
from confbus.health_watcher.policies import Directory, PolicyCache
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError
from confbus.runtime.leases import Leases
from confbus.runtime.scrape import Scraper
from confbus.schemas import subjects
from confbus.schemas.health import HealthSample
from confbus.schemas.policy import ScrapeTarget

log = logging.getLogger("confbus.health_watcher.scrape")

_Key = tuple[str, str, str]  # namespace, node, url


@dataclass
class TargetScraper:
    bus: Bus
    leases: Leases
    policies: PolicyCache
    directory: Directory
    metrics: WatcherMetrics
    tick_s: float = 0.1
    _scrapers: dict[_Key, Scraper] = field(default_factory=dict)
    _due: dict[_Key, float] = field(default_factory=dict)
    _busy: set[_Key] = field(default_factory=set)

    async def targets(self) -> dict[_Key, ScrapeTarget]:
        out: dict[_Key, ScrapeTarget] = {}
        for ns in self.leases.held_names():
            try:
                policy = await self.policies.get(ns)
            except ConfbusError:
                continue
            for t in policy.scrape_targets:
                out[(ns, t.node, t.url)] = t
        return out

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    await self.tick(tg)
                except Exception:
                    log.exception("scrape tick failed")
                await anyio.sleep(self.tick_s)

    async def tick(self, tg: TaskGroup) -> None:
        targets = await self.targets()
        for key in [k for k in self._scrapers if k not in targets]:
            del self._scrapers[key]
            self._due.pop(key, None)
        now = time.monotonic()
        for key, target in targets.items():
            if key in self._busy or self._due.get(key, 0.0) > now:
                continue
            interval = max(0.05, target.interval_s)
            self._due[key] = now + interval
            scraper = self._scrapers.get(key)
            if scraper is None:
                scraper = self._scrapers[key] = Scraper(target.url, timeout_s=min(5.0, interval))
            self._busy.add(key)
            tg.start_soon(self._scrape, key, scraper)

    async def _scrape(self, key: _Key, scraper: Scraper) -> None:
        ns, node, _url = key
        try:
            result = await scraper.scrape()
            self.metrics.scrapes.labels("error" if result.error else "ok").inc()
            if not self.leases.held(ns):
                return
            sample = HealthSample(
                namespace=ns,
                node=node,
                version=self.directory.version(node, ns),
                metrics=result.metrics,
                status_code=result.status_code,
                error=result.error,
            )
            try:
                await self.bus.publish(subjects.health(ns, node), sample)
            except (ConfbusError, nats.errors.Error) as exc:
                log.warning("scraped sample not published", extra={"error": repr(exc)})
        except Exception:  # one target must not stop the others (or the service)
            log.exception("scrape failed", extra={"namespace": ns, "node": node})
        finally:
            self._busy.discard(key)
