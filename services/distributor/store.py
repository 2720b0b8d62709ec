"""What the distributor asks the version-store (``cfg.api.store.*``) and the coordinator
(``cfg.api.txn.*``), typed and with the timeouts it needs."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.errors import NotFound, Unavailable
from confbus.schemas.api import store as store_api
from confbus.schemas.api import txn as txn_api
from confbus.schemas.policy import Policy
from confbus.schemas.versions import VersionInfo

# Reads kept for ``max_age_s`` callers; cleared whole when full (it is only a shortcut).
RECENT_READS = 1024


@dataclass
class Store:
    """``max_age_s``: an answer read at most this long ago will do (0: ask now). Its age is
    counted from when it was asked for, so it is never younger than it says."""

    bus: Bus
    policy_ttl_s: float = 5.0
    _policies: dict[str, tuple[float, Policy]] = field(default_factory=dict)
    _versions: dict[tuple[str, str], tuple[float, VersionInfo]] = field(default_factory=dict)

    async def version(
        self, namespace: str, ref: str | int, *, max_age_s: float = 0.0
    ) -> VersionInfo:
        request = store_api.GetRequest(namespace=namespace, ref=str(ref), content=False)

        async def ask() -> VersionInfo:
            return (await call(self.bus, store_api.GET, request)).info

        return await _recent(self._versions, (namespace, str(ref)), max_age_s, ask)

    async def content(self, namespace: str, version: int) -> tuple[VersionInfo, bytes]:
        """A version and its stored bytes, checked against its sha256."""
        request = store_api.GetRequest(namespace=namespace, ref=str(version))
        reply = await call(self.bus, store_api.GET, request)
        if reply.content is None or hashlib.sha256(reply.content).hexdigest() != reply.info.sha256:
            raise Unavailable(f"{namespace} v{version}: the store's bytes are not its sha256")
        return reply.info, reply.content

    async def production(self, namespace: str, *, max_age_s: float = 0.0) -> VersionInfo | None:
        try:
            return await self.version(namespace, "production", max_age_s=max_age_s)
        except NotFound:
            self._versions.pop((namespace, "production"), None)
            return None

    async def policy(self, namespace: str, *, max_age_s: float | None = None) -> Policy:
        """``max_age_s`` None: the policy TTL."""
        request = store_api.PolicyGetRequest(namespace=namespace)
        return await _recent(
            self._policies,
            namespace,
            self.policy_ttl_s if max_age_s is None else max_age_s,
            lambda: call(self.bus, store_api.POLICY_GET, request),
            bound=None,  # one per namespace
        )

    async def promote(self, namespace: str, version: int, actor: str, reason: str) -> VersionInfo:
        request = store_api.PromoteRequest(
            namespace=namespace, version=version, actor=actor, reason=reason
        )
        return (await call(self.bus, store_api.PROMOTE, request)).info

    async def mark_good(self, namespace: str, version: int, actor: str, reason: str) -> None:
        request = store_api.MarkGoodRequest(
            namespace=namespace, version=version, actor=actor, reason=reason
        )
        await call(self.bus, store_api.MARK_GOOD, request)

    async def switch(
        self,
        namespace: str,
        version: int,
        nodes: list[str],
        timeout_s: float,
        actor: str,
        reason: str = "",
        sha256: str | None = None,
    ) -> txn_api.SwitchReply:
        """One atomic switch by the coordinator (its deadline outlives the vote deadline: the
        coordinator may queue it behind another transaction of the namespace). ``sha256``:
        the version's as we read it (the coordinator checks the bytes it fetches against it)."""
        return await call(
            self.bus,
            txn_api.SWITCH,
            txn_api.SwitchRequest(
                namespace=namespace,
                version=version,
                nodes=nodes,
                timeout_s=timeout_s,
                actor=actor,
                reason=reason,
                sha256=sha256,
            ),
        )

    async def resolve(self, namespace: str, txid: str) -> txn_api.ResolveReply:
        return await call(
            self.bus, txn_api.RESOLVE, txn_api.ResolveRequest(namespace=namespace, txid=txid)
        )


K = TypeVar("K")
V = TypeVar("V")


async def _recent(
    cache: dict[K, tuple[float, V]],
    key: K,
    max_age_s: float,
    ask: Callable[[], Awaitable[V]],
    bound: int | None = RECENT_READS,
) -> V:
    """The answer cached under ``key`` if asked for at most ``max_age_s`` ago, else ``ask``'s
    (cached, with the time it was asked for: never younger than it says; the cache is
    cleared whole once it holds ``bound`` answers)."""
    hit = cache.get(key)
    if max_age_s > 0 and hit is not None and time.monotonic() - hit[0] <= max_age_s:
        return hit[1]
    asked = time.monotonic()
    value = await ask()
    if bound is not None and len(cache) >= bound:
        cache.clear()
    cache[key] = (asked, value)
    return value
