"""Helpers for end-to-end tests: store a version, switch, read what happened or follow it as
it happens (``EventTap``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy

from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.events import event_type
from confbus.runtime.http import http_get
from confbus.schemas import subjects
from confbus.schemas.api import txn as txn_api
from confbus.schemas.changes import ChangeProposed, msg_id
from confbus.schemas.events import (
    AnyEvent,
    VersionCreated,
    VersionRejected,
    decode_event,
    readable_event,
)
from confbus.schemas.health import Alert, decode_alert
from confbus.schemas.streams import CFG_EVENTS, CFG_TXN
from confbus.schemas.txn import Decision, TxnMessage, decode_txn

T = TypeVar("T")


async def store_version(
    bus: Bus, ns: str, content: bytes, change_id: str, timeout: float = 20.0
) -> int:
    """Publish a change and wait for the version-store to store it."""
    sub = await bus.nc.subscribe(subjects.event(ns, "version.*"))
    try:
        await bus.publish(
            subjects.change(ns),
            ChangeProposed(namespace=ns, change_id=change_id, content=content),
            msg_id=msg_id(ns, change_id),
        )
        with anyio.fail_after(timeout):
            return await version_announced(sub, change_id, timeout)
    finally:
        await sub.unsubscribe()


async def version_announced(sub: Subscription, change_id: str, timeout: float) -> int:
    """The version the version-store announces for ``change_id`` on ``sub`` (subscribed to
    the namespace's ``version.*`` events before the change went out); a rejection fails."""
    while True:
        msg = await sub.next_msg(timeout=timeout)
        ev = decode_event(msg.data)
        if isinstance(ev, VersionCreated) and ev.change_id == change_id:
            return ev.version
        if isinstance(ev, VersionRejected) and ev.change_id == change_id:
            raise AssertionError(f"change {change_id} rejected: {ev.reason}")


async def switch(
    bus: Bus,
    ns: str,
    version: int,
    nodes: Sequence[str],
    timeout_s: float = 2.0,
    request_timeout: float | None = None,
) -> txn_api.SwitchReply:
    """One switch; ``request_timeout`` None: the switch's own deadline (it may only be longer)."""
    return await call(
        bus,
        txn_api.SWITCH,
        txn_api.SwitchRequest(
            namespace=ns, version=version, nodes=list(nodes), timeout_s=timeout_s
        ),
        timeout=request_timeout,
    )


async def read_messages(bus: Bus, stream: str, subject: str) -> list[Msg]:
    """Every message of ``stream`` matching ``subject``, in stream order (empty if none)."""
    info = await bus.js.stream_info(stream)
    if info.state.messages == 0:
        return []
    out: list[Msg] = []
    sub = await bus.js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    try:
        cinfo = await sub.consumer_info()
        delivered = cinfo.delivered.consumer_seq if cinfo.delivered else 0
        if not cinfo.num_pending and not delivered:
            return out  # nothing matches: do not wait for a message
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                return out
            out.append(msg)
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


async def read_stream(bus: Bus, stream: str, subject: str) -> list[tuple[str, bytes]]:
    """``read_messages`` as (subject, data) pairs."""
    return [(m.subject, m.data) for m in await read_messages(bus, stream, subject)]


async def readable(bus: Bus, stream: str, subject: str, decode: Callable[[bytes], T]) -> list[T]:
    """``read_messages`` decoded, leaving out what does not decode (tests may have written
    garbage on purpose)."""
    out: list[T] = []
    for msg in await read_messages(bus, stream, subject):
        try:
            out.append(decode(msg.data))
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
    return out


async def txn_records(bus: Bus, ns: str) -> list[TxnMessage]:
    """The readable records of ``ns``'s transactions."""
    return await readable(bus, CFG_TXN.name, subjects.txn_of(ns), decode_txn)


async def decisions(bus: Bus, ns: str) -> dict[str, Decision]:
    return {r.txid: r for r in await txn_records(bus, ns) if isinstance(r, Decision)}


async def events(bus: Bus, ns: str) -> list[AnyEvent]:
    """The readable events of ``ns``."""
    return await readable(bus, CFG_EVENTS.name, subjects.events_of(ns), decode_event)


async def agent_status(port: int) -> dict[str, object]:
    status, body = await http_get("127.0.0.1", port, "/status")
    assert status == 200, body
    result: dict[str, object] = json.loads(body)
    return result


class EventTap:
    """Every event (``on_event``) and alert (``on_alert``) of a namespace from the moment it
    subscribed, decoded, in order; ``alert_times``: when each alert came (monotonic clock)."""

    def __init__(self) -> None:
        self.events: list[AnyEvent] = []
        self.alerts: list[Alert] = []
        self.alert_times: list[float] = []
        self._changed = anyio.Event()

    async def on_event(self, msg: Msg) -> None:
        if (event := readable_event(msg.data)) is not None:
            self.events.append(event)
            self._kick()

    async def on_alert(self, msg: Msg) -> None:
        self.alert_times.append(time.monotonic())
        self.alerts.append(decode_alert(msg.data))
        self._kick()

    def _kick(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def types(self, prefix: str = "") -> list[str]:
        return [event_type(e) for e in self.events if event_type(e).startswith(prefix)]

    def of(self, tag: str) -> list[AnyEvent]:
        return [e for e in self.events if event_type(e) == tag]

    async def wait_for(self, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
        with anyio.fail_after(timeout):
            while True:
                changed = self._changed
                value = probe()
                if value:
                    return value
                await changed.wait()

    async def wait_type(self, tag: str, timeout: float = 20.0, count: int = 1) -> list[AnyEvent]:
        return await self.wait_for(
            lambda: self.of(tag) if len(self.of(tag)) >= count else None, timeout
        )
