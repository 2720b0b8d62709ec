"""Answering ``cfg.api.health.verdict`` (docs/design.md §6.2): the namespace's sample rules
judged from this replica's windows (``rules.judge``), its PromQL rules asked of Prometheus
(``promql``), one verdict of both, and a ``health.verdict`` event recording every rule's value,
threshold and query (unless the caller is only polling).

Which judged nodes have no health source at all is decided here, once (``without_source``):
a caller told that every node it asked about is such a node answers its own ``no_data`` at
once instead of waiting for samples that will never come.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC

import nats.errors

from confbus.health_watcher.metrics import WatcherMetrics
from confbus.health_watcher.policies import Directory, PolicyCache
from confbus.health_watcher.promql import Prometheus, Scope, judge_queries
from confbus.health_watcher.rules import judge
from confbus.health_watcher.windows import SampleStore
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError, InvalidInput
from confbus.runtime.events import emit
from confbus.schemas.api import health as api
from confbus.schemas.events import HealthVerdictEvent
from confbus.schemas.policy import Policy

log = logging.getLogger("confbus.health_watcher")


def baseline(
    versions: dict[str, int | None], version: int, judged: list[str]
) -> tuple[list[str], int | None]:
    """The nodes on another version than the one judged (not among the judged), and the
    version most of them run: the canary's baseline."""
    others = {n: v for n, v in versions.items() if v is not None and v != version}
    nodes = sorted(n for n in others if n not in judged)
    common = Counter(others[n] for n in nodes).most_common(1)
    return nodes, (common[0][0] if common else None)


def without_source(policy: Policy, nodes: list[str], directory: Directory) -> list[str]:
    """The nodes no health sample can come from: their agent said it forwards none (no
    ``--health-url``) and the policy neither scrapes them nor has a PromQL rule (Prometheus
    is a source for every node). An agent that did not say counts as a source."""
    if any(r.query for r in policy.health_rules):
        return []
    scraped = {t.node for t in policy.scrape_targets}
    return [n for n in nodes if n not in scraped and directory.forwards_health(n) is False]


@dataclass
class Verdicts:
    bus: Bus
    store: SampleStore
    policies: PolicyCache
    directory: Directory
    prometheus: Prometheus
    metrics: WatcherMetrics
    instance: str

    async def answer(self, req: api.VerdictRequest) -> api.VerdictReply:
        if req.window_s is not None and req.window_s <= 0:
            raise InvalidInput("window_s must be positive", where="window_s")
        policy = await self.policies.get(req.namespace, fresh=True)
        since = None
        if req.since is not None:
            at = req.since if req.since.tzinfo else req.since.replace(tzinfo=UTC)
            since = at.timestamp()
        now = time.time()
        queried = [r for r in policy.health_rules if r.query]
        sampled = [r for r in policy.health_rules if not r.query]
        nodes = req.nodes or sorted(self.store.series(req.namespace, req.version))
        judged = []
        if queried:
            others, other_version = baseline(
                self.directory.versions(req.namespace), req.version, nodes
            )
            scope = Scope(
                namespace=req.namespace,
                version=req.version,
                nodes=nodes,
                now=now,
                since=since,
                window_s=req.window_s,
                baseline=others,
                baseline_version=other_version,
            )
            judged = await judge_queries(self.prometheus, policy.prometheus, queried, scope)
        j = judge(
            sampled,
            self.store.series(req.namespace, req.version, nodes),
            nodes,
            now=now,
            since=since,
            window_s=req.window_s,
            judged=judged,
        )
        self.metrics.verdicts.labels(j.verdict).inc()
        rules = [o.result() for o in j.outcomes]
        sourceless = without_source(policy, list(nodes), self.directory)
        reason = j.reason
        if j.verdict == "no_data" and sourceless and len(sourceless) == len(nodes):
            reason = (
                f"no health source: {', '.join(sourceless)} forward no health (agent "
                f"--health-url) and no scrape target or PromQL rule covers them; {reason}"
            )
        reply = api.VerdictReply(
            verdict=j.verdict,
            samples=j.samples,
            healthy_nodes=j.healthy,
            unhealthy_nodes=j.unhealthy,
            unknown_nodes=j.unknown,
            rules=rules,
            reason=reason,
            evaluated_by=self.instance,
            no_source=sourceless,
        )
        if not req.record:
            return reply
        try:
            await emit(
                self.bus,
                HealthVerdictEvent(
                    namespace=req.namespace,
                    version=req.version,
                    nodes=list(nodes),
                    verdict=j.verdict,
                    samples=j.samples,
                    actor=self.instance,
                    reason=reason[:2000],
                    rules=rules,
                ),
            )
        except (ConfbusError, nats.errors.Error) as exc:
            # The verdict stands; the audit line is what is missing — say so loudly.
            log.warning("verdict event not emitted", extra={"error": repr(exc)})
        return reply
