"""Webhooks: a target that is down or hangs never delays the rollback; its retries and
failures show in the rollbacker's metrics; a working target gets Slack-compatible JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from confbus.runtime.tcp import TcpListener
from tests.cli.procs import closed_port
from tests.helpers import eventually
from tests.rollbacker.fakes import webhook_receiver
from tests.rollbacker.world import policy, world

pytestmark = pytest.mark.anyio


@dataclass
class Hang:
    """Accepts connections and never answers, until released."""

    port: int = 0
    open: int = 0
    closed_by_client: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)


@asynccontextmanager
async def hanging_server() -> AsyncIterator[Hang]:
    hang = Hang()

    async def handle(stream: SocketStream) -> None:
        async with stream:
            hang.open += 1
            try:
                with anyio.move_on_after(60):
                    while True:
                        if not await stream.receive():
                            break
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                hang.closed_by_client += 1
            hang.open -= 1

    listener = await TcpListener.bind("127.0.0.1")
    hang.port = listener.port
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield hang
        finally:
            tg.cancel_scope.cancel()


async def test_a_down_or_hanging_webhook_does_not_delay_the_rollback(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with hanging_server() as hang, webhook_receiver("/hooks/T000/secret") as (good_port, got):
        hooks = [
            f"http://127.0.0.1:{closed_port()}/down",
            f"http://127.0.0.1:{hang.port}/hang",
            f"http://127.0.0.1:{good_port}/hooks/T000/secret",
        ]
        pol = policy(strategy="batches:2", webhooks=hooks)
        async with world(nats_server, bus, tmp_path, pol=pol, start_rollbacker=False) as w:
            # Attempts time out after 30 s: far longer than the whole rollback takes, even on
            # a loaded machine (with 5 s, CI under load saw the hanging POST time out first).
            w.start_rollbacker("--webhook-timeout", "30")
            _, v2 = await w.seed()
            await w.alert("a-1", v2)
            await w.tap.wait_type("rollback.completed")
            # Completed while the hanging endpoint still holds its first, unanswered POST:
            # the rollback did not wait for it.
            assert hang.open >= 1 and hang.closed_by_client == 0
            # The working endpoint got every step, with a Slack-compatible text.
            await eventually(lambda: _true(len(got) >= 4), what="webhooks delivered")
            kinds = [str(g["event"]) for g in got]
            assert sorted(kinds) == sorted(
                ["rollback.started", "rollback.batch", "rollback.batch", "rollback.completed"]
            )
            assert all(isinstance(g["text"], str) and g["text"] for g in got)
            assert all(g["namespace"] == "web" and g["rollback_id"] for g in got)
            # The one that is down was retried (with backoff) and finally given up; it shows.
            deliveries = "confbus_rollbacker_webhook_deliveries_total"
            attempts = "confbus_rollbacker_webhook_attempts_total"
            await eventually(
                lambda: w.metric_at_least(deliveries, 'outcome="failed"', 4),
                timeout=30,
                what="the down webhook given up for all four notifications",
            )
            assert await w.metric("confbus_rollbacker_webhook_retries_total") >= 16
            assert await w.metric(attempts, 'result="error"') >= 20
            assert await w.metric(deliveries, 'outcome="delivered"') == 4
            # No URL path (it may hold a token) in the rollbacker's log.
            assert w.rollbacker is not None
            assert "secret" not in w.rollbacker.log_text()


async def _true(value: bool) -> bool:
    return value
