"""Declared metrics (``confbus.runtime.metrics``): each field's kind, name, help, labels and
buckets as declared, registered against the one registry given, a nested set included — what a
scrape of that registry then shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from confbus.runtime.metrics import ConsumerMetrics, Metric, ServiceMetrics


@dataclass
class Inner(ServiceMetrics):
    SERVICE = "inner-part"

    pending: Annotated[Gauge, Metric("pending", "Things waiting.")]


@dataclass
class Outer(ServiceMetrics):
    SERVICE = "outer"

    things: Annotated[Counter, Metric("things", "Things done, by outcome.", "outcome")]
    seconds: Annotated[Histogram, Metric("seconds", "Time per thing.", buckets=(1.0, 5.0))]
    inner: Inner


def exposed(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_each_declared_field_is_registered_under_its_service_name() -> None:
    registry = CollectorRegistry()
    metrics = Outer.create(registry)
    metrics.things.labels("ok").inc(2)
    metrics.seconds.observe(3.0)
    metrics.inner.pending.set(4)
    text = exposed(registry)
    assert "# HELP confbus_outer_things_total Things done, by outcome." in text
    assert 'confbus_outer_things_total{outcome="ok"} 2.0' in text
    assert 'confbus_outer_seconds_bucket{le="1.0"} 0.0' in text
    assert 'confbus_outer_seconds_bucket{le="5.0"} 1.0' in text
    assert "confbus_inner_part_pending 4.0" in text


def test_a_second_set_on_one_registry_is_refused_by_name() -> None:
    registry = CollectorRegistry()
    Outer.create(registry)
    with pytest.raises(ValueError, match="confbus_outer_things"):
        Outer.create(registry)


def test_buckets_on_a_counter_are_a_declaration_error() -> None:
    @dataclass
    class Wrong(ServiceMetrics):
        SERVICE = "wrong"

        things: Annotated[Counter, Metric("things", "Things.", buckets=(1.0,))]

    with pytest.raises(TypeError, match="only a histogram has buckets"):
        Wrong.create(CollectorRegistry())


def test_a_consumers_metrics_are_named_after_service_and_consumer() -> None:
    registry = CollectorRegistry()
    ConsumerMetrics.create(registry, "version-store", "Changes-V2").messages.labels("acked").inc()
    text = exposed(registry)
    assert 'confbus_version_store_changes_v2_messages_total{outcome="acked"} 1.0' in text
    assert "confbus_version_store_changes_v2_handle_seconds_count 0.0" in text
