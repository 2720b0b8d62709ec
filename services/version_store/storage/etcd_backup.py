"""Backup, restore and integrity for the etcd backend (kept apart: they read whole namespaces).

``export`` reads every version at one revision, so the backup is a consistent snapshot even while
appends continue. ``import_`` claims the namespace first (its head says ``importing``, so appends
wait with a retryable error), writes the versions in fenced pieces, and publishes the head last:
a crash half-way leaves a claimed namespace that the next import of the same backup takes over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread
from aetcd import transactions as tx

from confbus.schemas.sealing import content_sha256
from confbus.version_store.errors import InvalidConfig, NotFound, VersionConflict
from confbus.version_store.storage import etcd_layout as layout
from confbus.version_store.storage import rules
from confbus.version_store.storage.base import (
    IntegrityReport,
    NamespaceExport,
    NewVersion,
    StoredVersion,
)
from confbus.version_store.storage.etcd_conn import get, prefix

if TYPE_CHECKING:
    from confbus.version_store.storage.etcd import EtcdStore

_PAGE = 500


async def all_metas(store: EtcdStore, ns: str) -> tuple[int, layout.HeadRec, list[layout.Meta]]:
    """Every version's metadata, paged, all at one revision (a consistent snapshot)."""
    base = store.keys.versions(ns)
    revision, (head_kvs, kvs) = await store.conn.read(
        "export", [get(store.keys.head(ns)), prefix(base, limit=_PAGE)]
    )
    metas = [layout.decode_meta(kv.value) for kv in kvs]
    while len(kvs) == _PAGE:
        start = kvs[-1].key + b"\x00"
        _, (kvs,) = await store.conn.read(
            "export", [prefix(base, start=start, limit=_PAGE)], revision
        )
        metas.extend(layout.decode_meta(kv.value) for kv in kvs)
    return revision, layout.head_of(head_kvs)[1], metas


async def export(store: EtcdStore, ns: str) -> NamespaceExport:
    revision, head, metas = await all_metas(store, ns)
    blobs = await store.blobs([m.info.sha256 for m in metas])
    _, (policy_kvs,) = await store.conn.read("export", [get(store.keys.policy(ns))], revision)
    missing = [m.info.version for m in metas if m.info.sha256 not in blobs]
    if missing:
        raise NotFound(ns, f"content of versions {missing}")
    return NamespaceExport(
        namespace=ns,
        versions=[layout.stored(m, head, blobs[m.info.sha256]) for m in metas],
        production=head.production,
        last_good=head.last_good,
        policy=layout.decode_policy(policy_kvs[0].value) if policy_kvs else None,
    )


async def import_(store: EtcdStore, data: NamespaceExport) -> int:
    rules.check_export(data)
    ns, keys = data.namespace, store.keys
    for sv in data.versions:
        too_big = store.check_size(
            NewVersion(namespace=ns, change_id=sv.info.change_id, content=sv.content, sha256="")
        )
        if too_big is not None:
            raise InvalidConfig(f"version {sv.info.version}: {too_big.reason}", "size")
    await store.check_quota()
    _, (head_kvs,) = await store.conn.read("import", [get(keys.head(ns))])
    head_rev, head = layout.head_of(head_kvs)
    if head.newest and not head.importing:
        if await export(store, ns) == data:
            return 0
        raise VersionConflict(
            ns,
            f"already has {head.newest} versions that differ from the import; "
            "restore into an empty store or another namespace",
        )
    # 1. Claim the namespace (appends now wait) and clear what a crashed import left behind.
    claim = [
        tx.Put(keys.head(ns), layout.encode(layout.HeadRec(importing=True))),
        tx.Put(keys.nsidx(ns), b""),
        tx.Delete(keys.versions(ns), layout.range_end(keys.versions(ns))),
        tx.Delete(keys.changes(ns), layout.range_end(keys.changes(ns))),
    ]
    if not await store.conn.txn("import", [tx.Mod(keys.head(ns)) == head_rev], claim):
        raise VersionConflict(ns, "changed while the import started; try again")
    _, (claimed,) = await store.conn.read("import", [get(keys.head(ns))])
    fence = [tx.Mod(keys.head(ns)) == claimed[0].mod_revision]
    # 2. The versions, in pieces etcd accepts, each fenced on our claim.
    for piece in _pieces(data.versions, store.max_txn_ops // 4, store.max_request_bytes // 2):
        if not await store.conn.txn("import", fence, _version_ops(store, ns, piece)):
            raise VersionConflict(ns, "another import took over this namespace")
    # 3. Publish: the head with its pointers, and the policy, at once.
    done = layout.HeadRec(
        newest=len(data.versions), production=data.production, last_good=data.last_good
    )
    final = [tx.Put(keys.head(ns), layout.encode(done))]
    if data.policy is not None:
        final.append(tx.Put(keys.policy(ns), layout.encode(data.policy)))
    if not await store.conn.txn("import", fence, final):
        raise VersionConflict(ns, "another import took over this namespace")
    return len(data.versions)


def _version_ops(store: EtcdStore, ns: str, piece: list[StoredVersion]) -> list[Any]:
    ops: list[Any] = []
    seen: set[str] = set()
    for sv in piece:
        ops.append(
            tx.Put(store.keys.version(ns, sv.info.version), layout.encode(layout.meta_of(sv)))
        )
        ops.append(tx.Put(store.keys.change(ns, sv.info.change_id), b"%d" % sv.info.version))
        if sv.info.sha256 not in seen:  # etcd refuses a key twice in one txn
            seen.add(sv.info.sha256)
            key = store.keys.blob(sv.info.sha256)
            ops.append(tx.Txn([tx.Version(key) == 0], [tx.Put(key, sv.content)], []))
    return ops


async def check_integrity(store: EtcdStore, ns: str) -> IntegrityReport:
    _, head, metas = await all_metas(store, ns)
    corrupt: list[int] = []
    missing = sorted(set(range(1, head.newest + 1)) - {m.info.version for m in metas})
    for i in range(0, len(metas), 64):
        page = metas[i : i + 64]
        blobs = await store.blobs([m.info.sha256 for m in page])
        hashes = await anyio.to_thread.run_sync(_hash_blobs, blobs)
        for m in page:
            if m.info.sha256 not in blobs:
                missing.append(m.info.version)
            elif hashes[m.info.sha256] != m.info.sha256:
                corrupt.append(m.info.version)
    return IntegrityReport(
        namespace=ns, checked=len(metas), corrupt=corrupt, missing=sorted(missing)
    )


def _pieces(
    versions: list[StoredVersion], max_items: int, max_bytes: int
) -> list[list[StoredVersion]]:
    out: list[list[StoredVersion]] = []
    piece: list[StoredVersion] = []
    size = 0
    for sv in versions:
        if piece and (len(piece) >= max_items or size + len(sv.content) > max_bytes):
            out.append(piece)
            piece, size = [], 0
        piece.append(sv)
        size += len(sv.content)
    if piece:
        out.append(piece)
    return out


def _hash_blobs(blobs: dict[str, bytes]) -> dict[str, str]:
    return {sha: content_sha256(content) for sha, content in blobs.items()}
