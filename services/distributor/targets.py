"""Each node's **target version** (docs/design.md §3.6): the highest version among the committed
transactions that included it, and the namespace's production version *for that node* —
whichever is higher. The rule is ``explain`` (and ``effective``, its number), here only.

A version rolled out with a selector is production for the nodes the selector matched: the
others keep the production version they had (``scope.<ns>``, ``ProductionScopes``, written by
the rollout driver before it promotes). A version promoted otherwise (the rollbacker's, an
operator's) is production for every node.

The committed-transaction part lives in ``CFG_STATE`` under ``target.<ns>``, one record per
namespace (raised, never lowered, by compare-and-set: a wave's nodes in one write): written from
``txn.committed`` events, whoever asked for the transaction (a rollout wave, a catch-up, the
rollbacker), and directly by the rollout driver right after a wave commits. Every replica
watches ``target.>`` to keep the whole map in memory (and reads the per-node keys
``target.<ns>.<node>`` of the layout before, no longer written). The production part comes
from the version-store and ``version.promoted`` events; it is not copied into every node's
target, so a promotion costs one read, not a write.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
import msgspec
from anyio.abc import TaskStatus

from confbus.distributor.store import Store
from confbus.distributor.strategy import matches
from confbus.runtime.kv import Entry, StateKV
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.state import (
    SCOPES,
    TARGETS,
    NamespaceTargets,
    ProductionScopes,
    ScopedProduction,
    TargetGroup,
    decode_scopes,
    decode_target,
    decode_targets,
    scope_key,
    scope_of,
    target_key,
    target_of,
    targets_key,
)
from confbus.schemas.versions import VersionInfo

log = logging.getLogger("confbus.distributor")


@dataclass
class Targets:
    kv: StateKV
    store: Store
    # Each namespace's ``target.<ns>`` with its revision (from the watch or our own write): a
    # raise compare-and-sets against it without reading the key first; if the key moved
    # meanwhile the write fails and ``mutate`` reads.
    records: dict[str, Entry[NamespaceTargets]] = field(default_factory=dict)
    txn: dict[str, dict[str, int]] = field(default_factory=dict)  # node → version, per ns
    legacy: dict[str, dict[str, int]] = field(default_factory=dict)  # target.<ns>.<node> keys
    production: dict[str, VersionInfo] = field(default_factory=dict)
    scopes: dict[str, Entry[ProductionScopes]] = field(default_factory=dict)
    _sha: dict[tuple[str, int], str] = field(default_factory=dict)
    # One raise of a namespace at a time in this process: the driver and the ``txn.committed``
    # handler raise the same nodes to the same version at the same moment, and the second to
    # come finds them raised instead of racing the first to the key (a lost compare-and-set
    # and a read).
    _locks: dict[str, anyio.Lock] = field(default_factory=dict)

    # -- reading -------------------------------------------------------------------------------

    def txn_target(self, namespace: str, node: str) -> int | None:
        found = [
            v
            for v in (
                self.txn.get(namespace, {}).get(node),
                self.legacy.get(namespace, {}).get(node),
            )
            if v is not None
        ]
        return max(found) if found else None

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
        """Raise the nodes' committed-transaction target to ``version`` (never lower it): one
        compare-and-set of ``target.<ns>`` for all of them."""
        if not self._below(namespace, nodes, version):
            return
        async with self._locks.setdefault(namespace, anyio.Lock()):
            if not self._below(namespace, nodes, version):
                return  # the raise we waited for (the same wave's, from the other raiser)
            entry, _ = await self.kv.mutate(
                targets_key(namespace),
                decode_targets,
                lambda cur: raised(cur, nodes, version, txid),
                hint=self.records.get(namespace),
            )
            self._remember(namespace, entry)

    def _below(self, namespace: str, nodes: list[str], version: int) -> bool:
        return any((self.txn_target(namespace, n) or 0) < version for n in nodes)

    def _remember(self, namespace: str, entry: Entry[NamespaceTargets]) -> None:
        cur = self.records.get(namespace)
        if cur is not None and entry.revision < cur.revision:
            return
        self.records[namespace] = entry
        self.txn[namespace] = entry.value.versions() if entry.value is not None else {}

    def forget(self, namespace: str, node: str) -> None:
        self.txn.get(namespace, {}).pop(node, None)
        self.legacy.get(namespace, {}).pop(node, None)

    # -- the watch -----------------------------------------------------------------------------

    def observed(self, key: str, value: bytes | None, revision: int) -> None:
        """A ``target.*`` change seen by the watch (ours or another replica's)."""
        ns, node = target_of(key)
        if node:  # the per-node layout before target.<ns>
            self._observed_legacy(ns, node, value, key)
            return
        cur = self.records.get(ns)
        if cur is not None and cur.revision >= revision:
            return  # our own write coming back (or older): nothing to decode
        try:
            decoded = decode_targets(value) if value is not None else None
        except DECODE_ERRORS:
            log.warning("unreadable targets record", extra={"key": key})
            return
        self._remember(ns, Entry(decoded, revision))

    def _observed_legacy(self, ns: str, node: str, value: bytes | None, key: str) -> None:
        per_ns = self.legacy.setdefault(ns, {})
        if value is None:
            per_ns.pop(node, None)
            return
        try:
            per_ns[node] = decode_target(value).version
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


def raised(
    cur: NamespaceTargets | None, nodes: list[str], version: int, txid: str
) -> NamespaceTargets | None:
    """``cur`` with ``nodes`` raised to ``version`` (each node kept in one group: its highest);
    None if none of them is below it."""
    have = cur.versions() if cur is not None else {}
    up = [n for n in dict.fromkeys(nodes) if have.get(n, 0) < version]
    if not up:
        return None
    moved = set(up)
    groups: list[TargetGroup] = []
    for g in cur.groups if cur is not None else []:
        rest = [n for n in g.nodes if n not in moved]
        if rest:
            groups.append(
                g if len(rest) == len(g.nodes) else msgspec.structs.replace(g, nodes=rest)
            )
    same = next((i for i, g in enumerate(groups) if (g.version, g.txid) == (version, txid)), None)
    if same is None:
        groups.append(TargetGroup(version=version, txid=txid, nodes=up))
    else:
        g = groups[same]
        groups[same] = msgspec.structs.replace(g, nodes=[*g.nodes, *up])
    return NamespaceTargets(groups=groups)


async def forget_target(kv: StateKV, namespace: str, node: str) -> None:
    """Drop ``node`` from the namespace's targets (a forgotten node), in either layout."""

    def without(cur: NamespaceTargets | None) -> NamespaceTargets | None:
        if cur is None or node not in cur.versions():
            return None
        groups = [
            msgspec.structs.replace(g, nodes=[n for n in g.nodes if n != node]) for g in cur.groups
        ]
        return NamespaceTargets(groups=[g for g in groups if g.nodes])

    await kv.mutate(targets_key(namespace), decode_targets, without)
    await kv.delete(target_key(namespace, node))


def _sel(entries: list[ScopedProduction], version: int) -> str:
    sel = next((e.selector for e in entries if e.version == version), {})
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "every node"
