"""Finding out what happened to a wave's switch when its reply never got recorded (the
distributor crashed between the coordinator's reply and its compare-and-set, or the request
timed out): read the namespace's transaction head and the write-once decision records in
``CFG_TXN``, and the ``txn.aborted`` events for the votes of an aborted one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from confbus.runtime.bus import Bus
from confbus.runtime.errors import Unavailable
from confbus.runtime.kv import StateKV
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.events import Event, TxnAborted, VersionCreated, decode_event
from confbus.schemas.state import head_key
from confbus.schemas.streams import CFG_EVENTS, CFG_TXN, CFG_TXN_HEAD
from confbus.schemas.txn import Decision, TxnHead, decode_head, decode_txn

T = TypeVar("T")
EV = TypeVar("EV", bound=Event)

# Stream times are the server's wall clock, ours may differ a little: look a bit earlier.
SKEW_S = 60.0


async def read_head(bus: Bus, namespace: str) -> TxnHead | None:
    try:
        heads = await StateKV.open(bus, CFG_TXN_HEAD)
    except (nats.errors.Error, TimeoutError) as exc:
        raise Unavailable(f"cannot read the transaction head of {namespace}: {exc!r}") from exc
    return (await heads.read(head_key(namespace), decode_head)).value


async def _scan(
    bus: Bus,
    stream: str,
    subject: str,
    since: datetime,
    decode: Callable[[bytes], T | None],
    match: Callable[[T], bool],
) -> list[T]:
    """Every message of ``subject`` stored since ``since`` that decodes and matches."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=since - timedelta(seconds=SKEW_S),
    )
    try:
        sub = await bus.js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise Unavailable(f"cannot read {stream}: {exc!r}") from exc
    found: list[T] = []
    try:
        info = await sub.consumer_info()
        if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
            return found
        while True:
            try:
                msg = await sub.next_msg(timeout=5.0)
            except nats.errors.TimeoutError as exc:
                raise Unavailable(f"reading {stream} stalled") from exc
            try:
                value = decode(msg.data)
            except DECODE_ERRORS:
                value = None
            if value is not None and match(value):
                found.append(value)
            if msg.metadata.num_pending == 0:
                return found
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _decision(data: bytes) -> Decision | None:
    record = decode_txn(data)
    return record if isinstance(record, Decision) else None


async def find_decision(
    bus: Bus,
    namespace: str,
    version: int,
    participants: list[str],
    since: datetime,
    exclude: list[str],
) -> Decision | None:
    """The decision of a transaction of ``version`` over exactly ``participants`` made since
    ``since`` (the latest, if several), other than the txids in ``exclude``."""
    want = set(participants)
    found = await _scan(
        bus,
        CFG_TXN.name,
        f"cfg.txn.{namespace}.*.decision",
        since,
        _decision,
        lambda d: d.version == version and set(d.participants) == want and d.txid not in exclude,
    )
    return found[-1] if found else None


async def _last_event(
    bus: Bus, namespace: str, kind: type[EV], since: datetime, match: Callable[[EV], bool]
) -> EV | None:
    """The latest event of type ``kind`` in ``namespace`` stored since ``since`` that matches."""

    def decode(data: bytes) -> EV | None:
        ev = decode_event(data)
        return ev if isinstance(ev, kind) else None

    tag = kind.__struct_config__.tag
    assert isinstance(tag, str)
    found = await _scan(bus, CFG_EVENTS.name, subjects.event(namespace, tag), since, decode, match)
    return found[-1] if found else None


async def abort_votes(bus: Bus, namespace: str, txid: str, since: datetime) -> TxnAborted | None:
    return await _last_event(bus, namespace, TxnAborted, since, lambda ev: ev.txid == txid)


async def created_event(
    bus: Bus, namespace: str, version: int, since: datetime
) -> VersionCreated | None:
    """The ``version.created`` event of a version (for the overrides of a draft that was
    approved later: ``version.approved`` does not repeat them)."""
    return await _last_event(
        bus, namespace, VersionCreated, since, lambda ev: ev.version == version
    )
