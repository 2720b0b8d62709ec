"""Every ``cfg.api`` service and its operations: what ``serve_api`` checks a service binds in
full, and what the AsyncAPI document lists."""

from __future__ import annotations

from typing import Any

from confbus.schemas.api import dist, health, rollback, store, txn
from confbus.schemas.api.operation import Operation

# service → its operations, in the order they are declared
SERVICES: dict[str, tuple[Operation[Any, Any], ...]] = {
    m.SERVICE: m.OPERATIONS for m in (store, txn, dist, health, rollback)
}


def operations_of(service: str) -> tuple[Operation[Any, Any], ...]:
    try:
        return SERVICES[service]
    except KeyError:
        raise ValueError(f"no cfg.api service {service!r} is declared in schemas/api") from None


def every_operation() -> list[Operation[Any, Any]]:
    return [op for ops in SERVICES.values() for op in ops]
