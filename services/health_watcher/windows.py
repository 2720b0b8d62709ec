"""The bounded in-memory sample windows: namespace → version → node → points, oldest first.

Every replica keeps every namespace's samples (it reads all of ``CFG_HEALTH``), so any replica
can answer a verdict and a replica taking over a namespace judges on full windows at once.
Bounds (invariant 7): points older than ``horizon_s`` are dropped, at most
``max_points`` per (namespace, version, node), at most ``max_versions`` versions per namespace
(the most recently heard from are kept).
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from confbus.health_watcher.rules import Point

# namespace -> version (None: the node has no config yet) -> node -> points
_Nodes = dict[str, deque[Point]]


@dataclass
class SampleStore:
    horizon_s: float = 900.0
    max_points: int = 2048
    max_versions: int = 8
    _data: dict[str, dict[int | None, _Nodes]] = field(default_factory=dict)
    _latest: dict[str, float] = field(default_factory=dict)  # namespace -> newest point

    def add(self, namespace: str, version: int | None, node: str, point: Point) -> None:
        nodes = self._data.setdefault(namespace, {}).setdefault(version, {})
        pts = nodes.get(node)
        if pts is None:
            pts = nodes[node] = deque(maxlen=self.max_points)
        if not pts or pts[-1].t <= point.t:
            pts.append(point)
        else:  # rare: two publishers for one node; keep the series ordered
            items = list(pts)
            bisect.insort(items, point, key=lambda p: p.t)
            pts.clear()
            pts.extend(items[-self.max_points :])
        self._latest[namespace] = max(self._latest.get(namespace, point.t), point.t)
        if len(self._data[namespace]) > self.max_versions:
            self._cap_versions(namespace)

    def namespaces(self) -> set[str]:
        return set(self._data)

    def versions(self, namespace: str) -> list[int]:
        return sorted(v for v in self._data.get(namespace, {}) if v is not None)

    def series(
        self,
        namespace: str,
        version: int | None,
        nodes: Iterable[str] | None = None,
        start: float | None = None,
    ) -> dict[str, list[Point]]:
        """Each node's points (oldest first); only those at or after ``start`` if given — read
        from the newest end, so a short window costs its own size, not the horizon's."""
        by_node = self._data.get(namespace, {}).get(version, {})
        wanted = by_node.keys() if nodes is None else [n for n in nodes if n in by_node]
        if start is None:
            return {n: list(by_node[n]) for n in wanted}
        out: dict[str, list[Point]] = {}
        for n in wanted:
            recent = list(itertools.takewhile(lambda p: p.t >= start, reversed(by_node[n])))
            recent.reverse()
            out[n] = recent
        return out

    def prune(self, now: float) -> None:
        cutoff = now - self.horizon_s
        for ns in list(self._data):
            versions = self._data[ns]
            for version in list(versions):
                nodes = versions[version]
                for node in list(nodes):
                    pts = nodes[node]
                    while pts and pts[0].t < cutoff:
                        pts.popleft()
                    if not pts:
                        del nodes[node]
                if not nodes:
                    del versions[version]
            if not versions:
                del self._data[ns]
                self._latest.pop(ns, None)

    def _cap_versions(self, namespace: str) -> None:
        versions = self._data[namespace]

        def newest(v: int | None) -> float:
            return max((pts[-1].t for pts in versions[v].values() if pts), default=0.0)

        keep = sorted(versions, key=newest, reverse=True)[: self.max_versions]
        for v in list(versions):
            if v not in keep:
                del versions[v]
