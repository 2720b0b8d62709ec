"""The HA backend: versions in an etcd cluster (3 members, Raft), through aetcd.

The key layout is in ``etcd_layout``. Every write is a transaction that compares the
mod_revision of the keys it read (for an append: the namespace head) and retries on a lost race
— no etcd locks (they do not exclude, Jepsen 2020). Numbering is therefore gap-free and
duplicate-free across any number of writers and clients.

A batch becomes one transaction per namespace, cut into several when etcd's limits require it
(``--max-txn-ops`` 128, ``--max-request-bytes`` 1.5 MiB); each piece is atomic and in order, and
a batch retried after a failure between pieces comes back as the same versions (change ids).

Before writes the store checks the database size against the quota and refuses with
``QuotaExceeded`` from ``quota_ratio`` of it, before etcd itself would turn read-only; every
``compact_every`` writes it compacts history older than ``compact_keep`` revisions. Content is
written once and metadata changes only by status updates, so compaction loses nothing the store
reads.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec
from aetcd import transactions as tx

from confbus.runtime.etcd_tls import EtcdTls
from confbus.runtime.opening import OpenClose
from confbus.schemas.policy import Policy
from confbus.schemas.versions import VersionInfo
from confbus.version_store.errors import (
    InvalidConfig,
    NotFound,
    QuotaExceeded,
    StoreUnavailable,
)
from confbus.version_store.storage import base, etcd_backup, rules
from confbus.version_store.storage.etcd_conn import EtcdConnection, get, prefix
from confbus.version_store.storage.etcd_layout import (
    HeadRec,
    Keys,
    Meta,
    decode_meta,
    decode_policy,
    encode,
    head_of,
    meta_of,
    public_head,
    stored,
)
from confbus.version_store.validate import check_policy

log = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2
DEFAULT_QUOTA = 2 * GIB  # etcd's default --quota-backend-bytes
ETCD_MAX_REQUEST = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)
REQUEST_OVERHEAD = 64 * 1024  # metadata, keys and framing around the content in one txn
_URL_OPTIONS: dict[str, type[int] | type[float]] = {
    "quota_bytes": int,
    "quota_ratio": float,
    "compact_every": int,
    "compact_keep": int,
    "max_txn_ops": int,
    "max_request_bytes": int,
    "request_timeout_s": float,
    "unavailable_after_s": float,
}
# A status change: given the version and the head, the extra compares and the puts (none: no-op).
Decide = Callable[[Meta, HeadRec], Awaitable[tuple[list[Any], list[Any]]]]


class EtcdStore(OpenClose):
    """``EtcdStore(["h1:2379", "h2:2379", "h3:2379"], prefix="/confbus/")``."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        prefix: str = "/confbus/",
        quota_bytes: int = DEFAULT_QUOTA,
        quota_ratio: float = 0.9,
        quota_check_interval_s: float = 1.0,
        compact_every: int = 1000,
        compact_keep: int = 1000,
        max_txn_ops: int = 120,
        max_request_bytes: int = ETCD_MAX_REQUEST,
        request_timeout_s: float = 5.0,
        unavailable_after_s: float = 15.0,
        tls: EtcdTls | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        self.keys = Keys(prefix)
        self.quota_bytes = quota_bytes
        self.quota_ratio = quota_ratio
        self.quota_check_interval_s = quota_check_interval_s
        self.compact_every = compact_every
        self.compact_keep = compact_keep
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        self.conn = EtcdConnection(
            endpoints,
            request_timeout_s=request_timeout_s,
            unavailable_after_s=unavailable_after_s,
            tls=tls,
        )
        self.compacted_revision = 0
        self._writes_since_compact = 0
        self._quota_checked_at = -1e9
        self._quota_refusal = ""  # the reason writes are refused, until the next check
        self._wlock = anyio.Lock()  # one append at a time per client: no self-inflicted races

    @classmethod
    def from_url(cls, url: str, tls: EtcdTls | None = None) -> EtcdStore:
        """``etcd://h1:2379,h2:2379/prefix/?quota_bytes=...&compact_every=...``; members that
        serve TLS with ``tls``."""
        parts = urlsplit(url)
        endpoints = [e for e in parts.netloc.split(",") if e]
        if parts.scheme != "etcd" or not endpoints:
            raise ValueError(f"{url!r}: expected etcd://host:port[,host:port...][/prefix/]")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(options) - set(_URL_OPTIONS)
        if unknown:
            raise ValueError(f"{url!r}: unknown option(s) {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {k: _URL_OPTIONS[k](v) for k, v in options.items()}
        return cls(endpoints, prefix=parts.path if parts.path not in ("", "/") else "/confbus/",
                   tls=tls, **kwargs)  # fmt: skip

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.conn.status()  # fail fast (StoreUnavailable) if no endpoint answers

    async def close(self) -> None:
        await self.conn.close()

    # -- append -----------------------------------------------------------------------------------

    async def append(self, batch: list[base.NewVersion]) -> list[base.AppendResult]:
        results: list[base.AppendResult | None] = [None] * len(batch)
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(batch):
            error = rules.check_item(item) or self.check_size(item)
            if error is not None:
                results[i] = base.AppendResult("invalid", error=error)
            else:
                groups.setdefault(item.namespace, []).append(i)
        if groups:
            await self.check_quota()
            async with self._wlock:
                for ns, indexes in groups.items():
                    done = await self._append_ns(ns, [batch[i] for i in indexes])
                    for i, result in zip(indexes, done, strict=True):
                        results[i] = result
        return [r for r in results if r is not None]

    def check_size(self, item: base.NewVersion) -> InvalidConfig | None:
        if len(item.content) + REQUEST_OVERHEAD <= self.max_request_bytes:
            return None
        return InvalidConfig(
            f"config is {len(item.content)} bytes; this etcd store takes at most "
            f"{self.max_request_bytes - REQUEST_OVERHEAD} bytes per version "
            "(raise etcd's --max-request-bytes and the store's max_request_bytes)",
            "size",
        )

    def _chunks(self, items: list[base.NewVersion]) -> list[list[base.NewVersion]]:
        # Per new version: the version key, the change key and a guarded blob put (txn + put).
        per_item, fixed = 4, 2
        budget = self.max_request_bytes - REQUEST_OVERHEAD
        out: list[list[base.NewVersion]] = []
        chunk: list[base.NewVersion] = []
        ops = size = 0
        for item in items:
            if chunk and (
                ops + per_item + fixed > self.max_txn_ops or size + len(item.content) > budget
            ):
                out.append(chunk)
                chunk, ops, size = [], 0, 0
            chunk.append(item)
            ops += per_item
            size += len(item.content)
        if chunk:
            out.append(chunk)
        return out

    async def _append_ns(self, ns: str, items: list[base.NewVersion]) -> list[base.AppendResult]:
        out: list[base.AppendResult] = []
        # What we sent, by change id: if a commit's reply is lost and the retry finds exactly
        # these rows, they were ours — "stored", not "duplicate" (the service must announce them).
        attempted: dict[str, VersionInfo] = {}
        claimed: set[str] = set()  # change ids already reported stored by this call
        for chunk in self._chunks(items):
            deadline = time.monotonic() + self.conn.unavailable_after_s
            attempt = 0
            while True:
                head_rev, head, existing, blobs = await self._append_state(ns, chunk)
                if head.importing:
                    raise StoreUnavailable(f"{ns}: an import is in progress; retry when it ends")
                plan = rules.plan_batch(chunk, {ns: head.newest}, existing)
                if not plan.new:
                    break
                for sv in plan.new:
                    attempted[sv.info.change_id] = sv.info
                if await self.conn.txn(
                    "append",
                    [tx.Mod(self.keys.head(ns)) == head_rev],
                    self._append_ops(ns, head, head_rev, plan, blobs),
                ):
                    await self._after_write(len(plan.new))
                    break
                attempt += 1
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"{ns}: gave up after {attempt} lost races for the namespace head"
                    )
                # Another writer won the head: re-read and re-plan, with jitter so the losers
                # do not collide again in lockstep.
                await anyio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            out.extend(_ours(r, attempted, claimed) for r in plan.results)
        return out

    async def _append_state(
        self, ns: str, chunk: list[base.NewVersion]
    ) -> tuple[int, HeadRec, dict[tuple[str, str], VersionInfo], set[str]]:
        change_ids = sorted({item.change_id for item in chunk})
        shas = sorted({item.sha256 for item in chunk})
        revision, found = await self.conn.read(
            "append read",
            [get(self.keys.head(ns))]
            + [get(self.keys.change(ns, c)) for c in change_ids]
            + [get(self.keys.blob(s), keys_only=True) for s in shas],
        )
        head_rev, head = head_of(found[0])
        numbers = [int(kvs[0].value) for kvs in found[1 : 1 + len(change_ids)] if kvs]
        existing = {
            (ns, sv.info.change_id): sv.info
            for sv in await self._metas(ns, numbers, head, revision)
        }
        blobs = {s for s, kvs in zip(shas, found[1 + len(change_ids) :], strict=True) if kvs}
        return head_rev, head, existing, blobs

    def _append_ops(
        self, ns: str, head: HeadRec, head_rev: int, plan: rules.Planned, blobs: set[str]
    ) -> list[Any]:
        ops: list[Any] = []
        for sv in plan.new:
            info = sv.info
            ops.append(tx.Put(self.keys.version(ns, info.version), encode(meta_of(sv))))
            ops.append(tx.Put(self.keys.change(ns, info.change_id), b"%d" % info.version))
            if info.sha256 not in blobs:
                blobs.add(info.sha256)  # once per txn: etcd refuses a key twice in one txn
                key = self.keys.blob(info.sha256)
                # Guarded: concurrent writers of the same bytes must not rewrite the blob.
                ops.append(tx.Txn([tx.Version(key) == 0], [tx.Put(key, sv.content)], []))
        head.newest = plan.newest[ns]
        ops.append(tx.Put(self.keys.head(ns), encode(head)))
        if head_rev == 0:
            ops.append(tx.Put(self.keys.nsidx(ns), b""))
        return ops

    async def _after_write(self, n: int) -> None:
        self._writes_since_compact += n
        if self._writes_since_compact < self.compact_every:
            return
        self._writes_since_compact = 0
        try:
            await self.compact()
        except StoreUnavailable as e:
            # The write is committed; failing it now would only make the caller retry it.
            # Compaction can always wait for the next round.
            log.info("etcd compaction skipped", extra={"error": str(e)})

    async def compact(self) -> int:
        """Compact revisions older than ``compact_keep``; returns the compacted revision (or 0).

        Raises ``StoreUnavailable`` if etcd refuses (e.g. another client already compacted
        further).
        """
        status = await self.conn.status()
        target = int(status.header.revision) - self.compact_keep
        if target <= self.compacted_revision:
            return 0
        await self.conn.compact(target)
        self.compacted_revision = target
        return target

    async def check_quota(self) -> None:
        """Refuse writes from ``quota_ratio`` of the quota: at 100 % etcd raises a NOSPACE alarm
        and turns the whole cluster read-only, for every user of it. Checked at most every
        ``quota_check_interval_s`` (one status call), not per write."""
        now = time.monotonic()
        if now - self._quota_checked_at >= self.quota_check_interval_s:
            status = await self.conn.status()
            self._quota_checked_at = now
            size = int(status.dbSize)
            self._quota_refusal = ""
            alarms = [str(e) for e in status.errors if "NOSPACE" in str(e)]
            if alarms:
                self._quota_refusal = (
                    f"etcd has raised its NOSPACE alarm ({alarms[0]}) and accepts no writes; "
                    "compact, defragment and disarm the alarm, or raise --quota-backend-bytes"
                )
            elif size >= self.quota_ratio * self.quota_bytes:
                self._quota_refusal = (
                    f"etcd database at {size / MIB:.1f} MiB of its {self.quota_bytes / MIB:.1f} "
                    f"MiB quota; compact and defragment, or raise --quota-backend-bytes "
                    f"(and this store's quota_bytes)"
                )
        if self._quota_refusal:
            raise QuotaExceeded(self._quota_refusal)

    # -- status changes ---------------------------------------------------------------------------

    async def _cas(
        self, ns: str, version: int, decide: Decide, what: str, *, fence_head: bool
    ) -> Meta:
        """Read (head, version), let ``decide`` return the puts, commit them if nothing moved.

        ``fence_head``: the decision depends on the head too (promote, last-good), so a
        concurrent change of it must send us round again. Approve and reject do not, and would
        only lose races with appends for nothing.
        """
        deadline = time.monotonic() + self.conn.unavailable_after_s
        while True:
            _, (head_kvs, v_kvs) = await self.conn.read(
                what, [get(self.keys.head(ns)), get(self.keys.version(ns, version))]
            )
            if not v_kvs:
                raise NotFound(ns, f"version {version}")
            head_rev, head = head_of(head_kvs)
            meta = decode_meta(v_kvs[0].value)
            meta.info = msgspec.structs.replace(meta.info, last_good=head.last_good == version)
            compares, puts = await decide(meta, head)
            if not puts:
                return meta
            compares.append(tx.Mod(self.keys.version(ns, version)) == v_kvs[0].mod_revision)
            if fence_head:
                compares.append(tx.Mod(self.keys.head(ns)) == head_rev)
            if await self.conn.txn(what, compares, puts):
                return meta
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"{ns}: gave up {what} of version {version}: contention")
            await anyio.sleep(random.uniform(0, 0.005))

    def _put_meta(self, ns: str, meta: Meta, **changes: Any) -> Any:
        """The put of ``meta`` with ``changes``; ``meta.info`` is updated for the caller."""
        meta.info = msgspec.structs.replace(meta.info, **changes)
        kept = Meta(
            info=msgspec.structs.replace(meta.info, last_good=False),
            strategy=meta.strategy,
            selector=meta.selector,
        )
        return tx.Put(self.keys.version(ns, meta.info.version), encode(kept))

    async def approve(self, namespace: str, version: int, approver: str) -> VersionInfo:
        async def decide(meta: Meta, head: HeadRec) -> tuple[list[Any], list[Any]]:
            if not rules.check_approve(meta.info, approver):
                return [], []
            return [], [self._put_meta(namespace, meta, status="approved", approved_by=approver)]

        return (await self._cas(namespace, version, decide, "approve", fence_head=False)).info

    async def reject(self, namespace: str, version: int) -> VersionInfo:
        async def decide(meta: Meta, head: HeadRec) -> tuple[list[Any], list[Any]]:
            if not rules.check_reject(meta.info):
                return [], []
            return [], [self._put_meta(namespace, meta, status="rejected")]

        return (await self._cas(namespace, version, decide, "reject", fence_head=False)).info

    async def promote(self, namespace: str, version: int) -> base.Promotion:
        previous: list[int | None] = [None]

        async def decide(meta: Meta, head: HeadRec) -> tuple[list[Any], list[Any]]:
            previous[0] = None
            if not rules.check_promote(meta.info):
                return [], []
            puts = [self._put_meta(namespace, meta, status="production")]
            compares: list[Any] = []
            if head.production is not None and head.production != version:
                _, (old_kvs,) = await self.conn.read(
                    "promote", [get(self.keys.version(namespace, head.production))]
                )
                old = decode_meta(old_kvs[0].value)
                puts.append(self._put_meta(namespace, old, status="superseded"))
                compares.append(
                    tx.Mod(self.keys.version(namespace, head.production)) == old_kvs[0].mod_revision
                )
                previous[0] = head.production
            head.production = version
            puts.append(tx.Put(self.keys.head(namespace), encode(head)))
            return compares, puts

        meta = await self._cas(namespace, version, decide, "promote", fence_head=True)
        return base.Promotion(info=meta.info, previous=previous[0])

    async def mark_last_good(self, namespace: str, version: int) -> VersionInfo:
        async def decide(meta: Meta, head: HeadRec) -> tuple[list[Any], list[Any]]:
            rules.check_last_good(meta.info)
            if head.last_good == version:
                return [], []
            head.last_good = version
            meta.info = msgspec.structs.replace(meta.info, last_good=True)
            return [], [tx.Put(self.keys.head(namespace), encode(head))]

        meta = await self._cas(namespace, version, decide, "mark last-good", fence_head=True)
        return meta.info

    async def set_policy(self, policy: Policy) -> None:
        check_policy(policy)
        await self.check_quota()
        ns = policy.namespace
        await self.conn.txn(
            "set policy",
            [],
            [tx.Put(self.keys.policy(ns), encode(policy)), tx.Put(self.keys.nsidx(ns), b"")],
        )

    # -- reads ------------------------------------------------------------------------------------

    async def head(self, namespace: str) -> base.Head:
        _, (kvs,) = await self.conn.read("head", [get(self.keys.head(namespace))])
        return public_head(namespace, head_of(kvs)[1])

    async def get(self, namespace: str, version: int) -> base.StoredVersion:
        _, (head_kvs, v_kvs) = await self.conn.read(
            "get", [get(self.keys.head(namespace)), get(self.keys.version(namespace, version))]
        )
        if not v_kvs:
            raise NotFound(namespace, f"version {version}")
        sv = stored(decode_meta(v_kvs[0].value), head_of(head_kvs)[1], b"")
        content = (await self.blobs([sv.info.sha256])).get(sv.info.sha256)
        if content is None:
            raise NotFound(namespace, f"content of version {version} (blob {sv.info.sha256})")
        return msgspec.structs.replace(sv, content=content)

    async def resolve(self, namespace: str, ref: base.VersionRef) -> VersionInfo:
        want = rules.parse_ref(namespace, ref)
        number = want if isinstance(want, int) else None
        if not isinstance(want, int):
            head = await self.head(namespace)
            number = {
                "latest": head.newest or None,
                "production": head.production,
                "last-good": head.last_good,
            }[want]
        if number is None:
            raise NotFound(namespace, f"{want} version")
        _, (head_kvs, v_kvs) = await self.conn.read(
            "resolve", [get(self.keys.head(namespace)), get(self.keys.version(namespace, number))]
        )
        if not v_kvs:
            raise NotFound(namespace, f"version {number}")
        return stored(decode_meta(v_kvs[0].value), head_of(head_kvs)[1], b"").info

    async def history(
        self, namespace: str, before: int | None = None, limit: int = 50
    ) -> list[VersionInfo]:
        if limit <= 0 or (before is not None and before <= 1):
            return []
        base = self.keys.versions(namespace)
        end = self.keys.version(namespace, before) if before is not None else None
        # Keys are zero-padded, so a descending key range with a limit is the newest-first page:
        # etcd reads only `limit` keys whatever the length of the history.
        _, (head_kvs, kvs) = await self.conn.read(
            "history",
            [get(self.keys.head(namespace)), prefix(base, end=end, limit=limit, descending=True)],
        )
        head = head_of(head_kvs)[1]
        return [stored(decode_meta(kv.value), head, b"").info for kv in kvs]

    async def by_change_id(self, namespace: str, change_id: str) -> VersionInfo | None:
        revision, (head_kvs, change_kvs) = await self.conn.read(
            "by change id",
            [get(self.keys.head(namespace)), get(self.keys.change(namespace, change_id))],
        )
        if not change_kvs:
            return None
        head = head_of(head_kvs)[1]
        metas = await self._metas(namespace, [int(change_kvs[0].value)], head, revision)
        return metas[0].info if metas else None

    async def get_policy(self, namespace: str) -> Policy:
        _, (kvs,) = await self.conn.read("get policy", [get(self.keys.policy(namespace))])
        return decode_policy(kvs[0].value) if kvs else Policy(namespace=namespace)

    async def namespaces(self) -> list[str]:
        base = self.keys.nsidx()
        _, (kvs,) = await self.conn.read("namespaces", [prefix(base, keys_only=True)])
        return sorted(kv.key[len(base) :].decode() for kv in kvs)

    async def _metas(
        self, ns: str, numbers: list[int], head: HeadRec, revision: int = 0
    ) -> list[base.StoredVersion]:
        if not numbers:
            return []
        _, found = await self.conn.read(
            "versions", [get(self.keys.version(ns, n)) for n in numbers], revision
        )
        return [stored(decode_meta(kvs[0].value), head, b"") for kvs in found if kvs]

    async def blobs(self, shas: Sequence[str], revision: int = 0) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        wanted = sorted(set(shas))
        # Bounded reads: a page of blobs can be up to a MiB each.
        for i in range(0, len(wanted), 16):
            page = wanted[i : i + 16]
            _, found = await self.conn.read(
                "blobs", [get(self.keys.blob(s)) for s in page], revision
            )
            out.update((s, kvs[0].value) for s, kvs in zip(page, found, strict=True) if kvs)
        return out

    # -- backup and integrity (etcd_backup) -------------------------------------------------

    async def export(self, namespace: str) -> base.NamespaceExport:
        return await etcd_backup.export(self, namespace)

    async def import_(self, data: base.NamespaceExport) -> int:
        return await etcd_backup.import_(self, data)

    async def check_integrity(self, namespace: str) -> base.IntegrityReport:
        return await etcd_backup.check_integrity(self, namespace)


# -- helpers ----------------------------------------------------------------------------------


def _ours(
    result: base.AppendResult, attempted: dict[str, VersionInfo], claimed: set[str]
) -> base.AppendResult:
    """Report as stored the first duplicate that is exactly the row this call wrote."""
    if result.info is None or result.outcome not in ("stored", "duplicate"):
        return result
    change_id = result.info.change_id
    if result.outcome == "stored" or change_id in claimed:
        claimed.add(change_id)
        return result
    mine = attempted.get(change_id)
    if mine is not None and _identity(mine) == _identity(result.info):
        claimed.add(change_id)
        log.info(
            "etcd append confirmed after an unanswered commit",
            extra={"namespace": result.info.namespace, "version": result.info.version},
        )
        return base.AppendResult("stored", info=result.info)
    return result


def _identity(info: VersionInfo) -> tuple[Any, ...]:
    return (info.version, info.sha256, info.created_at, info.author, info.message)
