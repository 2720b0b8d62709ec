"""Connecting to NATS, provisioning streams and buckets, publishing.

``Bus`` bundles the core connection, its JetStream context and the KV buckets — the one
object a service's code receives.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from confbus.runtime.codec import encode
from confbus.runtime.errors import InvalidInput, Unavailable
from confbus.runtime.urls import DEFAULT_NATS_URL, check_urls
from confbus.schemas.streams import BUCKETS, BucketSpec, StreamSpec, streams_for

log = logging.getLogger("confbus.bus")

# nats-server refuses an atomic batch of more messages than this (its default limit).
ATOMIC_BATCH_MAX = 1000
# JetStream's error code for a message larger than its stream (a KV bucket's values) allows.
_TOO_LARGE = 10054


def too_large(exc: BaseException, what: str, size: int) -> InvalidInput | None:
    """``InvalidInput`` if JetStream refused ``what`` for its size, else None. A 400 like any
    other to nats-py, but permanent: a retry sends the same bytes — so it must not be reported
    as the bus not answering, which callers retry."""
    if isinstance(exc, nats.js.errors.APIError) and exc.err_code == _TOO_LARGE:
        return InvalidInput(f"{what} is {size} bytes: more than it may hold ({exc.description})")
    return None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message of ``Bus.publish_batch``. The id is required: a refused batch is published
    again message by message, and the ids make a repeat of what did land harmless."""

    subject: str
    msg: Any  # a Struct, or bytes as they are
    msg_id: str


@dataclass
class Bus:
    nc: Client
    js: JetStreamContext
    name: str
    # What lives on the server — JetStream consumers, pull requests — may not survive a
    # reconnect (a restarted server, another node of the cluster): the readers that depend on
    # it hear of each reconnect and resume at once, instead of waiting for a heartbeat to go
    # missing.
    _reconnected: anyio.Event = field(default_factory=anyio.Event, init=False, repr=False)
    _listeners: list[Callable[[], None]] = field(default_factory=list, init=False, repr=False)
    _kvs: dict[str, KeyValue] = field(default_factory=dict, init=False, repr=False)

    def reconnected(self) -> anyio.Event:
        """The event the next reconnect sets. Take it *before* checking what it guards, then
        wait on it: a reconnect in between is not missed."""
        return self._reconnected

    def on_reconnect(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (quick, never blocking) on each reconnect; returns the way to stop."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def note_disconnected(self) -> None:
        """Called by the connection's disconnect callback (``connect``): a request in flight
        on the lost connection never hears back — its reply, if any, went to a connection that
        is gone — so fail it now, as a timeout (what every caller already treats as "unknown,
        retry"), instead of after its whole timeout (5 s for JetStream calls): after a broker
        restart, a KV write or an API call caught by the kill held a service up that long."""
        pending = getattr(self.nc, "_resp_map", None)  # nats-py's request futures, by token
        if not isinstance(pending, dict):
            return
        for future in list(pending.values()):
            if isinstance(future, asyncio.Future) and not future.done():
                future.set_exception(nats.errors.TimeoutError())

    def note_reconnected(self) -> None:
        """Called by the connection's reconnect callback (``connect``)."""
        done, self._reconnected = self._reconnected, anyio.Event()
        done.set()
        for listener in list(self._listeners):
            listener()

    async def kv(self, bucket: str) -> KeyValue:
        """The bucket's handle; looked up (a JetStream API call) once per bucket, then kept —
        a client polling a record (``wait_rollout``) asked for the stream's info before every
        read."""
        handle = self._kvs.get(bucket)
        if handle is None:
            handle = self._kvs[bucket] = await self.js.key_value(bucket)
        return handle

    async def last_msg(self, stream: str, subject: str) -> RawStreamMsg | None:
        """The stream's last message on ``subject`` (from its leader), None if it has none."""
        try:
            return await self.js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            return None
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,  # a stream electing its leader
        ) as exc:
            raise Unavailable(f"{stream} is not answering: {exc!r}") from exc

    async def publish(
        self,
        subject: str,
        msg: Any,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> nats.js.api.PubAck:
        """Publish to a stream and wait for its ack (the write is fsynced once this returns)."""
        hdrs = dict(headers or {})
        if msg_id is not None:
            hdrs["Nats-Msg-Id"] = msg_id
        data = msg if isinstance(msg, bytes) else encode(msg)
        try:
            return await self.js.publish(subject, data, timeout=timeout, headers=hdrs or None)
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            # A stream electing a leader answers 503, or with no body at all: transient.
            nats.js.errors.NoStreamResponseError,
            nats.js.errors.ServiceUnavailableError,
            nats.errors.ConnectionReconnectingError,
        ) as exc:
            raise Unavailable(f"publish to {subject} not acknowledged: {exc!r}") from exc
        except nats.js.errors.APIError as exc:  # after the 503 above: it is an APIError too
            if (refused := too_large(exc, f"the message to {subject}", len(data))) is not None:
                raise refused from exc
            raise

    async def publish_batch(
        self, items: Sequence[Outgoing], *, timeout: float = 5.0
    ) -> list[Exception | None]:
        """Publish to one stream; per item ``None`` once stored, else why not (``Unavailable``).

        Messages go as JetStream atomic batches (ADR-50): stored all or none and fsynced once
        per batch instead of once per message — the difference between ~6,000 and ~40,000
        fsynced messages/s on one disk. A batch the server refuses (a message id it has seen
        already, as a redelivery repeats; too many batches in flight) or whose ack is lost is
        published again one message at a time.
        """
        results: list[Exception | None] = [None] * len(items)
        for start in range(0, len(items), ATOMIC_BATCH_MAX):
            chunk = items[start : start + ATOMIC_BATCH_MAX]
            if len(chunk) > 1 and await self._publish_atomic(chunk, timeout):
                continue

            async def one(i: int, it: Outgoing) -> None:
                try:
                    await self.publish(it.subject, it.msg, msg_id=it.msg_id, timeout=timeout)
                except Exception as exc:  # reported per item to the caller
                    results[i] = exc

            async with anyio.create_task_group() as tg:
                for i, it in enumerate(chunk, start):
                    tg.start_soon(one, i, it)
        return results

    async def _publish_atomic(self, chunk: Sequence[Outgoing], timeout: float) -> bool:
        batch_id = secrets.token_hex(12)
        last = len(chunk)
        try:
            for seq, it in enumerate(chunk, 1):
                headers = {
                    "Nats-Batch-Id": batch_id,
                    "Nats-Batch-Sequence": str(seq),
                    "Nats-Msg-Id": it.msg_id,
                }
                data = it.msg if isinstance(it.msg, bytes) else encode(it.msg)
                if seq < last:
                    await self.nc.publish(it.subject, data, headers=headers)
                else:
                    headers["Nats-Batch-Commit"] = "1"
                    reply = await self.nc.request(it.subject, data, timeout, headers=headers)
        except (nats.errors.Error, TimeoutError) as exc:
            log.info("atomic batch not acknowledged", extra={"error": repr(exc)})
            return False
        try:
            ack = msgspec.json.decode(reply.data)
        except msgspec.DecodeError:
            ack = None
        if not isinstance(ack, dict) or "error" in ack or ack.get("count") != last:
            # Mostly a message id stored before (a redelivered change's event): the whole
            # batch is refused, so each message goes on its own and the repeat is dropped.
            log.info(
                "atomic batch refused", extra={"reply": reply.data[:200].decode(errors="replace")}
            )
            return False
        return True

    async def close(self) -> None:
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception:  # a broken connection cannot drain; close it anyway
            await self.nc.close()


_INBOX_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def connect_failure(exc: BaseException | None) -> str:
    """Why a connection attempt failed, in words (nats-py reports ``NoServersError()``; the
    cause is the last error its attempts met)."""
    if isinstance(exc, ConnectionRefusedError):
        return (
            "connection refused: no NATS server listens there (is confbus running? `confbus up` "
            "starts one; --nats-url or $CONFBUS_NATS_URL says where it is)"
        )
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc} (see --tls-ca)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return "no answer in time"
    if exc is None:
        return "no server answered"
    return str(exc) or repr(exc)


async def connect(
    urls: str | Sequence[str] = DEFAULT_NATS_URL,
    *,
    name: str,
    user: str | None = None,
    password: str | None = None,
    creds: str | None = None,
    tls_ca: str | None = None,
    connect_timeout: float = 2.0,
    max_reconnect_attempts: int = -1,
    allow_reconnect: bool = True,
    no_echo: bool = False,
    give_up_at_once: bool = False,
) -> Bus:
    """Connect with reconnect across several server URLs (forever, by default).

    ``no_echo``: the server does not hand this connection the messages it published itself
    (an agent's subscription to its own node's heartbeats wants only the others').

    ``give_up_at_once``: the first connect tries each server once, and raises ``Unavailable``
    as soon as every one has failed (a closed port: at once) — for a caller with its own retry
    loop, or one that must not wait. Otherwise it keeps trying until its deadline (about
    ``connect_timeout`` per server). Either way, once connected, reconnects follow
    ``max_reconnect_attempts``."""

    conn: list[Bus] = []
    failures: list[Exception] = []  # while connecting: what the last attempt met
    attempts = 0  # failed attempts of the first connect
    # nats-py's first connect keeps cycling through the servers (max_reconnect_attempts, and
    # even allow_reconnect=False, bound only later reconnects): a round over every server is
    # all a caller that gives up at once wants, so the failure that ends it cancels the rest.
    first_connect = anyio.CancelScope()

    async def on_error(exc: Exception) -> None:
        nonlocal attempts
        if not conn:
            failures[:] = [exc]
            attempts += 1
            if give_up_at_once and attempts >= len(servers):
                first_connect.cancel()
        log.warning("nats error", extra={"error": repr(exc)})

    async def on_disconnect() -> None:
        if conn and conn[0].nc.is_closed:
            return  # we closed it (drain, close): not news
        log.warning("nats disconnected")
        if conn:
            conn[0].note_disconnected()

    async def on_reconnect() -> None:
        log.info("nats reconnected")
        if conn:
            conn[0].note_reconnected()

    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs["user"], kwargs["password"] = user, password
        if _INBOX_SAFE.fullmatch(user):
            # Replies come to _INBOX.<user>.…: with private inboxes (confbus up --secure) no
            # other user may subscribe there, so nobody reads replies meant for someone else.
            kwargs["inbox_prefix"] = f"_INBOX.{user}"
    if creds is not None:
        kwargs["user_credentials"] = creds
    if tls_ca is not None:
        kwargs["tls"] = ssl.create_default_context(cafile=tls_ca)
    servers = check_urls(urls)
    # nats-py tries each server once within connect_timeout, but was seen to never return when
    # a server's TLS certificate fails verification: bound the whole attempt ourselves.
    deadline = connect_timeout * len(servers) + 1.0
    nc: Client | None = None
    try:
        with first_connect, anyio.move_on_after(deadline):
            nc = await nats.connect(
                servers=servers,
                name=name,
                connect_timeout=connect_timeout,
                max_reconnect_attempts=max_reconnect_attempts,
                allow_reconnect=allow_reconnect,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                no_echo=no_echo,
                **kwargs,
            )
    except (OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as exc:
        cause = exc if isinstance(exc, OSError) else (failures[0] if failures else exc)
        raise Unavailable(f"cannot reach NATS at {urls}: {connect_failure(cause)}") from exc
    if nc is None:
        why = (
            connect_failure(failures[0])
            if failures
            else "is it TLS with a certificate this client does not trust? see --tls-ca"
        )
        if first_connect.cancel_called:
            raise Unavailable(f"cannot reach NATS at {urls}: {why}") from failures[0]
        raise Unavailable(
            f"cannot reach NATS at {urls}: no connection within {deadline:g}s ({why})"
        )
    bus = Bus(nc=nc, js=nc.jetstream(), name=name)
    conn.append(bus)
    return bus


def stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        max_age=spec.max_age_s,
        max_bytes=spec.max_bytes,
        max_msgs=spec.max_msgs,
        max_msg_size=spec.max_msg_size,
        discard=DiscardPolicy(spec.discard),
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=spec.duplicate_window_s,
        max_consumers=spec.max_consumers,
        allow_atomic=spec.allow_atomic or None,
    )


def bucket_config(spec: BucketSpec, replicas: int) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=spec.name,
        description=spec.description,
        history=spec.history,
        max_bytes=spec.max_bytes,
        max_value_size=spec.max_value_size,
        ttl=spec.ttl_s or None,
        storage=StorageType.FILE,
        replicas=replicas,
    )


async def provision(
    bus: Bus,
    *,
    replicas: int = 1,
    streams: Sequence[StreamSpec] | None = None,
    buckets: Sequence[BucketSpec] = BUCKETS,
) -> None:
    """Create every stream (by default ``streams_for(replicas)``) and bucket, or bring an
    existing one to the table's limits.

    Idempotent: every service may call it at start-up, in any order, concurrently.
    """
    for spec in streams if streams is not None else streams_for(replicas):
        config = stream_config(spec, replicas)
        try:
            await bus.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Exists with other settings: update the limits (the retention cannot change).
            await bus.js.update_stream(config)
    for bspec in buckets:
        try:
            await bus.js.create_key_value(bucket_config(bspec, replicas))
        except nats.js.errors.BadRequestError:
            # Exists already (created by another service); KV settings are not updated here.
            await bus.js.key_value(bspec.name)
