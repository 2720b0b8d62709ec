"""Turning a decided head into the durable, write-once decision record and its event.

The head's compare-and-set *is* the decision. The record in ``CFG_TXN`` is how agents learn
it (even after being away); it is published with ``Nats-Expected-Last-Subject-Sequence: 0``
so that, whoever publishes it — the deciding coordinator or a replica recovering after its
crash — it is written exactly once and never changes.
"""

from __future__ import annotations

import logging

import nats.js.errors

from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.concurrency import gather
from confbus.runtime.events import emit
from confbus.runtime.txnlog import first_txn_record
from confbus.schemas import subjects
from confbus.schemas.base import project
from confbus.schemas.events import TxnAborted, TxnCommitted, VoteRecord
from confbus.schemas.txn import Decision, TxnHead

log = logging.getLogger("confbus.coordinator")

WRONG_LAST_SEQUENCE = 10071


def decision_of(head: TxnHead) -> Decision:
    assert head.txid is not None and head.version is not None and head.sha256 is not None
    assert head.state in ("committed", "aborted")
    return project(head, Decision, outcome="commit" if head.state == "committed" else "abort")


async def read_decision(bus: Bus, namespace: str, txid: str) -> Decision | None:
    """The decision record of ``txid``: the first valid one on its subject. It is written once
    (a re-announcement repeats it), so anything else there is not ours — a garbled or forged
    write after it must neither hide it nor crash the reader (it once failed every resolve of
    that txid, leaving its agents in doubt for good)."""
    subject = subjects.txn_decision(namespace, txid)
    return await first_txn_record(bus, subject, Decision, namespace, txid)


async def publish_decision(
    bus: Bus, head: TxnHead, votes: list[VoteRecord] | None = None, actor: str = ""
) -> Decision:
    """Announce the decision on the head: its event and its write-once record.

    Both are sent at once, the event first on the connection, and this returns once both
    are stored: the agents wait for the record, so it does not queue behind the event's
    acknowledgement. If either fails, the caller repeats the whole announcement (the event is
    deduplicated by its message id, the record is written once) — and whoever leads the
    namespace next announces its last decision again — so a record never stays without its
    audit event.
    """
    decision = decision_of(head)
    event_type = TxnCommitted if decision.outcome == "commit" else TxnAborted
    event = project(decision, event_type, actor=actor, votes=votes or [])
    _, recorded = await gather(
        emit(bus, event, msg_id=f"txn:{decision.txid}:decided"), _record(bus, decision)
    )
    return recorded


async def _record(bus: Bus, decision: Decision) -> Decision:
    try:
        await bus.js.publish(
            subjects.txn_decision(decision.namespace, decision.txid),
            encode(decision),
            headers={"Nats-Expected-Last-Subject-Sequence": "0"},
        )
    except nats.js.errors.APIError as exc:
        if exc.err_code != WRONG_LAST_SEQUENCE:
            raise
        # Already written (by us before a crash, or by a recovering replica): it must agree.
        existing = await read_decision(bus, decision.namespace, decision.txid)
        if existing is not None and existing.outcome != decision.outcome:
            log.critical(
                "decision record disagrees with the head",
                extra={"txid": decision.txid, "record": existing.outcome, "head": decision.outcome},
            )
        return existing or decision
    return decision
