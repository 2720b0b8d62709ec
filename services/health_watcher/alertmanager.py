"""The Alertmanager webhook receiver: ``POST /alertmanager`` on ``--alertmanager-port``.

Accepts Alertmanager's webhook JSON (``version: "4"``; Grafana's webhook has the same fields)
and turns each alert into a confbus ``Alert`` on ``cfg.alert.<ns>``:

- namespace: label ``confbus_namespace`` (or ``namespace``) — it must be a namespace confbus
  knows (the version-store's list, or one an agent follows);
- version: label ``confbus_version`` (optional; none means "whatever the namespace runs");
- node: label ``confbus_node`` (or ``node``), when it is a valid node id;
- ``alert_id``: ``am:<fingerprint>:<startsAt, unix seconds>`` (fingerprint: Alertmanager's,
  or a hash of the labels when absent) — Alertmanager re-sends a firing group every
  ``repeat_interval``; the same alert keeps its id and rolls back at most once;
- state: the alert's ``status`` (firing / resolved); rule: ``alertname``; summary: the
  ``summary`` (or ``description``) annotation; value / threshold: the ``value`` / ``threshold``
  annotations when they are numbers.

All or nothing: the whole body is checked before anything is published. Answers: 200 with the
alert ids; 400 for a body that is not a webhook (with msgspec's path); 422 for a webhook whose
alert names no namespace, a malformed one, or one confbus does not know; 503 when the bus or the
version-store cannot be reached — Alertmanager retries, and the ids make the retry harmless.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import msgspec
import nats.errors

from confbus.health_watcher.metrics import WatcherMetrics
from confbus.health_watcher.policies import Catalog
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError
from confbus.runtime.http import Request, Response
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.health import Alert
from confbus.schemas.names import NAME_PATTERN

log = logging.getLogger("confbus.health_watcher.alertmanager")

PATH = "/alertmanager"
NAMESPACE_LABELS = ("confbus_namespace", "namespace")
NODE_LABELS = ("confbus_node", "node")
VERSION_LABEL = "confbus_version"
_NAME_RE = re.compile(NAME_PATTERN)
_VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")


class AmAlert(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    starts_at: datetime
    ends_at: datetime | None = None
    generator_url: str = msgspec.field(default="", name="generatorURL")
    fingerprint: str = ""


class AmWebhook(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    version: str
    status: Literal["firing", "resolved"] = "firing"
    receiver: str = ""
    group_key: str = ""
    truncated_alerts: int = 0
    group_labels: dict[str, str] = {}
    common_labels: dict[str, str] = {}
    common_annotations: dict[str, str] = {}
    external_url: str = msgspec.field(default="", name="externalURL")
    alerts: list[AmAlert]


_decode_webhook = msgspec.json.Decoder(AmWebhook).decode


class Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _label(labels: dict[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        if name in labels:
            return name, labels[name]
    return None


def fingerprint_of(alert: AmAlert) -> str:
    if alert.fingerprint:
        return alert.fingerprint
    canonical = json.dumps(sorted(alert.labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def to_alert(i: int, am: AmAlert) -> Alert:
    """The confbus alert for one webhook alert; ``Rejected`` (422) says what is wrong with it."""
    where = f"alerts[{i}]"
    found = _label(am.labels, NAMESPACE_LABELS)
    if found is None:
        raise Rejected(
            422,
            f"{where} has no confbus_namespace (or namespace) label: "
            "confbus cannot tell which namespace it concerns",
        )
    label, namespace = found
    if not _NAME_RE.fullmatch(namespace):
        raise Rejected(
            422,
            f"{where}: label {label}={namespace!r} is not a confbus namespace "
            "([a-z0-9][a-z0-9_-]{0,63})",
        )
    version: int | None = None
    if VERSION_LABEL in am.labels:
        raw = am.labels[VERSION_LABEL]
        if not _VERSION_RE.fullmatch(raw):
            raise Rejected(
                422, f"{where}: label {VERSION_LABEL}={raw!r} is not a version number (1, 2, …)"
            )
        version = int(raw)
    node = _label(am.labels, NODE_LABELS)
    nodes = [node[1]] if node is not None and _NAME_RE.fullmatch(node[1]) else []
    starts = am.starts_at if am.starts_at.tzinfo else am.starts_at.replace(tzinfo=UTC)
    return Alert(
        alert_id=f"am:{fingerprint_of(am)}:{int(starts.timestamp())}",
        namespace=namespace,
        version=version,
        state=am.status,
        rule=am.labels.get("alertname", ""),
        value=_number(am.annotations.get("value")),
        threshold=_number(am.annotations.get("threshold")),
        nodes=nodes,
        source="alertmanager",
        summary=(am.annotations.get("summary") or am.annotations.get("description") or "")[:1000],
    )


def decode(body: bytes) -> list[Alert]:
    """Raise ``Rejected`` (400 or 422) for a body that cannot be accepted as a whole."""
    if not body.strip():
        raise Rejected(400, "empty body: expected an Alertmanager webhook (JSON)")
    try:
        hook = _decode_webhook(body)
    except DECODE_ERRORS as exc:
        raise Rejected(400, f"not an Alertmanager webhook: {exc}") from None
    return [to_alert(i, a) for i, a in enumerate(hook.alerts)]


def _json(status: int, payload: dict[str, object]) -> Response:
    return Response(status, json.dumps(payload).encode())


def _authorized(req: Request, token: str) -> bool:
    scheme, _, given = req.headers.get("authorization", "").partition(" ")
    # Constant time: the comparison must not tell how much of a guess was right.
    expected = token.encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)


@dataclass
class Receiver:
    bus: Bus
    catalog: Catalog
    metrics: WatcherMetrics
    # Alerts start rollbacks: with a token, only a caller presenting it is heard
    # (Alertmanager's ``http_config.authorization: {credentials_file: …}`` sends it).
    token: str | None = None

    async def handle(self, req: Request) -> Response:
        resp = await self._handle(req)
        self.metrics.receiver_requests.labels(str(resp.status)).inc()
        return resp

    async def _handle(self, req: Request) -> Response:
        if self.token is not None and not _authorized(req, self.token):
            log.warning("webhook refused: no valid bearer token")
            return _json(401, {"error": "a bearer token is required (Authorization: Bearer …)"})
        try:
            alerts = decode(req.body)
            for ns in sorted({a.namespace for a in alerts}):
                known = await self.catalog.exists(ns)
                if known is None:
                    raise Rejected(
                        503, f"cannot check namespace {ns!r}: the version-store is unreachable"
                    )
                if not known:
                    raise Rejected(422, f"unknown namespace {ns!r}: confbus has no such namespace")
        except Rejected as exc:
            if exc.status < 500:
                log.info("webhook refused", extra={"status": exc.status, "reason": exc.message})
            return _json(exc.status, {"error": exc.message})
        ids = []
        for alert in alerts:
            msg_id = alert.alert_id if alert.state == "firing" else f"{alert.alert_id}:resolved"
            try:
                ack = await self.bus.publish(subjects.alert(alert.namespace), alert, msg_id=msg_id)
            except (ConfbusError, nats.errors.Error) as exc:
                # Alertmanager retries a 5xx; what was published already dedupes by its id.
                return _json(503, {"error": f"could not publish alert {alert.alert_id}: {exc}"})
            if not ack.duplicate:
                self.metrics.alerts.labels(alert.state, "alertmanager").inc()
            ids.append(alert.alert_id)
        return _json(200, {"accepted": len(ids), "alert_ids": ids})
