"""The table of streams and KV buckets (docs/design.md §2.1), provisioned idempotently at start-up.

Every stream and bucket has explicit limits: nothing grows without bound (invariant 7).
``replicas`` is 1 for the embedded stack and 3 for ``confbus up --ha``; the table holds the
rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from confbus.schemas import subjects

MIB = 1024 * 1024
GIB = 1024 * MIB
HOUR = 3600.0
DAY = 24 * HOUR

# A 1 MiB config grows by a third as base64 inside JSON; leave room for metadata.
MAX_PAYLOAD = 4 * MIB


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: Literal["limits", "workqueue", "interest"]
    max_age_s: float
    max_bytes: int
    max_msg_size: int
    duplicate_window_s: float = 120.0
    discard: Literal["old", "new"] = "old"
    max_msgs: int = -1
    description: str = ""
    # nats-server 2.15 caps every stream at 1000 consumers unless the stream says otherwise
    # (and reads -1 as "the default"), so the limit is always explicit.
    max_consumers: int = 10_000
    # Atomic batch publish (nats-server ≥ 2.12, ADR-50): a batch is stored all or nothing and
    # fsynced once — the group commit of a service that emits many events at a time.
    allow_atomic: bool = True


@dataclass(frozen=True)
class BucketSpec:
    name: str
    history: int
    max_bytes: int
    max_value_size: int
    description: str = ""
    # Seconds a key lives after its last write; 0 keeps it until the bucket's byte limit.
    ttl_s: float = 0.0


CFG_CHANGES = StreamSpec(
    name="CFG_CHANGES",
    subjects=(subjects.CHANGES_ALL,),
    retention="workqueue",
    max_age_s=7 * DAY,
    max_bytes=1 * GIB,
    max_msg_size=MAX_PAYLOAD,
    # A CI job retried within the hour is a no-op for the stream; beyond it the store's
    # (namespace, change id) key still maps it to the same version.
    duplicate_window_s=1 * HOUR,
    # Refuse new changes rather than silently dropping accepted-but-unprocessed ones.
    discard="new",
    description="change proposals from CI and operators",
)
# The second place a change can be accepted, in a replicated stack only (one server has no other
# leader to offer): publishers go to it when CFG_CHANGES has not acked within half a second, and
# the version-store consumes both, its store mapping a change id to one version whichever stream
# it came through. The version-store keeps its leader, and its consumer's, off the servers that
# lead CFG_CHANGES and its consumer (docs/design.md §3.1).
CFG_CHANGES_ALT = replace(
    CFG_CHANGES,
    name="CFG_CHANGES_ALT",
    subjects=(subjects.CHANGES_ALT_ALL,),
    description="change proposals that CFG_CHANGES did not take in time (replicated stacks)",
)
CFG_TXN = StreamSpec(
    name="CFG_TXN",
    # Epoch markers are a handful per namespace (one per takeover), aged out with the rest.
    subjects=(subjects.TXN_PREPARES, subjects.TXN_DECISIONS, subjects.TXN_EPOCHS),
    retention="limits",
    max_age_s=7 * DAY,
    max_bytes=2 * GIB,
    max_msg_size=MAX_PAYLOAD,
    description="2PC prepares, write-once decisions and epoch markers",
    # One ordered consumer per agent and namespace: room for 10,000 nodes × 10 namespaces.
    max_consumers=100_000,
)
CFG_EVENTS = StreamSpec(
    name="CFG_EVENTS",
    subjects=(subjects.EVENTS_ALL,),
    retention="limits",
    max_age_s=365 * DAY,
    max_bytes=4 * GIB,
    max_msg_size=MAX_PAYLOAD,
    description="the audit log: every state change, replayable",
)
CFG_HEALTH = StreamSpec(
    name="CFG_HEALTH",
    subjects=(subjects.HEALTH_ALL,),
    retention="limits",
    max_age_s=1 * HOUR,
    max_bytes=256 * MIB,
    max_msg_size=64 * 1024,
    description="health samples forwarded by agents",
)
CFG_ALERTS = StreamSpec(
    name="CFG_ALERTS",
    subjects=(subjects.ALERTS_ALL,),
    retention="limits",
    max_age_s=90 * DAY,
    max_bytes=256 * MIB,
    max_msg_size=256 * 1024,
    duplicate_window_s=1 * HOUR,
    description="alerts that may trigger rollbacks",
)
CFG_DLQ = StreamSpec(
    name="CFG_DLQ",
    subjects=(subjects.DLQ_ALL,),
    retention="limits",
    max_age_s=30 * DAY,
    max_bytes=512 * MIB,
    max_msg_size=2 * MAX_PAYLOAD,
    description="messages that can never succeed, with the reason",
)

STREAMS: tuple[StreamSpec, ...] = (
    CFG_CHANGES,
    CFG_TXN,
    CFG_EVENTS,
    CFG_HEALTH,
    CFG_ALERTS,
    CFG_DLQ,
)

CFG_TXN_HEAD = BucketSpec(
    name="CFG_TXN_HEAD",
    history=5,
    max_bytes=64 * MIB,
    # The head names the transaction's participants: 10,000 node ids are ~90 KB (at 64 KiB a
    # switch of more than ~7,000 nodes could not start: benchmarks.switch10k).
    max_value_size=1 * MIB,
    description="per-namespace transaction head: epoch, txid, state",
)
CFG_STATE = BucketSpec(
    name="CFG_STATE",
    history=5,
    max_bytes=256 * MIB,
    max_value_size=1 * MIB,
    description="leases, node membership and targets, rollout state, cooldowns",
)

CFG_REJECTIONS = BucketSpec(
    name="CFG_REJECTIONS",
    history=1,
    max_bytes=64 * MIB,
    max_value_size=4096,
    description="rejected changes, for change_status (version-store)",
    # A week covers any CI retry; older rejections live on only as version.rejected events.
    ttl_s=7 * DAY,
)

CFG_CHECKPOINTS = BucketSpec(
    name="CFG_CHECKPOINTS",
    history=1,
    max_bytes=1 * GIB,
    max_value_size=MAX_PAYLOAD,
    description="fleet checkpoints folded from CFG_EVENTS (historian), so that reading the "
    "past starts near it",
    # A checkpoint outlives its use when the events after it are gone: the events' own age.
    ttl_s=365 * DAY,
)


def change_streams(replicas: int) -> tuple[StreamSpec, ...]:
    """Where a change may be accepted (and the version-store reads it): ``CFG_CHANGES``, and
    in a stack whose streams are replicated ``CFG_CHANGES_ALT`` too (one server has no second
    leader to offer)."""
    return (CFG_CHANGES, CFG_CHANGES_ALT) if replicas > 1 else (CFG_CHANGES,)


def streams_for(replicas: int) -> tuple[StreamSpec, ...]:
    """Every stream of a stack whose streams have ``replicas`` replicas: ``STREAMS`` (which
    holds ``CFG_CHANGES``) and the change streams beyond it."""
    return (*STREAMS, *change_streams(replicas)[1:])


BUCKETS: tuple[BucketSpec, ...] = (CFG_TXN_HEAD, CFG_STATE, CFG_REJECTIONS, CFG_CHECKPOINTS)
