"""Who is alive, from agent heartbeats (``cfg.node.<node>.heartbeat``).

A node is *live* while its heartbeats keep coming (within 3 intervals), *suspect* after
that, and *gone* after 10 intervals. Only live nodes are targets of a rollout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from schemas.node import Heartbeat, NamespaceState

Liveness = Literal["live", "suspect", "gone"]
SUSPECT_AFTER = 3.0  # heartbeat intervals
GONE_AFTER = 10.0


@dataclass
class Member:
    heartbeat: Heartbeat
    seen: float  # monotonic time of the last heartbeat

    def liveness(self, now: float) -> Liveness:
        missed = (now - self.seen) / max(self.heartbeat.interval_s, 0.1)
        if missed <= SUSPECT_AFTER:
            return "live"
        return "suspect" if missed <= GONE_AFTER else "gone"

    def state(self, namespace: str) -> NamespaceState | None:
        for s in self.heartbeat.namespaces:
            if s.namespace == namespace:
                return s
        return None


@dataclass
class Membership:
    members: dict[str, Member] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    async def warm(self, interval_s: float = 2.0) -> None:
        """Just after start we have heard from nobody: wait one and a half heartbeat
        intervals before judging who is live, or a restart would roll out to no one."""
        import anyio

        remaining = self.started + 1.5 * interval_s - time.monotonic()
        if remaining > 0:
            await anyio.sleep(remaining)

    def observe(self, hb: Heartbeat) -> Member:
        member = Member(hb, time.monotonic())
        self.members[hb.node] = member
        return member

    def live_nodes(self, namespace: str, selector: dict[str, str] | None = None) -> list[str]:
        now = time.monotonic()
        out = []
        for node, m in self.members.items():
            if m.liveness(now) != "live" or m.state(namespace) is None:
                continue
            labels = m.heartbeat.labels
            if selector and any(labels.get(k) != v for k, v in selector.items()):
                continue
            out.append(node)
        return sorted(out)

    def forget_gone(self) -> None:
        now = time.monotonic()
        for node in [n for n, m in self.members.items() if m.liveness(now) == "gone"]:
            del self.members[node]
