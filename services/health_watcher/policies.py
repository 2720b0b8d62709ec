"""What the health-watcher knows about namespaces and nodes, besides samples.

- ``PolicyCache``: each namespace's policy from the version-store (``cfg.api.store.policy_get``),
  kept ``ttl_s``; while the store is unreachable the last copy is used (rules rarely change,
  and judging on slightly old rules beats judging on none).
- ``Directory``: what agents say in their heartbeats — which namespaces each node follows, the
  version it applied there (the version of the samples we scrape from that node ourselves), and
  whether it forwards its app's health at all (``--health-url``).
- ``Catalog``: which namespaces exist, for the Alertmanager receiver: the version-store's list
  (``cfg.api.store.namespaces``), or — when the store cannot be asked — what agents follow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import nats.errors

from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError, NotFound, Unavailable
from confbus.schemas.api import store as store_api
from confbus.schemas.node import Heartbeat
from confbus.schemas.policy import Policy

log = logging.getLogger("confbus.health_watcher")

NODE_FORGET_S = 120.0  # a node not heard from this long is forgotten (bounded memory)


@dataclass
class PolicyCache:
    bus: Bus
    ttl_s: float = 5.0
    timeout_s: float = 2.0
    _cache: dict[str, tuple[float, Policy]] = field(default_factory=dict)

    def cached(self, namespace: str) -> Policy | None:
        hit = self._cache.get(namespace)
        return hit[1] if hit else None

    async def get(self, namespace: str, fresh: bool = False) -> Policy:
        """The namespace's policy (its default when the store has none); ``Unavailable`` only
        when the store cannot be asked and no copy was ever fetched. ``fresh``: ask the store
        even if a copy is young (a bake's verdict decides the last known good: it must judge
        by the rules as they are now, not as they were up to ``ttl_s`` ago)."""
        hit = self._cache.get(namespace)
        if not fresh and hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        try:
            policy = await call(
                self.bus,
                store_api.POLICY_GET,
                store_api.PolicyGetRequest(namespace=namespace),
                timeout=self.timeout_s,
            )
        except NotFound:
            policy = Policy(namespace=namespace)
        except (ConfbusError, nats.errors.Error) as exc:
            if hit is not None:
                # Keep judging on the copy we have; ask again after another ttl, not at once
                # (each try may wait out the whole timeout).
                self._cache[namespace] = (time.monotonic(), hit[1])
                log.info("using a cached policy", extra={"namespace": namespace, "error": str(exc)})
                return hit[1]
            raise Unavailable(
                f"cannot read the policy of {namespace!r} from the version-store: {exc}"
            ) from exc
        self._cache[namespace] = (time.monotonic(), policy)
        return policy


@dataclass
class Directory:
    # node -> (monotonic time heard, {namespace: applied version})
    _nodes: dict[str, tuple[float, dict[str, int | None]]] = field(default_factory=dict)
    # node -> whether its agent forwards its app's health (absent: not said, an older agent)
    _forwards: dict[str, bool] = field(default_factory=dict)

    def observe(self, hb: Heartbeat) -> None:
        self._nodes[hb.node] = (
            time.monotonic(),
            {s.namespace: s.applied_version for s in hb.namespaces},
        )
        if hb.health_source is None:
            self._forwards.pop(hb.node, None)
        else:
            self._forwards[hb.node] = hb.health_source

    def forwards_health(self, node: str) -> bool | None:
        """Whether ``node``'s agent sends health samples; None when it did not say (an agent
        from before the field, or one not heard from)."""
        return self._forwards.get(node) if node in self._nodes else None

    def version(self, node: str, namespace: str) -> int | None:
        entry = self._nodes.get(node)
        return None if entry is None else entry[1].get(namespace)

    def versions(self, namespace: str) -> dict[str, int | None]:
        """Each node following ``namespace`` (heard from lately) and the version it applied."""
        cutoff = time.monotonic() - NODE_FORGET_S
        return {
            node: versions[namespace]
            for node, (t, versions) in self._nodes.items()
            if t >= cutoff and namespace in versions
        }

    def namespaces(self) -> set[str]:
        cutoff = time.monotonic() - NODE_FORGET_S
        for node in [n for n, (t, _) in self._nodes.items() if t < cutoff]:
            del self._nodes[node]
            self._forwards.pop(node, None)
        return {ns for _, versions in self._nodes.values() for ns in versions}


@dataclass
class Catalog:
    bus: Bus
    directory: Directory
    refresh_s: float = 30.0
    min_refresh_s: float = 1.0  # an unknown name asks the store again, at most this often
    timeout_s: float = 2.0
    _known: set[str] = field(default_factory=set)
    _fetched_at: float | None = None
    _reachable: bool = False

    async def refresh(self, force: bool = False) -> set[str]:
        now = time.monotonic()
        age = None if self._fetched_at is None else now - self._fetched_at
        if age is not None and age < (self.min_refresh_s if force else self.refresh_s):
            return self._known
        self._fetched_at = now
        try:
            reply = await call(
                self.bus,
                store_api.NAMESPACES,
                store_api.NamespacesRequest(),
                timeout=self.timeout_s,
            )
        except (ConfbusError, nats.errors.Error) as exc:
            self._reachable = False
            log.info("cannot list namespaces", extra={"error": str(exc)})
            return self._known
        self._reachable = True
        self._known = set(reply.namespaces)
        return self._known

    async def exists(self, namespace: str) -> bool | None:
        """True / False, or None when nobody can tell (the store is unreachable and no agent
        follows the namespace)."""
        if namespace in self._known:
            return True
        await self.refresh(force=True)
        if namespace in self._known:
            return True
        if namespace in self.directory.namespaces():
            return True
        return False if self._reachable else None
