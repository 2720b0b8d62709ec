"""What each role may publish and subscribe to: allow-lists (what is not listed is refused by
the server) with explicit denies for what matters most, so that a later, broader allow cannot
open them by accident. The API subjects come from the operations ``confbus.schemas.api``
declares, never spelled here. ``docs/security.md`` has the matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confbus.procs.nats import quote
from confbus.schemas import subjects
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import health as health_api
from confbus.schemas.api import rollback as rollback_api
from confbus.schemas.api import store as store_api
from confbus.schemas.api import txn as txn_api
from confbus.schemas.api.operation import Operation
from confbus.schemas.names import check_name
from confbus.schemas.state import ROLLOUTS
from confbus.schemas.streams import (
    BUCKETS,
    CFG_ALERTS,
    CFG_DLQ,
    CFG_EVENTS,
    CFG_HEALTH,
    CFG_TXN,
    STREAMS,
)

AGENT_PREFIX = "agent-"

# The store's acts that record who acted, served pinned (``<op>.<user>``) beside a plain,
# self-declared twin that only confbus services may use.
PINNED_STORE_OPS = tuple(op for op in store_api.OPERATIONS if op.twin is not None)
SELF_DECLARED_STORE_OPS = tuple(op.twin for op in PINNED_STORE_OPS if op.twin is not None)
# What a CI pipeline reads from the store while it publishes and waits.
CI_STORE_READS = (
    store_api.GET,
    store_api.HISTORY,
    store_api.DRY_RUN,
    store_api.CHANGE_STATUS,
    store_api.POLICY_GET,
)
# Every other store operation an operator may use as it is (backup and restore included):
# all but the pinned ones and their self-declared twins.
OPERATOR_STORE_OPS = tuple(
    op
    for op in store_api.OPERATIONS
    if not op.pinned and op not in SELF_DECLARED_STORE_OPS and op is not store_api.PROPOSE
)
READABLE_STREAMS = (CFG_EVENTS.name, CFG_ALERTS.name, CFG_HEALTH.name, CFG_DLQ.name, CFG_TXN.name)


def _js(*tokens: str) -> str:
    return ".".join(("$JS.API", *tokens))


def _patterns(ops: Sequence[Operation[Any, Any]]) -> list[str]:
    return [op.pattern for op in ops]


def _grants(ops: Sequence[Operation[Any, Any]]) -> list[str]:
    """What allows ``ops`` (``Operation.grant``), each subject once."""
    return list(dict.fromkeys(op.grant for op in ops))


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    # May answer a request it received (once, to its reply subject), whatever that subject is.
    allow_responses: bool = False


# Writes that only confbus services make: the 2PC records and heads, versions, events, alerts,
# the shared state, and the streams themselves. Denied explicitly to every other role.
SERVICE_ONLY_WRITES = (
    subjects.CHANGES_ALL,
    subjects.CHANGES_ALT_ALL,
    subjects.TXN_PREPARES,
    subjects.TXN_DECISIONS,
    subjects.TXN_EPOCHS,
    "$KV.>",
    "cfg.alert.>",
    "cfg.dlq.>",
    _js("STREAM.CREATE.>"),
    _js("STREAM.UPDATE.>"),
    _js("STREAM.DELETE.>"),
    _js("STREAM.PURGE.>"),
    _js("STREAM.MSG.DELETE.>"),
    _js("CONSUMER.DELETE.>"),
    _js("CONSUMER.DURABLE.CREATE.>"),
)


def inbox(user: str, private: bool) -> str:
    """Where replies to this user arrive. ``_INBOX.>`` is what nats-py uses by default; with
    ``private`` the user's client must connect with ``inbox_prefix="_INBOX.<user>"`` and then
    no other user can subscribe to its replies (see docs/security.md)."""
    return f"_INBOX.{user}.>" if private else "_INBOX.>"


def service_permissions() -> Permissions:
    return Permissions(
        publish=(">",),
        subscribe=(">",),
        # A service has no business speaking for a node.
        publish_deny=("cfg.txn.*.*.vote.*", subjects.HEARTBEATS_ALL),
    )


def _stream_reads(stream: str) -> list[str]:
    """Read a stream with an ordered (ephemeral push) consumer and direct/message gets."""
    return [
        _js("STREAM.INFO", stream),
        # Exactly this subject: an ephemeral consumer. Named and durable ones have longer
        # subjects, which stay refused.
        _js("CONSUMER.CREATE", stream),
        _js("CONSUMER.INFO", stream, "*"),
        _js("STREAM.MSG.GET", stream),
        f"$JS.FC.{stream}.>",  # flow-control answers of the ordered consumer
    ]


def _kv_reads(bucket: str, keys: str = ">") -> list[str]:
    stream = f"KV_{bucket}"
    return [
        _js("STREAM.INFO", stream),
        _js("STREAM.MSG.GET", stream),
        _js("DIRECT.GET", stream, f"$KV.{bucket}.{keys}"),
    ]


def operator_permissions(user: str, *, private_inbox: bool = False) -> Permissions:
    publish: list[str] = [_js("INFO"), _js("STREAM.NAMES"), _js("STREAM.LIST")]
    for spec in STREAMS:
        if spec.name in READABLE_STREAMS:
            publish += _stream_reads(spec.name)
    for bucket in BUCKETS:
        publish += _kv_reads(bucket.name)
    # Backup and restore page through a replica's own operation, export_<replica>: the grant
    # is every one-token store subject, with the self-declared acts denied below.
    publish += _grants(OPERATOR_STORE_OPS)
    # The acts that record who acted, and changes of any namespace: as this operator only.
    publish += [op.pattern_for(user) for op in (*PINNED_STORE_OPS, store_api.PROPOSE)]
    publish += [
        txn_api.IN_DOUBT.pattern,
        txn_api.RESOLVE.pattern,
        subjects.api_all(dist_api.SERVICE),
        subjects.api_all(health_api.SERVICE),
        subjects.api_all(rollback_api.SERVICE),
        "$SRV.>",  # discovery: PING, INFO, STATS
    ]
    return Permissions(
        publish=tuple(publish),
        subscribe=(
            inbox(user, private_inbox),
            "cfg.event.>",
            "cfg.alert.>",
            subjects.HEARTBEATS_ALL,
            subjects.HEALTH_ALL,
        ),
        publish_deny=(
            *SERVICE_ONLY_WRITES,
            "cfg.event.>",
            "cfg.txn.>",
            "cfg.node.>",
            "cfg.health.>",
            # Acts that record an actor: only with the operator's own name in the subject.
            *_patterns(SELF_DECLARED_STORE_OPS),
            txn_api.SWITCH.pattern,
        ),
    )


def ci_permissions(
    user: str, namespaces: Sequence[str] | None = None, *, private_inbox: bool = False
) -> Permissions:
    # Changes of its namespaces (all, if none are given), authored by this pipeline.
    propose = [store_api.PROPOSE.as_user(user, ns).address for ns in namespaces or ()]
    publish = [*(propose or [store_api.PROPOSE.pattern_for(user)]), *_grants(CI_STORE_READS)]
    publish += [dist_api.STATUS.pattern, dist_api.ROLLOUT.pattern]
    publish += _stream_reads(CFG_EVENTS.name)
    publish += _kv_reads("CFG_STATE", ROLLOUTS)
    return Permissions(
        publish=tuple(publish),
        subscribe=(
            inbox(user, private_inbox),
            *(f"cfg.event.{ns}.>" for ns in namespaces or ["*"]),
        ),
        publish_deny=(
            *SERVICE_ONLY_WRITES,
            "cfg.event.>",
            "cfg.txn.>",
            "cfg.node.>",
            "cfg.health.>",
            *_patterns(SELF_DECLARED_STORE_OPS),
            subjects.api_all(txn_api.SERVICE),
            subjects.api_all(rollback_api.SERVICE),
        ),
    )


def agent_user(node: str) -> str:
    return f"{AGENT_PREFIX}{check_name(node, 'node id')}"


def agent_permissions(node: str, *, private_inbox: bool = False) -> Permissions:
    check_name(node, "node id")
    return Permissions(
        publish=(
            f"cfg.txn.*.*.vote.{node}",
            subjects.heartbeat(node),
            f"cfg.health.*.{node}",
            # The one event an agent writes, with its own node id in the subject.
            f"cfg.event.*.node.applied.{node}",
            txn_api.RESOLVE.pattern,
            store_api.GET.pattern,
            store_api.POLICY_GET.pattern,
            *_stream_reads(CFG_TXN.name),
        ),
        subscribe=(
            inbox(agent_user(node), private_inbox),
            subjects.node_resync(node),
            # Its own node's heartbeats: a second agent with the same node id is told apart
            # and refused (confbus.agent.instance).
            subjects.heartbeat(node),
            "cfg.event.*.version.last_good",
        ),
        publish_deny=(
            *SERVICE_ONLY_WRITES,
            store_api.PROPOSE.pattern,
            *_patterns(SELF_DECLARED_STORE_OPS),
            txn_api.SWITCH.pattern,
        ),
        allow_responses=True,  # the distributor's re-sync requests
    )


def render_permissions(p: Permissions) -> str:
    """``p`` as the ``permissions`` value of a user in nats-server's config."""
    publish = f"allow: {_list(p.publish)}"
    if p.publish_deny:
        publish += f", deny: {_list(p.publish_deny)}"
    subscribe = f"allow: {_list(p.subscribe)}"
    if p.subscribe_deny:
        subscribe += f", deny: {_list(p.subscribe_deny)}"
    parts = [f"publish: {{{publish}}}", f"subscribe: {{{subscribe}}}"]
    if p.allow_responses:
        parts.append("allow_responses: true")
    return "{" + ", ".join(parts) + "}"


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(quote(i) for i in items) + "]"
