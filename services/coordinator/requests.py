"""One transaction per switch request: a request sent again is answered, not run again.

A caller sends a switch again when the replica that took it died before answering
(``confbus.runtime.api``: its presence went), or after a 503. Each ``SwitchRequest`` carries a
``request_id``; the head of the namespace records it with the transaction started for it, and
keeps the ids of the last ``KEPT`` decided ones (``TxnHead.earlier``). A repeat finds its id
there and gets that transaction's outcome — after the new leader settled it (a transaction the
dead replica left preparing is aborted) — and never a second transaction. Each head is written
by compare-and-set over the head that was checked, so a repeat cannot miss the id of a
transaction written in between (docs/design.md §4.6).
"""

from __future__ import annotations

from confbus.schemas.api.txn import SwitchReply
from confbus.schemas.base import project
from confbus.schemas.events import VoteRecord
from confbus.schemas.txn import EarlierRequest, TxnHead

KEPT = 8  # decided requests remembered on the head, besides its current one
DECIDED = ("committed", "aborted")  # the states of a head whose transaction is over


def started_for(head: TxnHead, request_id: str | None) -> bool:
    """Whether a transaction on this head (current or remembered) was started for the request."""
    if request_id is None:
        return False
    return head.request_id == request_id or any(e.request_id == request_id for e in head.earlier)


def remembered(head: TxnHead) -> list[EarlierRequest]:
    """``earlier`` for the transaction that replaces ``head``'s (decided by now) on the head."""
    if head.request_id is None or head.txid is None or head.state not in DECIDED:
        return list(head.earlier)
    return [project(head, EarlierRequest), *head.earlier][:KEPT]


def answer(head: TxnHead, request_id: str) -> SwitchReply | None:
    """The outcome of the transaction started for ``request_id``, once decided, else None.

    The votes are not kept on the head: an abort says each participant's vote went uncounted
    (``missing``), as the distributor reads an abort it recovers — what it retries, not fails.
    """
    if head.request_id == request_id and head.txid is not None and head.state in DECIDED:
        return _reply(head.txid, head.state, head.participants, head.reason)
    for e in head.earlier:
        if e.request_id == request_id:
            return _reply(e.txid, e.state, e.participants, e.reason)
    return None


def _reply(txid: str, state: str, participants: list[str], reason: str) -> SwitchReply:
    if state == "committed":
        return SwitchReply(txid=txid, outcome="commit")
    why = f"not counted: the transaction was aborted ({reason or 'no reason recorded'})"
    return SwitchReply(
        txid=txid,
        outcome="abort",
        votes=[VoteRecord(node=n, vote="missing", reason=why) for n in participants],
    )
