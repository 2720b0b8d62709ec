"""What the distributor asks the version-store (``cfg.api.store.*``) and the coordinator
(``cfg.api.txn.*``), typed and with the timeouts it needs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec

from schemas.api import store as store_api
from schemas.api import txn as txn_api
from schemas.policy import Policy
from schemas.versions import VersionInfo
from services.runtime.api import call
from services.runtime.bus import Bus
from services.runtime.errors import NotFound


class VersionHints(msgspec.Struct, frozen=True, kw_only=True):
    """``store.get``'s reply, read leniently: a store that hands back a version's rollout
    overrides (``strategy``/``selector``) beside ``info`` is understood; one that does not is
    fine too (the overrides then come from the ``version.created`` event)."""

    info: VersionInfo
    strategy: str | None = None
    selector: dict[str, str] | None = None


@dataclass
class Store:
    bus: Bus
    policy_ttl_s: float = 5.0
    _policies: dict[str, tuple[float, Policy]] = field(default_factory=dict)

    async def version(self, namespace: str, ref: str | int) -> VersionHints:
        return await call(
            self.bus,
            store_api.SERVICE,
            "get",
            store_api.GetRequest(namespace=namespace, ref=str(ref), content=False),
            VersionHints,
            timeout=10.0,
        )

    async def production(self, namespace: str) -> VersionInfo | None:
        try:
            return (await self.version(namespace, "production")).info
        except NotFound:
            return None

    async def policy(self, namespace: str, *, fresh: bool = False) -> Policy:
        cached = self._policies.get(namespace)
        if not fresh and cached is not None and time.monotonic() - cached[0] < self.policy_ttl_s:
            return cached[1]
        policy = await call(
            self.bus,
            store_api.SERVICE,
            "policy_get",
            store_api.PolicyGetRequest(namespace=namespace),
            Policy,
            timeout=10.0,
        )
        self._policies[namespace] = (time.monotonic(), policy)
        return policy

    async def promote(self, namespace: str, version: int, actor: str, reason: str) -> VersionInfo:
        reply = await call(
            self.bus,
            store_api.SERVICE,
            "promote",
            store_api.PromoteRequest(
                namespace=namespace, version=version, actor=actor, reason=reason
            ),
            store_api.VersionReply,
            timeout=10.0,
        )
        return reply.info

    async def mark_good(self, namespace: str, version: int, actor: str, reason: str) -> None:
        await call(
            self.bus,
            store_api.SERVICE,
            "mark_good",
            store_api.MarkGoodRequest(
                namespace=namespace, version=version, actor=actor, reason=reason
            ),
            store_api.VersionReply,
            timeout=10.0,
        )

    async def switch(
        self,
        namespace: str,
        version: int,
        nodes: list[str],
        timeout_s: float,
        actor: str,
        reason: str = "",
    ) -> txn_api.SwitchReply:
        """One atomic switch by the coordinator. The request outlives the vote deadline: the
        coordinator may queue it behind another transaction of the namespace."""
        return await call(
            self.bus,
            txn_api.SERVICE,
            "switch",
            txn_api.SwitchRequest(
                namespace=namespace,
                version=version,
                nodes=nodes,
                timeout_s=timeout_s,
                actor=actor,
                reason=reason,
            ),
            txn_api.SwitchReply,
            timeout=2 * timeout_s + 15.0,
        )

    async def resolve(self, namespace: str, txid: str) -> txn_api.ResolveReply:
        return await call(
            self.bus,
            txn_api.SERVICE,
            "resolve",
            txn_api.ResolveRequest(namespace=namespace, txid=txid),
            txn_api.ResolveReply,
            timeout=10.0,
        )
