"""The Python client: what the CLI is built on, and what services use to react.

```python
async with Client("nats://127.0.0.1:4222") as client:
    async for event in client.events("cfg.event.payments.>", since=timedelta(hours=1)):
        print(event)
```
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from schemas import subjects
from schemas.events import AnyEvent, decode_event
from schemas.streams import CFG_EVENTS
from services.runtime.api import call
from services.runtime.bus import DEFAULT_NATS_URL, Bus, connect

log = logging.getLogger("confbus.client")

Rep = TypeVar("Rep")


class StreamedEvent(msgspec.Struct, frozen=True):
    """An event as read from ``CFG_EVENTS``, with where it sits in the stream."""

    seq: int
    subject: str
    time: datetime | None
    event: AnyEvent | None  # None: a type this build does not know (a newer confbus)
    raw: bytes


class Client:
    def __init__(
        self,
        nats_url: str = DEFAULT_NATS_URL,
        *,
        name: str = "confbus-client",
        user: str | None = None,
        password: str | None = None,
        creds: str | None = None,
        tls_ca: str | None = None,
        connect_timeout: float = 2.0,
    ) -> None:
        self.nats_url = nats_url
        self._kw: dict[str, Any] = dict(
            name=name, user=user, password=password, creds=creds, tls_ca=tls_ca,
            connect_timeout=connect_timeout,
        )
        self._bus: Bus | None = None

    @property
    def bus(self) -> Bus:
        assert self._bus is not None, "use 'async with Client(...)'"
        return self._bus

    async def __aenter__(self) -> Client:
        # A CLI must fail fast when confbus is down, not reconnect forever.
        self._bus = await connect(
            self.nats_url, max_reconnect_attempts=3, **self._kw
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bus is not None:
            await self._bus.close()

    async def call(
        self, service: str, op: str, request: Any, reply_type: type[Rep], timeout: float = 5.0
    ) -> Rep:
        return await call(self.bus, service, op, request, reply_type, timeout=timeout)

    # -- the audit stream --------------------------------------------------------------------

    async def events(
        self,
        subject_filter: str = subjects.EVENTS_ALL,
        *,
        since: datetime | timedelta | None = None,
        from_seq: int | None = None,
        follow: bool = False,
        idle_timeout: float = 1.0,
    ) -> AsyncIterator[StreamedEvent]:
        """Events of ``CFG_EVENTS`` in stream order, from an ordered (ephemeral) consumer.

        Without ``follow`` it stops at the end of the stream as it was when it started.
        """
        if isinstance(since, timedelta):
            since = datetime.now().astimezone() - since
        config = ConsumerConfig()
        if from_seq is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = from_seq
        elif since is not None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = since.isoformat()
        elif follow:
            config.deliver_policy = DeliverPolicy.NEW
        else:
            config.deliver_policy = DeliverPolicy.ALL
        last = 0
        if not follow:
            info = await self.bus.js.stream_info(CFG_EVENTS.name)
            last = info.state.last_seq
            if last == 0 or (from_seq is not None and from_seq > last):
                return
        sub = await self.bus.js.subscribe(
            subject_filter, stream=CFG_EVENTS.name, ordered_consumer=True, config=config
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle_timeout if not follow else 3600)
                except nats.errors.TimeoutError:
                    if follow:
                        continue
                    return  # nothing newer matches the filter
                md = msg.metadata
                try:
                    event: AnyEvent | None = decode_event(msg.data)
                except (msgspec.ValidationError, msgspec.DecodeError):
                    event = None
                yield StreamedEvent(md.sequence.stream, msg.subject, md.timestamp, event, msg.data)
                if not follow and md.sequence.stream >= last:
                    return
        finally:
            await sub.unsubscribe()
