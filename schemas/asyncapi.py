"""The AsyncAPI 3.0 document of confbus: every subject, message, stream and operation, made from
the declarations in ``schemas/`` — the contract an agent or a client in another language is
written from.

``python -m confbus.schemas.export`` writes it to ``schemas/asyncapi.json`` (beside the JSON
Schema snapshot); a test fails when the file differs from what the Structs, subjects and
operations say, and another validates it against the official AsyncAPI 3.0.0 JSON Schema.

The document speaks for the confbus services (``DESCRIPTION`` says how to read it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from confbus.schemas import changes, dlq, events, health, node, streams, txn
from confbus.schemas.api import ApiError, catalog
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api.operation import REPLICA, Operation
from confbus.schemas.base import SCHEMA_VERSION

OUT = Path(__file__).parent / "asyncapi.json"

DESCRIPTION = (
    "Configuration infrastructure over NATS JetStream. This document speaks for the confbus "
    "services (version-store, coordinator, distributor, health-watcher, rollbacker): `receive` "
    "is what they answer or consume, `send` what they publish. Each channel says who publishes "
    "on it and who reads it (`x-published-by`, `x-read-by`): agents, CI and operators are the "
    "other side. A request to `cfg.api.*` is answered within its operation's `x-deadline`, or "
    "with an `ApiError` and the `Nats-Service-Error-Code` header. Streams and KV buckets, for "
    "which AsyncAPI has no object, are listed under `x-streams` and `x-kv-buckets`."
)

SCHEMAS = "#/components/schemas/"
MESSAGES = "#/components/messages/"
QUEUE_GROUP = "q"  # nats.micro's: replicas of a service split its requests

# Who runs each cfg.api service.
SERVICE_OWNERS = {
    "store": "version-store",
    "txn": "coordinator",
    "dist": "distributor",
    "health": "health-watcher",
    "rollback": "rollbacker",
}
PARAMETERS = {
    "namespace": "a namespace: [a-z0-9][a-z0-9_-]{0,63}",
    "node": "a node id: [a-z0-9][a-z0-9_-]{0,63}",
    "txid": "a transaction id: [a-z0-9][a-z0-9_-]{0,63}",
    "identity": "the caller's NATS user, pinned by the server's permissions",
    "replica": "the token of the replica that answers (from an earlier reply)",
    "stream": "the stream the dead letter comes from",
}


@dataclass(frozen=True)
class Channel:
    """One subject (family) and what travels on it."""

    key: str
    address: str
    messages: Sequence[type[msgspec.Struct]]
    action: str  # the services' side: "send" or "receive"
    published_by: Sequence[str]
    read_by: Sequence[str]
    description: str
    stream: str | None = None
    reply: Sequence[type[msgspec.Struct]] = ()
    headers: dict[str, str] | None = None  # header → what it holds


def _event_channels() -> list[Channel]:
    out = []
    for ev in _members(events.AnyEvent):
        tag = _tag(ev)
        applied = ev is events.NodeApplied
        out.append(
            Channel(
                key=f"event.{tag}",
                address=f"cfg.event.{{namespace}}.{tag}" + (".{node}" if applied else ""),
                messages=[ev],
                action="receive" if applied else "send",
                published_by=["agent"] if applied else ["confbus services"],
                read_by=["confbus services", "clients"],
                description=_doc(ev) or f"The audit event {tag}.",
                stream=streams.CFG_EVENTS.name,
                headers={"Nats-Msg-Id": "an idempotency key: a repeat is dropped by the stream"},
            )
        )
    return out


def channels() -> list[Channel]:
    """Every subject family outside ``cfg.api``, in the order of the message flow."""
    return [
        Channel(
            "change",
            "cfg.change.{namespace}",
            [changes.ChangeProposed],
            "receive",
            ["CI", "operators", "rollbacker"],
            ["version-store"],
            "A change proposed as the next version of a namespace.",
            streams.CFG_CHANGES.name,
            headers={"Nats-Msg-Id": "<namespace>:<change_id>: a retried publish is dropped"},
        ),
        *_event_channels(),
        Channel(
            "txn.epoch",
            "cfg.txn.{namespace}.epoch",
            [txn.EpochMarker],
            "send",
            ["coordinator"],
            ["coordinator"],
            "An epoch of the namespace is open; only its leader's prepares are stored now.",
            streams.CFG_TXN.name,
            headers={
                "Nats-Expected-Last-Subject-Sequence": "the last marker's sequence: markers only"
                " go up"
            },
        ),
        Channel(
            "txn.prepare",
            "cfg.txn.{namespace}.{txid}.prepare",
            [txn.Prepare],
            "send",
            ["coordinator"],
            ["agent"],
            "Phase 1 of a switch: stage this content and vote.",
            streams.CFG_TXN.name,
            headers={
                "Nats-Msg-Id": "<txid>:prepare: a retried publish is dropped",
                "Nats-Expected-Last-Subject-Sequence": "the sequence of its epoch's marker",
                "Nats-Expected-Last-Subject-Sequence-Subject": "cfg.txn.<namespace>.epoch: a"
                " prepare of an older epoch is refused by the stream",
            },
        ),
        Channel(
            "txn.vote",
            "cfg.txn.{namespace}.{txid}.vote.{node}",
            [txn.Vote],
            "receive",
            ["agent"],
            ["coordinator"],
            "A participant's vote, answered with an acknowledgement (core request/reply).",
            reply=[txn.VoteAck],
        ),
        Channel(
            "txn.decision",
            "cfg.txn.{namespace}.{txid}.decision",
            [txn.Decision],
            "send",
            ["coordinator"],
            ["agent"],
            "Phase 2: the write-once decision (commit or abort) of a transaction.",
            streams.CFG_TXN.name,
        ),
        Channel(
            "node.heartbeat",
            "cfg.node.{node}.heartbeat",
            [node.Heartbeat],
            "receive",
            ["agent"],
            ["distributor", "health-watcher"],
            "A node's heartbeat: its labels and, per namespace, what it runs (core NATS).",
        ),
        Channel(
            "node.resync",
            "cfg.node.{node}.resync",
            [dist_api.ResyncRequest],
            "send",
            ["distributor"],
            ["agent"],
            "Re-install the applied version whose live file drifted (core request/reply).",
            reply=[dist_api.ResyncReply],
        ),
        Channel(
            "health",
            "cfg.health.{namespace}.{node}",
            [health.HealthSample],
            "receive",
            ["agent"],
            ["health-watcher"],
            "A health sample of a node's application.",
            streams.CFG_HEALTH.name,
        ),
        Channel(
            "alert",
            "cfg.alert.{namespace}",
            [health.Alert],
            "send",
            ["health-watcher", "distributor", "rollbacker"],
            ["rollbacker", "clients"],
            "An alert (firing or resolved) that may start a rollback.",
            streams.CFG_ALERTS.name,
            headers={"Nats-Msg-Id": "the alert id: a repeat is dropped by the stream"},
        ),
        Channel(
            "dlq",
            "cfg.dlq.{stream}",
            [dlq.DeadLetter],
            "send",
            ["confbus services"],
            ["operators"],
            "A message that can never succeed, with the reason (a change keeps only a hash).",
            streams.CFG_DLQ.name,
        ),
    ]


# -- cfg.api operations --------------------------------------------------------------------------


def _api_address(op: Operation[Any, Any]) -> str:
    names = iter([*op.scope, "identity"])
    tokens = [f"{{{next(names)}}}" if t == "*" else t for t in op.pattern.split(".")]
    address = ".".join(tokens)
    # A per-replica operation's pattern has ``<name>_*``: the replica's token.
    return address.replace("_*", "_" + REPLICA) if op.per_replica else address


def _api_channel(op: Operation[Any, Any]) -> Channel:
    owner = SERVICE_OWNERS[op.service]
    return Channel(
        key=f"api.{op.service}.{op.name.replace(REPLICA, 'replica')}",
        address=_api_address(op),
        messages=[op.request],
        action="receive",
        published_by=["clients", "confbus services"],
        read_by=[owner],
        description=op.summary,
        reply=[op.reply, ApiError],
    )


# -- the document --------------------------------------------------------------------------------


def _members(union: Any) -> list[type[msgspec.Struct]]:
    args = getattr(union, "__args__", None)
    return list(args) if args else [union]


def _tag(struct: type[msgspec.Struct]) -> str:
    tag = struct.__struct_config__.tag
    assert isinstance(tag, str), struct
    return tag


def _doc(struct: type) -> str:
    return " ".join((struct.__doc__ or "").split())


def _parameters(address: str) -> dict[str, Any]:
    names = [part.split("}")[0] for part in address.split("{")[1:]]
    return {name: {"description": PARAMETERS[name]} for name in names}


def _message(struct: type[msgspec.Struct], headers: dict[str, str] | None) -> dict[str, Any]:
    tag = struct.__struct_config__.tag
    msg: dict[str, Any] = {
        "name": tag if isinstance(tag, str) else struct.__name__,
        "title": struct.__name__,
        "contentType": "application/json",
        "payload": {"$ref": SCHEMAS + struct.__name__},
    }
    if doc := _doc(struct):
        msg["summary"] = doc
    if struct is ApiError:
        headers = {
            "Nats-Service-Error": "the error's message (at most 200 characters)",
            "Nats-Service-Error-Code": "400 invalid, 403 forbidden, 404 not found, "
            "409 conflict, 503 unavailable (retry), 500",
        }
    if headers:
        msg["headers"] = {
            "type": "object",
            "properties": {k: {"type": "string", "description": v} for k, v in headers.items()},
        }
    return msg


def _channel_object(ch: Channel, messages: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "address": ch.address,
        "description": ch.description,
        "messages": {t.__name__: {"$ref": MESSAGES + t.__name__} for t in ch.messages},
        "x-published-by": list(ch.published_by),
        "x-read-by": list(ch.read_by),
    }
    if params := _parameters(ch.address):
        obj["parameters"] = params
    if ch.stream:
        obj["x-stream"] = ch.stream
    for t in (*ch.messages, *ch.reply):
        messages.setdefault(t.__name__, _message(t, ch.headers if t in ch.messages else None))
    return obj


def _reply_channel(ch: Channel) -> dict[str, Any]:
    return {
        "address": None,  # the requester's inbox, named per request by NATS
        "description": f"The reply to {ch.address}.",
        "messages": {t.__name__: {"$ref": MESSAGES + t.__name__} for t in ch.reply},
    }


def _operation(ch: Channel, op: Operation[Any, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "action": ch.action,
        "channel": {"$ref": f"#/channels/{ch.key}"},
        "summary": ch.description,
        "messages": [{"$ref": f"#/channels/{ch.key}/messages/{t.__name__}"} for t in ch.messages],
    }
    if ch.reply:
        reply_key = f"{ch.key}.reply"
        obj["reply"] = {
            "channel": {"$ref": f"#/channels/{reply_key}"},
            "messages": [
                {"$ref": f"#/channels/{reply_key}/messages/{t.__name__}"} for t in ch.reply
            ],
        }
    if op is not None:
        obj["bindings"] = {"nats": {"queue": QUEUE_GROUP, "bindingVersion": "0.1.0"}}
        obj["x-deadline"] = op.deadline.describe()
        obj["x-acts"] = op.acts
        obj["x-endpoint"] = op.name
        if op.twin is not None:
            obj["x-self-declared-twin"] = f"{op.service}.{op.twin.name}"
    return obj


def _schemas(types: Iterable[type]) -> dict[str, Any]:
    unique = sorted(set(types), key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(unique, ref_template=SCHEMAS + "{name}")
    converted: dict[str, Any] = _asyncapi_schema(components)
    return converted


def _asyncapi_schema(node: Any) -> Any:
    """msgspec's JSON Schema as an AsyncAPI Schema Object: a tagged union's discriminator is
    the tag's property name there (msgspec writes OpenAPI's object, with a mapping that the
    ``const`` of each member's tag already says)."""
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _asyncapi_schema(v) for k, v in node.items()}
    disc = out.get("discriminator")
    if isinstance(disc, dict):
        out["discriminator"] = disc["propertyName"]
    return out


# What the document says of each stream and bucket (``streams.py`` holds the rest).
_STREAM_FIELDS = (
    "subjects",
    "retention",
    "max_age_s",
    "max_bytes",
    "max_msg_size",
    "duplicate_window_s",
    "discard",
    "description",
)
_BUCKET_FIELDS = ("history", "max_bytes", "max_value_size", "ttl_s", "description")


def _limits(
    specs: Iterable[streams.StreamSpec | streams.BucketSpec], fields: Sequence[str]
) -> dict[str, Any]:
    """Each stream or bucket by name, with ``fields`` as JSON values."""
    return {s.name: {f: msgspec.to_builtins(getattr(s, f)) for f in fields} for s in specs}


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as JSON data."""
    plain = [(ch, None) for ch in channels()]
    api = [(_api_channel(op), op) for op in catalog.every_operation()]
    messages: dict[str, Any] = {}
    channel_objects: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for ch, op in [*plain, *api]:
        channel_objects[ch.key] = _channel_object(ch, messages)
        if ch.reply:
            channel_objects[f"{ch.key}.reply"] = _reply_channel(ch)
        operations[ch.key] = _operation(ch, op)
    types = [t for ch, _ in [*plain, *api] for t in (*ch.messages, *ch.reply)]
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "confbus",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "the nats-server of `confbus up`",
            }
        },
        "channels": channel_objects,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": _schemas([*types, txn.TxnHead, dist_api.RolloutInfo]),
        },
        "x-streams": _limits(streams.STREAMS, _STREAM_FIELDS),
        "x-kv-buckets": _limits(streams.BUCKETS, _BUCKET_FIELDS),
    }


def text() -> str:
    """The exact text ``schemas/asyncapi.json`` must hold."""
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(out: Path = OUT) -> Path:
    out.write_text(text())
    return out
