"""Webhook notifications: a JSON POST with a Slack-compatible ``text`` to each URL of the
namespace's ``policy.webhooks``, for rollback started / batch / completed / stuck.

Delivery never holds up a rollback: ``Notifier.send`` only puts the message on a bounded queue
(if the queue is full the message is dropped and counted). A background task delivers each
(message, URL) in its own task — so one hanging endpoint does not delay the others — with a
per-attempt timeout and retries with exponential backoff and jitter. Attempts, retries,
deliveries, failures and drops are Prometheus metrics (``confbus_rollbacker_webhook_*``).

URLs often carry a token (Slack's do): logs show only the scheme and host, never the path.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("confbus.rollbacker")

MAX_RESPONSE_BYTES = 64 * 1024


@dataclass
class WebhookMetrics:
    attempts: Counter
    retries: Counter
    deliveries: Counter
    seconds: Histogram
    queued: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WebhookMetrics:
        return cls(
            attempts=Counter(
                "confbus_rollbacker_webhook_attempts",
                "Webhook POST attempts, by result (ok, http_error, error, timeout).",
                ["result"],
                registry=registry,
            ),
            retries=Counter(
                "confbus_rollbacker_webhook_retries",
                "Webhook POSTs retried after a failed attempt.",
                registry=registry,
            ),
            deliveries=Counter(
                "confbus_rollbacker_webhook_deliveries",
                "Webhook notifications by final outcome (delivered, failed, dropped).",
                ["outcome"],
                registry=registry,
            ),
            seconds=Histogram(
                "confbus_rollbacker_webhook_seconds",
                "Duration of one webhook POST attempt.",
                registry=registry,
            ),
            queued=Gauge(
                "confbus_rollbacker_webhook_pending",
                "Webhook notifications queued or being delivered.",
                registry=registry,
            ),
        )


class WebhookError(Exception):
    pass


def safe_url(url: str) -> str:
    """What may be logged of a URL: scheme and host (the path may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


async def post_json(url: str, body: bytes, timeout: float) -> int:
    """One HTTP(S) POST with ``Connection: close``; returns the status code."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"not an http(s) URL: {safe_url(url)}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.hostname + (f":{parts.port}" if parts.port else "")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nUser-Agent: confbus-rollbacker\r\n"
        "Connection: close\r\n\r\n"
    )
    with anyio.fail_after(timeout):
        stream: anyio.abc.ByteStream
        if tls:
            stream = await anyio.connect_tcp(
                parts.hostname,
                port,
                ssl_context=ssl.create_default_context(),
                tls_hostname=parts.hostname,
            )
        else:
            stream = await anyio.connect_tcp(parts.hostname, port)
        async with stream:
            await stream.send(head.encode("latin-1") + body)
            data = b""
            try:
                while b"\r\n" not in data and len(data) < MAX_RESPONSE_BYTES:
                    data += await stream.receive(4096)
            except anyio.EndOfStream:
                pass
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    try:
        return int(status_line.split(" ")[1])
    except (IndexError, ValueError) as exc:
        raise WebhookError(f"malformed response: {status_line[:80]!r}") from exc


@dataclass
class Notification:
    urls: list[str]
    payload: dict[str, Any]


@dataclass
class Notifier:
    metrics: WebhookMetrics
    attempts: int = 5
    attempt_timeout_s: float = 5.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    queue_size: int = 1000
    concurrency: int = 32
    _send: MemoryObjectSendStream[Notification] | None = field(default=None, init=False)
    _recv: MemoryObjectReceiveStream[Notification] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._send, self._recv = anyio.create_memory_object_stream[Notification](self.queue_size)

    def send(self, urls: list[str], payload: dict[str, Any]) -> None:
        """Queue a notification; never blocks, never raises."""
        if not urls:
            return
        assert self._send is not None
        try:
            self._send.send_nowait(Notification(list(urls), payload))
        except anyio.WouldBlock:
            self.metrics.deliveries.labels("dropped").inc(len(urls))
            log.warning("webhook queue full, notification dropped", extra={"urls": len(urls)})
            return
        self.metrics.queued.inc(len(urls))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        assert self._recv is not None
        # At most ``concurrency`` deliveries in flight; beyond that the queue fills up and new
        # notifications are dropped (counted), so memory stays bounded whatever the endpoints do.
        slots = anyio.Semaphore(self.concurrency)
        async with anyio.create_task_group() as tg:
            task_status.started()
            async for note in self._recv:
                body = json.dumps(note.payload).encode()
                for url in note.urls:
                    await slots.acquire()
                    tg.start_soon(self._deliver, url, body, slots)

    async def _deliver(self, url: str, body: bytes, slots: anyio.Semaphore) -> None:
        try:
            for attempt in range(1, self.attempts + 1):
                if attempt > 1:
                    self.metrics.retries.inc()
                    ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 2))
                    await anyio.sleep(random.uniform(ceiling / 2, ceiling))
                result, detail = await self._attempt(url, body)
                self.metrics.attempts.labels(result).inc()
                if result == "ok":
                    self.metrics.deliveries.labels("delivered").inc()
                    return
                log.info(
                    "webhook attempt failed",
                    extra={"url": safe_url(url), "attempt": attempt, "error": detail},
                )
            self.metrics.deliveries.labels("failed").inc()
            log.warning("webhook gave up", extra={"url": safe_url(url), "attempts": self.attempts})
        finally:
            self.metrics.queued.dec()
            slots.release()

    async def _attempt(self, url: str, body: bytes) -> tuple[str, str]:
        with self.metrics.seconds.time():
            try:
                status = await post_json(url, body, self.attempt_timeout_s)
            except TimeoutError:
                return "timeout", f"no answer within {self.attempt_timeout_s}s"
            except (OSError, WebhookError, anyio.BrokenResourceError, ssl.SSLError) as exc:
                return "error", str(exc) or type(exc).__name__
        if 200 <= status < 300:
            return "ok", ""
        return "http_error", f"HTTP {status}"
