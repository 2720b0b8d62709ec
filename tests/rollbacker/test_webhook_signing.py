"""Outgoing webhooks carry an HMAC of the body and a timestamp (header Confbus-Signature), so a
receiver can check who sent a post and refuse an old one replayed: a real HTTP receiver."""

from __future__ import annotations

import json

import anyio
import pytest
from prometheus_client import CollectorRegistry

from confbus.rollbacker import webhook_signing
from confbus.rollbacker.metrics import RollbackerMetrics
from confbus.rollbacker.notify import Notifier
from confbus.runtime.http import HttpServer, Request, Response

pytestmark = pytest.mark.anyio


async def test_outgoing_webhooks_carry_an_hmac_with_a_timestamp() -> None:
    secret = b"shared-webhook-secret"
    got: list[tuple[bytes, str]] = []
    arrived = anyio.Event()

    async def hook(req: Request) -> Response:
        got.append((req.body, req.headers.get(webhook_signing.HEADER.lower(), "")))
        arrived.set()
        return Response(200, b"ok", "text/plain")

    server = HttpServer(CollectorRegistry())
    server.route("POST", "/hook", hook)
    notifier = Notifier(
        RollbackerMetrics.create(CollectorRegistry()).webhook, webhook_secret=secret
    )
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        await tg.start(notifier.run)
        notifier.send([f"http://127.0.0.1:{port}/hook"], {"event_id": "e1", "text": "rolled back"})
        with anyio.fail_after(10):
            await arrived.wait()
        tg.cancel_scope.cancel()
    sent, header = got[0]
    assert json.loads(sent)["event_id"] == "e1"
    assert webhook_signing.verify(secret, sent, header)
    # What a receiver refuses: another body, another secret, and the same post replayed later.
    assert not webhook_signing.verify(secret, sent + b" ", header)
    assert not webhook_signing.verify(b"other", sent, header)
    t = int(header.split(",")[0].removeprefix("t="))
    assert not webhook_signing.verify(secret, sent, header, now=t + 301)
    assert webhook_signing.verify(secret, sent, header, now=t + 299)
