"""The only place subjects are spelled. Identifiers go last (NATS naming ADR-6).

Every builder validates the tokens it puts into a subject: NATS itself would happily route
``cfg.change.a.b`` or ``cfg.change.>`` and turn a bad name into a wildcard.
"""

from __future__ import annotations

import re

from confbus.schemas.names import NAME_PATTERN, check_name, check_txid

# -- changes --------------------------------------------------------------------------------
CHANGES_ALL = "cfg.change.*"


def change(namespace: str) -> str:
    return f"cfg.change.{check_name(namespace, 'namespace')}"


# The second place a change can be accepted (``CFG_CHANGES_ALT``, replicated stacks only): led
# by another server than ``CFG_CHANGES``, so a dead stream leader does not stop publishes for its
# election (docs/design.md §3.1).
CHANGES_ALT_ALL = "cfg.change-alt.*"


def change_alt(namespace: str) -> str:
    return f"cfg.change-alt.{check_name(namespace, 'namespace')}"


def change_subjects(namespace: str) -> tuple[str, str]:
    """The subjects a change of ``namespace`` may arrive on: ``CFG_CHANGES``' first."""
    return change(namespace), change_alt(namespace)


# -- events ---------------------------------------------------------------------------------
EVENTS_ALL = "cfg.event.>"


def event(namespace: str, event_type: str) -> str:
    """``cfg.event.<ns>.<type>``, where the type is the event's tag (``version.created``)."""
    return f"cfg.event.{check_name(namespace, 'namespace')}.{event_type}"


def node_applied(namespace: str, node: str) -> str:
    """``cfg.event.<ns>.node.applied.<node>``: the one event an agent writes. The node id is in
    the subject so that an agent's permissions can pin it to its own (docs/security.md)."""
    return f"{event(namespace, 'node.applied')}.{check_name(node, 'node id')}"


NODES_FORGOTTEN = "cfg.event.*.node.forgotten"  # every replica of the distributor follows it


def events_of(namespace: str) -> str:
    return f"cfg.event.{check_name(namespace, 'namespace')}.>"


# -- two-phase commit -------------------------------------------------------------------------
TXN_PREPARES = "cfg.txn.*.*.prepare"
TXN_DECISIONS = "cfg.txn.*.*.decision"
TXN_EPOCHS = "cfg.txn.*.epoch"


def txn_prepare(namespace: str, txid: str) -> str:
    return f"cfg.txn.{check_name(namespace, 'namespace')}.{check_txid(txid)}.prepare"


def txn_decision(namespace: str, txid: str) -> str:
    return f"cfg.txn.{check_name(namespace, 'namespace')}.{check_txid(txid)}.decision"


def txn_epoch(namespace: str) -> str:
    """``cfg.txn.<ns>.epoch``: the namespace's epoch markers. A coordinator that opens an epoch
    publishes one; its prepares are stored only while its marker is the subject's last
    (docs/design.md §4.1). One token shorter than a transaction's subjects, so ``txn_of``
    never matches it."""
    return f"cfg.txn.{check_name(namespace, 'namespace')}.epoch"


def txn_of(namespace: str) -> str:
    """Everything stored for a namespace's transactions (prepares and decisions)."""
    return f"cfg.txn.{check_name(namespace, 'namespace')}.*.*"


def txn_vote(namespace: str, txid: str, node: str) -> str:
    ns, tx, nd = check_name(namespace, "namespace"), check_txid(txid), check_name(node, "node id")
    return f"cfg.txn.{ns}.{tx}.vote.{nd}"


def txn_votes(namespace: str, txid: str) -> str:
    return f"cfg.txn.{check_name(namespace, 'namespace')}.{check_txid(txid)}.vote.*"


# -- nodes, health, alerts, dead letters ----------------------------------------------------------
HEARTBEATS_ALL = "cfg.node.*.heartbeat"
HEALTH_ALL = "cfg.health.*.*"
ALERTS_ALL = "cfg.alert.*"
DLQ_ALL = "cfg.dlq.*"


def heartbeat(node: str) -> str:
    return f"cfg.node.{check_name(node, 'node id')}.heartbeat"


def health(namespace: str, node: str) -> str:
    return f"cfg.health.{check_name(namespace, 'namespace')}.{check_name(node, 'node id')}"


def alert(namespace: str) -> str:
    return f"cfg.alert.{check_name(namespace, 'namespace')}"


def dlq(stream: str) -> str:
    return f"cfg.dlq.{stream}"


# -- replicas ------------------------------------------------------------------------------------
def instance_token(instance: str) -> str:
    """A replica's instance id as one subject token (KV keys, its own endpoints)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in instance)


def lease_presence(role: str, holder: str) -> str:
    """``cfg.lease.<role>.<holder>.present``: core request/reply answered by the replica
    ``holder`` of ``role`` while its connection is up; nobody answering means that connection is
    gone (docs/design.md §4.6)."""
    return f"cfg.lease.{instance_token(role)}.{instance_token(holder)}.present"


# -- request/reply APIs (nats.micro services) ---------------------------------------------------
def api(service: str, op: str) -> str:
    """``cfg.api.<service>.<op>``, e.g. ``cfg.api.store.get``."""
    return f"{api_group(service)}.{op}"


def api_group(service: str) -> str:
    return f"cfg.api.{service}"


def api_all(service: str) -> str:
    """Every subject of one service's API, ``cfg.api.<service>.>`` (for permissions)."""
    return api(service, ">")


def node_resync(node: str) -> str:
    """``cfg.node.<node>.resync``: the distributor asks a node to re-install its applied version
    (its live file drifted). Core request/reply, answered by that node's agent."""
    return f"cfg.node.{check_name(node, 'node id')}.resync"


# -- what a reader asks of the audit log ----------------------------------------------------------
_EVENTS_PREFIX = EVENTS_ALL.removesuffix(">")  # "cfg.event."
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_NAMESPACE_RE = re.compile(NAME_PATTERN)


def event_filter(text: str) -> str:
    """The subject filter a reader means (``confbus replay FILTER``, the console's timeline): a
    subject under ``cfg.event.`` (wildcards allowed), a bare namespace (``payments`` is
    ``cfg.event.payments.>``) or a namespace with a type pattern (``payments.rollout.>``).
    ``ValueError`` saying what is wrong otherwise."""
    if text.startswith("cfg."):
        if not text.startswith(_EVENTS_PREFIX):
            raise ValueError(f"{text!r}: events live under {EVENTS_ALL}")
        tokens = text.removeprefix(_EVENTS_PREFIX).split(".")
    else:
        tokens = text.split(".")
        if len(tokens) == 1 and tokens[0] not in ("*", ">"):
            return events_of(_filter_namespace(tokens[0]))
    if tokens[0] not in ("*", ">"):
        _filter_namespace(tokens[0])
    for i, token in enumerate(tokens):
        wildcard = token == "*" or (token == ">" and i == len(tokens) - 1)
        if not wildcard and not _TOKEN_RE.fullmatch(token):
            raise ValueError(f"{text!r}: bad subject token {token!r}")
    return _EVENTS_PREFIX + ".".join(tokens)


def _filter_namespace(token: str) -> str:
    if not _NAMESPACE_RE.fullmatch(token):
        raise ValueError(
            f"{token!r} is not a namespace ([a-z0-9][a-z0-9_-]{{0,63}}) nor a subject "
            f"under {EVENTS_ALL}"
        )
    return token
