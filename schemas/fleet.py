"""The fleet of one namespace as ``CFG_EVENTS`` tells it, at one stream sequence; stored as a
checkpoint in ``CFG_CHECKPOINTS`` (docs/design.md §8.10).

``FleetState`` is what ``confbus.schemas.fold`` builds from the events: per node its last apply,
its target, its liveness; the namespace's production and last known good; and the few
transactions, rollouts, rollbacks and versions that explain why each node runs what it runs.
Every fact keeps the stream sequence of the event that established it, so an answer can cite
its evidence.

A checkpoint is a ``FleetState`` framed so that a reader can tell a damaged one from a good one
(``encode_checkpoint`` / ``parse_checkpoint``): ``confbus-fleet 1 <sha256 of the body>\\n``
then the zlib-compressed JSON. A checkpoint only saves time: a reader that finds it damaged,
misplaced (another namespace, sequence or stream) or missing folds from an older one, or from
the start of the stream, and gets the same answer.

The Structs are mutable on purpose: the fold updates them in place, once per event, and a
frozen copy per event would cost more than reading the event.
"""

from __future__ import annotations

import hashlib
import zlib
from datetime import datetime
from typing import Literal

import msgspec

from confbus.schemas.base import LazyDecoder
from confbus.schemas.events import VoteRecord
from confbus.schemas.names import check_name

# One vocabulary with the distributor's (confbus.schemas.api.dist.Liveness). ``suspect`` was its
# word for ``away`` before a stopped node was told apart: still read from old checkpoints, never
# written (the fold writes ``away``).
Liveness = Literal["live", "away", "gone", "suspect"]
RolloutState = Literal["running", "paused", "completed", "failed", "superseded", "rolled_back"]
RollbackState = Literal["running", "completed", "stuck"]


class AppliedFact(msgspec.Struct, kw_only=True):
    """A node's ``node.applied``: what its live file held from ``seq`` on."""

    version: int
    sha256: str
    seq: int
    at: datetime | None = None
    txid: str | None = None


class NodeFact(msgspec.Struct, kw_only=True):
    node: str
    seen_seq: int  # the first event (since the fold's origin) that named this node
    applied: AppliedFact | None = None
    applies: int = 0  # node.applied events folded (so a diff can say how many in between)
    target: int | None = None  # the highest version of a committed transaction it was in
    target_txid: str | None = None
    target_seq: int | None = None
    liveness: Liveness | None = None  # None: no node.status since the origin
    liveness_seq: int | None = None
    liveness_at: datetime | None = None
    failing: str | None = None  # why catch-up keeps failing (None: it does not)
    failing_seq: int | None = None
    drift_sha256: str | None = None  # the live file differed from the applied version's bytes
    drift_seq: int | None = None


class VerdictFact(msgspec.Struct, kw_only=True):
    seq: int
    at: datetime | None = None
    verdict: str
    nodes: int = 0
    samples: int = 0
    reason: str = ""
    rollout_id: str | None = None  # a rollout's bake (rollout.baked), else a health.verdict
    wave: int | None = None


class VersionFact(msgspec.Struct, kw_only=True):
    version: int
    seq: int | None = None  # version.created (None: created before the fold's origin)
    at: datetime | None = None
    sha256: str | None = None
    author: str = ""
    message: str = ""
    change_id: str = ""
    parent: int | None = None
    rollback_of: int | None = None
    status: str = ""
    failed_verdict: VerdictFact | None = None  # the last failing verdict on this version


class TxnFact(msgspec.Struct, kw_only=True):
    txid: str
    version: int
    decision: Literal["committed", "aborted"] | None = None  # None: its txn.* event not seen
    seq: int | None = None
    at: datetime | None = None
    epoch: int | None = None
    participants: int = 0
    against: list[VoteRecord] = []  # the votes that were not yes
    # How it came about (each filled by the event that says so, whichever comes first):
    rollout_id: str | None = None
    wave: int | None = None
    wave_seq: int | None = None
    catchup_node: str | None = None
    catchup_kind: str | None = None
    catchup_seq: int | None = None
    rollback_id: str | None = None
    batch: int | None = None
    batch_seq: int | None = None


class WaveFact(msgspec.Struct, kw_only=True):
    index: int
    nodes: list[str] = []
    txid: str | None = None  # the committed (else last) transaction of the wave
    outcome: str | None = None  # committed | aborted | retrying
    seq: int | None = None
    verdict: str | None = None
    verdict_seq: int | None = None


class RolloutFact(msgspec.Struct, kw_only=True):
    rollout_id: str
    version: int
    seq: int | None = None  # rollout.started (None: started before the fold's origin)
    at: datetime | None = None
    strategy: str = ""
    state: RolloutState = "running"
    waves: list[WaveFact] = []
    ended_seq: int | None = None
    ended_at: datetime | None = None
    reason: str = ""
    actor: str = ""
    failed_wave: int | None = None
    handed_to_rollbacker: bool = False
    superseded_by: int | None = None


class BatchFact(msgspec.Struct, kw_only=True):
    batch: int
    seq: int
    healthy_share: float | None = None
    reason: str = ""


class RollbackFact(msgspec.Struct, kw_only=True):
    rollback_id: str
    seq: int | None = None  # rollback.started
    at: datetime | None = None
    from_version: int | None = None
    to_version: int | None = None
    new_version: int | None = None
    alert_id: str | None = None
    reason: str = ""
    actor: str = ""
    batches: list[list[str]] = []  # as planned
    done: list[BatchFact] = []
    state: RollbackState = "running"
    ended_seq: int | None = None


class Pointer(msgspec.Struct, kw_only=True):
    """``production`` or ``last_good``: a version, and the event that made it so."""

    version: int
    seq: int
    at: datetime | None = None


class FleetState(msgspec.Struct, kw_only=True):
    namespace: str
    # Every event of the namespace with a stream sequence <= seq is folded in.
    seq: int = 0
    at: datetime | None = None  # stored time of the last event folded
    # The first sequence folded. 1: the whole history; more: the stream had dropped what was
    # older (retention), and what happened before origin_at is unknown, never guessed.
    origin_seq: int = 1
    origin_at: datetime | None = None
    events: int = 0
    skipped: int = 0  # events this build could not read (a newer confbus, or garbage)
    # CFG_EVENTS' creation time: a stream deleted and created again numbers from 1 again, and
    # a checkpoint of the old one must not be taken for the new one.
    stream_created: str = ""
    production: Pointer | None = None
    last_good: Pointer | None = None
    rollout: str | None = None  # the current (or last) rollout
    rollback: str | None = None  # the current (or last) rollback
    nodes: dict[str, NodeFact] = {}
    versions: dict[int, VersionFact] = {}
    txns: dict[str, TxnFact] = {}
    rollouts: dict[str, RolloutFact] = {}
    rollbacks: dict[str, RollbackFact] = {}

    @property
    def complete(self) -> bool:
        """True when the fold saw the namespace's history from its very first event."""
        return self.origin_seq <= 1


# -- checkpoints --------------------------------------------------------------------------------

_MAGIC = b"confbus-fleet 1 "
# A checkpoint of 10,000 nodes is ~3 MiB of JSON; anything that inflates past this is not one.
MAX_CHECKPOINT_JSON = 64 * 1024 * 1024
CURSOR_KEY = "_cursor"

_encode = msgspec.json.Encoder().encode
_decode_state: LazyDecoder[FleetState] = LazyDecoder(FleetState)


class CheckpointCorrupt(ValueError):
    """A checkpoint that must not be used; the message says why (the reader logs it)."""


class Cursor(msgspec.Struct, frozen=True, kw_only=True):
    """The historian's resume point: every namespace with events up to ``seq`` has a
    checkpoint covering them (docs/design.md §8.10)."""

    seq: int
    stream_created: str


decode_cursor: LazyDecoder[Cursor] = LazyDecoder(Cursor)


def checkpoint_key(namespace: str, seq: int) -> str:
    """``<ns>.<seq>`` with the sequence zero-padded, so that keys sort as sequences do."""
    return f"{check_name(namespace, 'namespace')}.{seq:016d}"


def checkpoint_keys_of(namespace: str) -> str:
    return f"{check_name(namespace, 'namespace')}.*"


def checkpoint_seq(key: str) -> int | None:
    """The sequence a checkpoint key names (None: not a checkpoint key)."""
    _, _, tail = key.rpartition(".")
    return int(tail) if tail.isdigit() else None


def encode_checkpoint(state: FleetState) -> bytes:
    body = zlib.compress(_encode(state), 6)
    return _MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def parse_checkpoint(data: bytes) -> FleetState:
    """The state a checkpoint holds; ``CheckpointCorrupt`` if it is not intact."""
    if not data.startswith(_MAGIC):
        raise CheckpointCorrupt("not a fleet checkpoint (bad header)")
    header, sep, body = data.partition(b"\n")
    if not sep:
        raise CheckpointCorrupt("truncated header")
    if hashlib.sha256(body).hexdigest().encode() != header[len(_MAGIC) :]:
        raise CheckpointCorrupt("checksum mismatch")
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(body, MAX_CHECKPOINT_JSON)
    except zlib.error as exc:
        raise CheckpointCorrupt(f"does not inflate: {exc}") from None
    if inflate.unconsumed_tail:
        raise CheckpointCorrupt(f"inflates past {MAX_CHECKPOINT_JSON} bytes")
    try:
        return _decode_state(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise CheckpointCorrupt(f"does not decode: {exc}") from None


def check_checkpoint(
    state: FleetState, *, key: str, namespace: str, stream_created: str, first_seq: int
) -> FleetState:
    """``state`` if the checkpoint stored at ``key`` may stand for the fold of this stream's
    events up to its sequence; ``CheckpointCorrupt`` says why not."""
    if state.namespace != namespace:
        raise CheckpointCorrupt(f"holds namespace {state.namespace!r}")
    if state.seq != checkpoint_seq(key):
        raise CheckpointCorrupt(f"holds seq {state.seq}, not the one its key names")
    if state.stream_created != stream_created:
        raise CheckpointCorrupt(f"of another CFG_EVENTS (created {state.stream_created or '?'})")
    if state.seq < first_seq - 1:
        raise CheckpointCorrupt(
            f"older than the stream's first event (seq {first_seq}): the events after it are gone"
        )
    return state
