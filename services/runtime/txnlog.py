"""Reading one transaction's record from ``CFG_TXN``, whatever else sits on its subject.

A transaction's prepare and its decision are each written once on their own subject
(``cfg.txn.<ns>.<txid>.prepare`` / ``.decision``). Only confbus services may write there, but
a bug, a newer confbus or an operator's stray publish could leave something else after the
real record; reading the *last* message would then hide it (and an empty body once made
every resolve of a txid fail). So the reader takes the first record on the subject that is
the expected kind, for that namespace and txid, and skips — loudly — what is not.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import nats.js.errors

from confbus.runtime.bus import Bus
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.streams import CFG_TXN
from confbus.schemas.txn import Decision, Prepare, decode_txn

log = logging.getLogger("confbus.txnlog")

R = TypeVar("R", Prepare, Decision)

# Records read past on one subject before giving up (only garbage is ever skipped).
MAX_SCAN = 100


async def first_txn_record(
    bus: Bus, subject: str, kind: type[R], namespace: str, txid: str
) -> R | None:
    """The first ``kind`` record of (``namespace``, ``txid``) on ``subject``; None if none."""
    seq = 1
    for _ in range(MAX_SCAN):
        try:
            msg = await bus.js.get_msg(CFG_TXN.name, seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return None
        try:
            record = decode_txn(msg.data or b"")
        except DECODE_ERRORS:
            record = None
        if isinstance(record, kind) and (record.namespace, record.txid) == (namespace, txid):
            return record
        log.warning(
            "skipping a record that is not the expected one",
            extra={"subject": subject, "seq": msg.seq, "expected": kind.__name__},
        )
        seq = (msg.seq or seq) + 1
    return None
