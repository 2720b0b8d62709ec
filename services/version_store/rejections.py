"""Remembering rejected changes, so ``change_status`` can answer a publisher that retries.

A stored change is in the store (its change id is a key there); a rejected one is not, and the
``version.rejected`` event that announced it may be long past a retrying client. So each
rejection is also written to a small KV bucket, ``CFG_REJECTIONS``, keyed by namespace and a
hash of the change id (change ids may hold characters a KV key may not), with a TTL: the
bucket is bounded in age and bytes (invariant 7), and a week covers any CI retry. A rejection
the policy decided records that policy's digest, and answers a retry only while that policy is
in force (``Rejection.holds_under``): a publisher told "set the format first" who does so is
judged afresh.

Writing the record is best effort: it comes before the event, and if it fails the event is still
the rejection's record of truth — ``change_status`` then answers ``unknown`` and the publisher
keeps waiting until its timeout.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from confbus.runtime.bus import Bus, bucket_config
from confbus.runtime.errors import Unavailable
from confbus.schemas.base import DECODE_ERRORS, utcnow
from confbus.schemas.streams import CFG_REJECTIONS

log = logging.getLogger("confbus.version_store.rejections")

BUCKET = CFG_REJECTIONS.name
MAX_VALUE = CFG_REJECTIONS.max_value_size
_MAX_REASON = 1000


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    namespace: str
    change_id: str
    sha256: str
    reason: str
    where: str = ""
    at: datetime = msgspec.field(default_factory=utcnow)
    # The digest of the policy it was judged under (``policy_digest``); "" when no policy
    # decided it (a conflict with a stored version, an undecodable change): such a rejection
    # holds whatever the policy says.
    policy: str = ""

    def holds_under(self, digest: str) -> bool:
        """Whether this rejection still answers a retry while the policy ``digest`` is in force."""
        return not self.policy or self.policy == digest


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Rejection).decode


def key(namespace: str, change_id: str) -> str:
    return f"{namespace}.{hashlib.sha256(change_id.encode()).hexdigest()[:40]}"


class Rejections:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus, replicas: int = 1) -> Rejections:
        # Our own bucket, created idempotently even when the service runs with --no-provision.
        try:
            kv = await bus.js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            kv = await bus.js.create_key_value(bucket_config(CFG_REJECTIONS, replicas))
        return cls(kv)

    async def remember(self, r: Rejection) -> None:
        if len(r.reason) > _MAX_REASON:
            r = msgspec.structs.replace(r, reason=r.reason[: _MAX_REASON - 1] + "…")
        try:
            await self.kv.put(key(r.namespace, r.change_id), _encode(r))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning(
                "could not remember a rejection",
                extra={"namespace": r.namespace, "change_id": r.change_id, "error": repr(exc)},
            )

    async def find(self, namespace: str, change_id: str) -> Rejection | None:
        try:
            entry = await self.kv.get(key(namespace, change_id))
        except nats.js.errors.NotFoundError:  # never rejected, or expired
            return None
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"{BUCKET} is not answering: {exc!r}") from exc
        if entry.value is None:
            return None
        try:
            found = _decode(entry.value)
        except DECODE_ERRORS:
            return None
        # A hash collision is astronomically unlikely; checking costs nothing.
        return found if found.change_id == change_id else None
