"""Prometheus metrics: one injected ``CollectorRegistry`` per service, names
``confbus_<service>_<noun>_<unit>``, small fixed label sets (no node ids, no versions).

A service declares its metrics once, as a dataclass whose fields say each metric's kind (the
field's type), noun, help and labels; ``create`` registers them all against a registry::

    @dataclass
    class DistributorMetrics(ServiceMetrics):
        SERVICE = "distributor"

        nodes: Annotated[Gauge, Metric("nodes", "Known nodes by liveness.", "liveness")]

    metrics = DistributorMetrics.create(ctx.registry)  # confbus_distributor_nodes{liveness}

A field whose type is another ``ServiceMetrics`` holds that set, created against the same
registry.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Self, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

M = TypeVar("M")
MetricKind = type[Counter] | type[Gauge] | type[Histogram]


def metric_name(service: str, noun: str) -> str:
    return f"confbus_{service.replace('-', '_')}_{noun}"


class Metric:
    """A metric's declaration: its noun (the name after the prefix), help and labels, and for a
    histogram its buckets (Prometheus' default ones when not given)."""

    def __init__(
        self, noun: str, help: str, *labels: str, buckets: tuple[float, ...] | None = None
    ) -> None:
        self.noun, self.help, self.labels, self.buckets = noun, help, labels, buckets

    def register(
        self, kind: MetricKind, registry: CollectorRegistry, prefix: str
    ) -> Counter | Gauge | Histogram:
        name = prefix + self.noun  # a counter is exposed as <name>_total
        if self.buckets is not None:
            if kind is not Histogram:
                raise TypeError(f"{name}: only a histogram has buckets")
            return Histogram(name, self.help, self.labels, buckets=self.buckets, registry=registry)
        return kind(name, self.help, self.labels, registry=registry)


def register(cls: type[M], registry: CollectorRegistry, prefix: str) -> M:
    """An instance of the dataclass ``cls``: each of its fields declared ``Annotated[kind,
    Metric(...)]`` registered against ``registry`` as ``<prefix><noun>``, each field typed
    as a ``ServiceMetrics`` created."""
    made: dict[str, Any] = {}
    for field, hint in typing.get_type_hints(cls, include_extras=True).items():
        if typing.get_origin(hint) is Annotated:
            kind, declared = typing.get_args(hint)
            made[field] = declared.register(kind, registry, prefix)
        elif isinstance(hint, type) and issubclass(hint, ServiceMetrics):
            made[field] = hint.create(registry)
    return cls(**made)


@dataclass
class ServiceMetrics:
    """The metrics of a service, named ``confbus_<SERVICE>_<noun>``."""

    SERVICE: ClassVar[str]

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Self:
        return register(cls, registry, metric_name(cls.SERVICE, ""))


@dataclass
class ConsumerMetrics:
    """A durable consumer's metrics, named ``confbus_<service>_<consumer>_<noun>``."""

    messages: Annotated[
        Counter,
        Metric(
            "messages",
            "Messages consumed, by outcome (acked, retried, dead_lettered, skipped).",
            "outcome",
        ),
    ]
    handle_seconds: Annotated[
        Histogram, Metric("handle_seconds", "Time to handle one fetched batch.")
    ]

    @classmethod
    def create(cls, registry: CollectorRegistry, service: str, consumer: str) -> ConsumerMetrics:
        scope = consumer.replace("-", "_").lower()
        return register(cls, registry, metric_name(service, f"{scope}_"))
