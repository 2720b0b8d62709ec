"""``CFG_HEALTH`` samples (``cfg.health.<ns>.<node>``) and ``CFG_ALERTS`` (``cfg.alert.<ns>``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from confbus.schemas.base import LazyDecoder, Message, utcnow
from confbus.schemas.names import Namespace, NodeId


class HealthSample(Message, tag="health.sample", kw_only=True, frozen=True):
    namespace: Namespace
    node: NodeId
    version: int | None
    at: datetime = msgspec.field(default_factory=utcnow)
    # Counters and gauges as scraped (e.g. requests_total, errors_total, latency_p99_ms).
    metrics: dict[str, float] = {}
    status_code: int | None = None  # for a plain HTTP health endpoint
    error: str = ""  # the scrape itself failed


decode_sample: LazyDecoder[HealthSample] = LazyDecoder(HealthSample)


class Alert(Message, tag="alert", kw_only=True, frozen=True):
    alert_id: str  # idempotency key: the same alert delivered twice rolls back once
    namespace: Namespace
    version: int | None
    state: Literal["firing", "resolved"] = "firing"
    rule: str = ""
    value: float | None = None
    threshold: float | None = None
    nodes: list[NodeId] = []
    source: Literal["health-watcher", "alertmanager", "operator", "distributor", "rollbacker"] = (
        "health-watcher"
    )
    summary: str = ""
    at: datetime = msgspec.field(default_factory=utcnow)


decode_alert: LazyDecoder[Alert] = LazyDecoder(Alert)
