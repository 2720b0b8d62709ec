"""Notifications the seed asks for: a mail (to a real SMTP server, aiosmtpd) and a Slack-style
webhook for each rollback step and each rollout outcome, with the version, the reason and the
nodes; each carries its event's id, and one event is notified once."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import msgspec
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from confbus.procs.nats import NatsServer
from confbus.procs.ports import free_port
from confbus.runtime.bus import Bus
from confbus.runtime.events import emit
from confbus.schemas.events import NodeOutcome, RolloutFailed
from confbus.schemas.policy import MailTarget
from tests.helpers import eventually
from tests.rollbacker.fakes import webhook_receiver
from tests.rollbacker.world import NS, policy, world

pytestmark = pytest.mark.anyio

SLACK_PATH = "/services/T000/B000/token"  # a Slack-style incoming-webhook path


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        return "250 OK"

    def about(self, event: str) -> list[EmailMessage]:
        return [m for m in self.messages if event in str(m["Subject"])]


@pytest.fixture
def smtp() -> Iterator[tuple[int, Mailbox]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, box
    finally:
        controller.stop()


def body_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


async def test_a_rollback_and_a_rollout_outcome_are_mailed_and_posted(
    nats_server: NatsServer, bus: Bus, tmp_path: Path, smtp: tuple[int, Mailbox]
) -> None:
    smtp_port, box = smtp
    async with webhook_receiver(SLACK_PATH) as (port, got):
        pol = policy(strategy="batches:2", webhooks=[f"http://127.0.0.1:{port}{SLACK_PATH}"])
        pol = msgspec.structs.replace(
            pol, mail=MailTarget(to=["ops@example.com"], host="127.0.0.1", port=smtp_port)
        )
        async with world(nats_server, bus, tmp_path, pol=pol) as w:
            v1, v2 = await w.seed()
            await w.alert("p99-at-peak", v2, summary="p99 above 800ms")
            await w.tap.wait_type("rollback.completed")
            nodes = sorted(w.nodes)

            async def mailed() -> bool:
                return bool(box.about("rollback.completed"))

            await eventually(mailed, timeout=20, what="the rollback's mail")
            mail = box.about("rollback.completed")[0]
            text = body_of(mail)
            assert mail["To"] == "ops@example.com" and "rollback.completed" in mail["Subject"]
            assert f"v{v2}" in text and f"v{v1}" in text, text
            assert "p99 above 800ms" in text, text  # the reason
            assert all(n in text for n in nodes), text
            assert mail["Message-ID"] and mail["X-Confbus-Event"].startswith("rollback:")

            async def posted() -> bool:
                return any(g["event"] == "rollback.completed" for g in got)

            await eventually(posted, timeout=20, what="the rollback's webhook")
            done = next(g for g in got if g["event"] == "rollback.completed")
            assert (done["from_version"], done["to_version"]) == (v2, v1)
            assert "p99 above 800ms" in done["reason"] and done["nodes"] == nodes
            assert done["text"] and done["event_id"]  # Slack shows text; the id dedupes

            # A rollout outcome (as the distributor writes it) is notified the same way.
            failed = RolloutFailed(
                namespace=NS,
                actor="distributor",
                reason="wave 1 vote: n2 said no (validation failed)",
                rollout_id="r-9",
                version=v2 + 5,
                wave=0,
                report=[NodeOutcome(node="n1", outcome="applied")],
            )
            await emit(bus, failed, msg_id="rollout:r-9:failed")
            await emit(bus, failed, msg_id="rollout:r-9:failed")  # a repeat: one notification

            async def rollout_told() -> bool:
                posts = any(g["event"] == "rollout.failed" for g in got)
                return posts and bool(box.about("rollout.failed"))

            await eventually(rollout_told, timeout=20, what="the rollout outcome notified")
            post = next(g for g in got if g["event"] == "rollout.failed")
            assert post["version"] == v2 + 5 and post["nodes"] == ["n1"]
            assert "FAILED" in post["text"] and "n2 said no" in post["reason"]
            assert "n2 said no" in body_of(box.about("rollout.failed")[0])
            assert len([g for g in got if g["event"] == "rollout.failed"]) == 1
            # Each rollback step was posted once, whatever the retries.
            steps = [g["event_id"] for g in got if str(g["event"]).startswith("rollback.")]
            assert len(steps) == len(set(steps)) >= 4
