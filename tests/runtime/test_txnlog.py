"""``first_txn_record`` against a real nats-server: the record of a txid is found whatever else
was written on its subject before or after it (garbage, the other kind, another namespace's
record, a later copy); nothing matching is None. The coordinator's ``resolve`` and the agent's
in-doubt read and missed-prepare fetch all go through it."""

from __future__ import annotations

import msgspec
import pytest

from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.txnlog import MAX_SCAN, first_txn_record
from confbus.schemas import subjects
from confbus.schemas.base import project
from confbus.schemas.txn import Decision, Prepare
from tests.agent.support import make_prepare

pytestmark = pytest.mark.anyio


def prepare() -> Prepare:
    return make_prepare(2, txid="t1", namespace="web")


def decision(p: Prepare, outcome: str = "commit") -> Decision:
    return project(p, Decision, outcome=outcome)


async def test_the_record_is_found_among_garbage_on_its_subject(bus: Bus) -> None:
    p = prepare()
    subject = subjects.txn_prepare("web", "t1")
    other_ns = msgspec.structs.replace(p, namespace="db")
    for junk in (b"", b"\xff garbage", encode(decision(p)), encode(other_ns)):
        await bus.js.publish(subject, junk)
    await bus.js.publish(subject, encode(p))
    later = make_prepare(2, b"{}", txid="t1", namespace="web")
    await bus.js.publish(subject, encode(later))  # not the first: never the one returned
    await bus.js.publish(subject, b"")

    assert await first_txn_record(bus, subject, Prepare, "web", "t1") == p


async def test_a_decision_after_garbage_and_nothing_on_an_empty_subject(bus: Bus) -> None:
    d = decision(prepare(), "abort")
    subject = subjects.txn_decision("web", "t1")
    assert await first_txn_record(bus, subject, Decision, "web", "t1") is None
    await bus.js.publish(subject, b"{}")
    await bus.js.publish(subject, encode(prepare()))  # the other kind
    await bus.js.publish(subject, encode(d))
    await bus.js.publish(subject, b"")
    assert await first_txn_record(bus, subject, Decision, "web", "t1") == d
    # Another txid's subject is not read, even though its records look alike.
    assert (
        await first_txn_record(bus, subjects.txn_decision("web", "t2"), Decision, "web", "t2")
        is None
    )


async def test_the_scan_is_bounded(bus: Bus) -> None:
    subject = subjects.txn_decision("web", "t1")
    for _ in range(MAX_SCAN):
        await bus.js.publish(subject, b"junk")
    await bus.js.publish(subject, encode(decision(prepare())))
    # A flood of garbage ahead of the record: the reader gives up rather than scan forever.
    assert await first_txn_record(bus, subject, Decision, "web", "t1") is None
