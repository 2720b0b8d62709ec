"""``/metrics`` of the small HTTP server: a service's registry in the Prometheus text format, and
an empty page from a process with no registry (the agent), which loads prometheus_client only
when it is first scraped."""

from __future__ import annotations

import anyio
import pytest
from prometheus_client import CollectorRegistry, Counter

from confbus.runtime.http import HttpServer, http_get
from confbus.runtime.scrape import PromMapper

pytestmark = pytest.mark.anyio


async def scrape(server: HttpServer) -> tuple[int, bytes]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        answer = await http_get("127.0.0.1", port, "/metrics")
        tg.cancel_scope.cancel()
    return answer


async def test_a_registry_is_served_in_the_text_format() -> None:
    registry = CollectorRegistry()
    Counter("confbus_test_things", "things", registry=registry).inc(3)
    status, body = await scrape(HttpServer(registry))
    assert status == 200
    assert PromMapper().map_text(body.decode()) == {"confbus_test_things_total": 3.0}


async def test_no_registry_serves_an_empty_page() -> None:
    status, body = await scrape(HttpServer(None))
    assert (status, body) == (200, b"")
