"""Notifications: a JSON POST with a Slack-compatible ``text`` (and the facts as fields, for
generic receivers) to each URL of the namespace's ``policy.webhooks``, and a mail to the
policy's ``mail`` (``mail.py``), for every rollback step and every rollout outcome.

Delivery never holds up a rollback: ``Notifier.send`` only puts the message on a bounded queue
(if the queue is full the message is dropped and counted). A background task delivers each
(message, destination) in its own task — so one hanging endpoint does not delay the others —
with a per-attempt timeout and retries with exponential backoff and jitter. Attempts, retries,
deliveries, failures and drops are Prometheus metrics (``confbus_rollbacker_webhook_*``,
``confbus_rollbacker_mail_*``). Each notification carries its event's id (``event_id``; the
mail's ``Message-ID``), and an id sent once is not sent again by this replica.

URLs often carry a token (Slack's do): logs show only the scheme and host, never the path.
"""

from __future__ import annotations

import json
import logging
import random
import smtplib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlsplit

import anyio
import httpx
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from prometheus_client import Counter, Gauge, Histogram

from confbus.rollbacker import webhook_signing
from confbus.rollbacker.mail import MailError, message, send_mail, where
from confbus.runtime.metrics import Metric, ServiceMetrics
from confbus.schemas.policy import MailTarget

log = logging.getLogger("confbus.rollbacker")


@dataclass
class WebhookMetrics(ServiceMetrics):
    SERVICE = "rollbacker"

    attempts: Annotated[
        Counter,
        Metric(
            "webhook_attempts",
            "Webhook POST attempts, by result (ok, http_error, error, timeout).",
            "result",
        ),
    ]
    retries: Annotated[
        Counter, Metric("webhook_retries", "Webhook POSTs retried after a failed attempt.")
    ]
    deliveries: Annotated[
        Counter,
        Metric(
            "webhook_deliveries",
            "Webhook notifications by final outcome (delivered, failed, dropped).",
            "outcome",
        ),
    ]
    seconds: Annotated[
        Histogram, Metric("webhook_seconds", "Duration of one webhook POST attempt.")
    ]
    queued: Annotated[
        Gauge, Metric("webhook_pending", "Webhook notifications queued or being delivered.")
    ]
    mail: Annotated[
        Counter,
        Metric(
            "mail", "Mail notifications by final outcome (delivered, failed, dropped).", "outcome"
        ),
    ]


class WebhookError(Exception):
    pass


def safe_url(url: str) -> str:
    """What may be logged of a URL: scheme and host (the path may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


async def post_json(
    url: str, body: bytes, timeout: float, headers: dict[str, str] | None = None
) -> int:
    """One HTTP(S) POST (httpx; TLS verified against the system's roots); returns the status.
    Its errors are WebhookError with the URL's path left out (it may hold a token)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"not an http(s) URL: {safe_url(url)}")
    sent = {"Content-Type": "application/json", "User-Agent": "confbus-rollbacker"}
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            response = await client.post(url, content=body, headers={**sent, **(headers or {})})
    except httpx.TimeoutException as exc:
        raise TimeoutError from exc
    except httpx.HTTPError as exc:
        detail = (str(exc) or type(exc).__name__).replace(url, safe_url(url))
        raise WebhookError(detail) from exc
    return response.status_code


@dataclass
class Notification:
    urls: list[str]
    payload: dict[str, Any]
    mail: MailTarget | None = None
    subject: str = ""  # the mail's subject line

    @property
    def event_id(self) -> str:
        return str(self.payload.get("event_id", ""))

    @property
    def destinations(self) -> int:
        return len(self.urls) + (1 if self.mail is not None else 0)


SENT_IDS_KEPT = 4096  # event ids remembered as sent (bounded memory)


@dataclass
class Notifier:
    metrics: WebhookMetrics
    attempts: int = 5
    attempt_timeout_s: float = 5.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    queue_size: int = 1000
    concurrency: int = 32
    # Signs every post (confbus.rollbacker.webhook_signing) when set.
    webhook_secret: bytes | None = None
    _send: MemoryObjectSendStream[Notification] | None = field(default=None, init=False)
    _recv: MemoryObjectReceiveStream[Notification] | None = field(default=None, init=False)
    _sent: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False)

    def __post_init__(self) -> None:
        self._send, self._recv = anyio.create_memory_object_stream[Notification](self.queue_size)

    def send(
        self,
        urls: list[str],
        payload: dict[str, Any],
        *,
        mail: MailTarget | None = None,
        subject: str = "",
    ) -> None:
        """Queue a notification; never blocks, never raises. One whose ``event_id`` was sent
        already is not sent again."""
        note = Notification(list(urls), payload, mail, subject)
        if not note.destinations or self._seen(note.event_id):
            return
        assert self._send is not None
        try:
            self._send.send_nowait(note)
        except anyio.WouldBlock:
            self.metrics.deliveries.labels("dropped").inc(len(urls))
            if mail is not None:
                self.metrics.mail.labels("dropped").inc()
            log.warning("notification queue full, dropped", extra={"to": note.destinations})
            return
        self.metrics.queued.inc(note.destinations)

    def _seen(self, event_id: str) -> bool:
        if not event_id:
            return False
        if event_id in self._sent:
            return True
        self._sent[event_id] = None
        while len(self._sent) > SENT_IDS_KEPT:
            self._sent.popitem(last=False)
        return False

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
                if note.mail is not None:
                    await slots.acquire()
                    tg.start_soon(self._deliver_mail, note, slots)

    async def _deliver(self, url: str, body: bytes, slots: anyio.Semaphore) -> None:
        attempt = partial(self._attempt, url, body)
        await self._delivered(safe_url(url), attempt, self.metrics.deliveries, slots, webhook=True)

    async def _deliver_mail(self, note: Notification, slots: anyio.Semaphore) -> None:
        assert note.mail is not None
        target = note.mail
        text = str(note.payload.get("text", ""))
        details = json.dumps(note.payload, indent=2, sort_keys=True)
        msg = message(target, note.subject or text, f"{text}\n\n{details}\n", note.event_id)
        attempt = partial(self._mail, target, msg)
        await self._delivered(where(target), attempt, self.metrics.mail, slots, webhook=False)

    async def _delivered(
        self,
        dest: str,
        attempt: Callable[[], Awaitable[tuple[str, str]]],
        outcomes: Counter,
        slots: anyio.Semaphore,
        *,
        webhook: bool,
    ) -> None:
        """One destination's delivery with its retries: the final outcome counted in
        ``outcomes``; its place in the queue and its slot given back however it ends."""
        try:
            ok = await self._retried(dest, attempt, webhook)
            outcomes.labels("delivered" if ok else "failed").inc()
        finally:
            self.metrics.queued.dec()
            slots.release()

    async def _retried(
        self, dest: str, attempt: Callable[[], Awaitable[tuple[str, str]]], webhook: bool
    ) -> bool:
        for n in range(1, self.attempts + 1):
            if n > 1:
                if webhook:
                    self.metrics.retries.inc()
                ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (n - 2))
                await anyio.sleep(random.uniform(ceiling / 2, ceiling))
            result, detail = await attempt()
            if webhook:
                self.metrics.attempts.labels(result).inc()
            if result == "ok":
                return True
            log.info(
                "notification attempt failed",
                extra={"to": dest, "attempt": n, "error": detail},
            )
        log.warning("notification gave up", extra={"to": dest, "attempts": self.attempts})
        return False

    async def _attempt(self, url: str, body: bytes) -> tuple[str, str]:
        with self.metrics.seconds.time():
            try:
                headers = (
                    {}
                    if self.webhook_secret is None
                    else {webhook_signing.HEADER: webhook_signing.sign(self.webhook_secret, body)}
                )
                status = await post_json(url, body, self.attempt_timeout_s, headers)
            except TimeoutError:
                return "timeout", f"no answer within {self.attempt_timeout_s}s"
            except (OSError, WebhookError) as exc:
                return "error", str(exc) or type(exc).__name__
        if 200 <= status < 300:
            return "ok", ""
        return "http_error", f"HTTP {status}"

    async def _mail(self, target: MailTarget, msg: Any) -> tuple[str, str]:
        try:
            await send_mail(target, msg, self.attempt_timeout_s)
        except TimeoutError:
            return "timeout", f"no answer within {self.attempt_timeout_s}s"
        except (OSError, MailError, smtplib.SMTPException) as exc:
            return "error", str(exc) or type(exc).__name__
        return "ok", ""
