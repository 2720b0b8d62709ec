"""Each node's **target version** (docs/design.md §3.6): the highest version among the committed
transactions that included it, and the namespace's production version *for that node* —
whichever is higher. The rule is ``explain`` (and ``effective``, its number), here only.

A version rolled out with a selector is production for the nodes the selector matched: the
others keep the production version they had (``scope.<ns>``, ``ProductionScopes``, written by
the rollout driver before it promotes). A version promoted otherwise (the rollbacker's, an
operator's) is production for every node.

The committed-transaction part lives in ``CFG_STATE`` under ``target.<ns>.<node>`` (raised,
never lowered, by compare-and-set): written from ``txn.committed`` events, whoever asked for the
transaction (a rollout wave, a catch-up, the rollbacker), and directly by the rollout driver
right after a wave commits. Every replica watches ``target.>`` to keep the whole map in
memory. The production part comes from the version-store and ``version.promoted`` events; it
is not copied into every node's key, so a promotion costs one read, not one write per node.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus

from confbus.distributor.store import Store
from confbus.distributor.strategy import matches
from confbus.runtime.kv import Entry, StateKV
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.state import (
    SCOPES,
    TARGETS,
    ProductionScopes,
    ScopedProduction,
    TargetRecord,
    decode_scopes,
    decode_target,
    scope_key,
    scope_of,
    target_key,
    target_of,
)
from confbus.schemas.versions import VersionInfo

log = logging.getLogger("confbus.distributor")

WRITE_CONCURRENCY = 32


@dataclass
class Targets:
    kv: StateKV
    store: Store
    # Each node's record with its revision (from the same watch event or write): a raise
    # compare-and-sets against it without reading the key first — one request per node
    # instead of two; if the key moved meanwhile the write fails and ``mutate`` reads.
    txn: dict[str, dict[str, Entry[TargetRecord]]] = field(default_factory=dict)
    production: dict[str, VersionInfo] = field(default_factory=dict)
    scopes: dict[str, Entry[ProductionScopes]] = field(default_factory=dict)
    _sha: dict[tuple[str, int], str] = field(default_factory=dict)
    # The raise being written for a (namespace, node), and what its end sets: the driver and
    # the ``txn.committed`` handler raise the same nodes to the same version at the same moment,
    # and the second to come waits for the first instead of racing it to the same key (a lost
    # compare-and-set and a read per node, ~40 requests per 100-node wave).
    _writing: dict[tuple[str, str], tuple[int, anyio.Event]] = field(default_factory=dict)

    # -- reading -------------------------------------------------------------------------------

    def txn_target(self, namespace: str, node: str) -> int | None:
        local = self.txn.get(namespace, {}).get(node)
        return local.value.version if local and local.value else None

    def production_version(self, namespace: str) -> int | None:
        info = self.production.get(namespace)
        return info.version if info else None

    def production_for(self, namespace: str, labels: Mapping[str, str]) -> tuple[int | None, str]:
        """The production version for a node with ``labels``, and why."""
        prod = self.production_version(namespace)
        entry = self.scopes.get(namespace)
        entries = entry.value.entries if entry is not None and entry.value is not None else []
        if prod is None or prod not in {e.version for e in entries}:
            return prod, "" if prod is None else f"production v{prod}"
        mine = [e for e in entries if e.version <= prod and matches(labels, e.selector)]
        if not mine:
            return None, f"production v{prod} is for {_sel(entries, prod)} only"
        best = max(mine, key=lambda e: e.version)
        if best.version == prod:
            return prod, f"production v{prod}" + (
                f" for {_sel(entries, prod)}" if best.selector else ""
            )
        return (
            best.version,
            f"production v{best.version} (v{prod} is for {_sel(entries, prod)} only)",
        )

    def explain(
        self, namespace: str, node: str, labels: Mapping[str, str]
    ) -> tuple[int | None, str]:
        """The node's target version and why: its production version (``production_for``) or
        the newest committed transaction that included it, whichever is higher."""
        prod, why = self.production_for(namespace, labels)
        txn = self.txn_target(namespace, node)
        if txn is not None and (prod is None or txn > prod):
            return txn, f"v{txn} committed on it (txn)"
        return prod, why

    def effective(self, namespace: str, node: str, labels: Mapping[str, str]) -> int | None:
        return self.explain(namespace, node, labels)[0]

    async def production_of(
        self, namespace: str, *, refresh: bool = False, max_age_s: float = 0.0
    ) -> VersionInfo | None:
        """``refresh``: ask the store (an answer ``max_age_s`` old will do), not our copy."""
        if refresh or namespace not in self.production:
            info = await self.store.production(namespace, max_age_s=max_age_s)
            if info is None:
                self.production.pop(namespace, None)
                return None
            self.set_production(info)
        return self.production.get(namespace)

    def set_production(self, info: VersionInfo) -> None:
        cur = self.production.get(info.namespace)
        if cur is None or info.version >= cur.version:
            self.production[info.namespace] = info
            self._sha[(info.namespace, info.version)] = info.sha256

    def note_version(self, info: VersionInfo) -> None:
        """A version's sha256 seen in passing: versions never change, so no fetch for it later
        (a commit raises every node's target before anyone has asked for its hash)."""
        self._sha[(info.namespace, info.version)] = info.sha256

    def known_sha256(self, namespace: str, version: int) -> str | None:
        return self._sha.get((namespace, version))

    async def sha256_of(self, namespace: str, version: int) -> str:
        sha = self._sha.get((namespace, version))
        if sha is None:
            sha = (await self.store.version(namespace, version)).sha256
            self._sha[(namespace, version)] = sha  # versions are immutable: cache forever
        return sha

    # -- writing -------------------------------------------------------------------------------

    async def scope(self, namespace: str, version: int, selector: Mapping[str, str]) -> None:
        """Record, before it is promoted, that ``version`` is production for the nodes
        ``selector`` matches ({}: all); the production before it, if it is not recorded (it
        was promoted for every node), first."""
        prod = self.production_version(namespace)
        if not selector and namespace not in self.scopes:
            return  # for every node, as ever: nothing to record (production says it all)

        def add(cur: ProductionScopes | None) -> ProductionScopes | None:
            entries = list(cur.entries) if cur is not None else []
            if any(e.version == version for e in entries):
                return None  # a repeat after a crash
            if prod is not None and prod < version and all(e.version != prod for e in entries):
                entries = [ScopedProduction(version=prod)]
            sel = dict(selector)
            # Entries whose nodes all match the new selector are replaced by it.
            entries = [e for e in entries if not sel.items() <= e.selector.items()]
            return ProductionScopes(
                entries=[*entries, ScopedProduction(version=version, selector=sel)]
            )

        entry, _ = await self.kv.mutate(scope_key(namespace), decode_scopes, add)
        self._remember_scopes(namespace, entry)

    def _remember_scopes(self, namespace: str, entry: Entry[ProductionScopes]) -> None:
        cur = self.scopes.get(namespace)
        if cur is None or entry.revision >= cur.revision:
            self.scopes[namespace] = entry

    async def raise_to(self, namespace: str, nodes: list[str], version: int, txid: str) -> None:
        """Raise the nodes' committed-transaction target to ``version`` (never lower it)."""

        def change(cur: TargetRecord | None) -> TargetRecord | None:
            if cur is not None and cur.version >= version:
                return None
            return TargetRecord(version=version, txid=txid)

        async def one(node: str) -> None:
            key = (namespace, node)
            while True:
                local = self.txn.get(namespace, {}).get(node)
                if local is not None and local.value is not None and local.value.version >= version:
                    return
                writing = self._writing.get(key)
                if writing is None or writing[0] < version:
                    break
                # As high a raise is on its way: its outcome is ours (if it failed, the key
                # is still low when we look again, and this call writes it).
                await writing[1].wait()
            done = anyio.Event()
            self._writing[key] = (version, done)
            try:
                async with limiter:
                    entry, _ = await self.kv.mutate(
                        target_key(namespace, node), decode_target, change, hint=local
                    )
                self._remember(namespace, node, entry)
            finally:
                if self._writing.get(key) == (version, done):
                    del self._writing[key]
                done.set()

        limiter = anyio.CapacityLimiter(WRITE_CONCURRENCY)
        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(one, node)

    def _remember(self, namespace: str, node: str, entry: Entry[TargetRecord]) -> None:
        rec = entry.value
        if rec is None:
            return
        per_ns = self.txn.setdefault(namespace, {})
        cur = per_ns.get(node)
        if cur is None or cur.value is None or rec.version >= cur.value.version:
            per_ns[node] = entry

    def forget(self, namespace: str, node: str) -> None:
        self.txn.get(namespace, {}).pop(node, None)

    # -- the watch -----------------------------------------------------------------------------

    def observed(self, key: str, value: bytes | None, revision: int) -> None:
        """A ``target.<ns>.<node>`` change seen by the watch (ours or another replica's)."""
        ns, node = target_of(key)
        if value is None:
            self.forget(ns, node)
            return
        try:
            self._remember(ns, node, Entry(decode_target(value), revision))
        except DECODE_ERRORS:
            log.warning("unreadable target record", extra={"key": key})

    def observed_scopes(self, key: str, value: bytes | None, revision: int) -> None:
        ns = scope_of(key)
        if value is None:
            self.scopes.pop(ns, None)
            return
        try:
            self._remember_scopes(ns, Entry(decode_scopes(value), revision))
        except DECODE_ERRORS:
            log.warning("unreadable production scopes", extra={"key": key})

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self.kv.watch, SCOPES, self.observed_scopes)
            await tg.start(self.kv.watch, TARGETS, self.observed)
            task_status.started()


def _sel(entries: list[ScopedProduction], version: int) -> str:
    sel = next((e.selector for e in entries if e.version == version), {})
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "every node"
