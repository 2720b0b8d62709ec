"""An agent host: several ``NodeAgent``s in one process on one connection (benchmarks, tests).

Each agent keeps what is its own — its reading of ``CFG_TXN``, its votes and files, its
heartbeats, its node id's guard and re-sync requests — and the host runs once, for all of them,
what serves them alike: the in-doubt resolution (``confbus.agent.node.resolve_doubts``) and the
last known good (``confbus.agent.lastgood.keep_last_good``: one subscription and one check with
the store per namespace, not one per agent). A host of 250 agents held 250 of each loop, their
subscriptions and their store calls every 30 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from anyio.abc import TaskGroup

from confbus.agent.lastgood import keep_last_good
from confbus.agent.node import NodeAgent, resolve_doubts
from confbus.runtime.bus import Bus


async def run_agents(
    bus: Bus, agents: Sequence[NodeAgent], tg: TaskGroup, *, spread_s: float = 0.0
) -> None:
    """Start ``agents`` on ``bus`` in ``tg``, side by side (each waits ``JOIN_PROBE_S`` for
    another agent of its node id before it is started), their starts spread over ``spread_s``;
    returns once every one has started."""
    gap = spread_s / len(agents) if agents else 0.0
    async with anyio.create_task_group() as joining:
        for agent in agents:
            agent.hosted = True
            joining.start_soon(tg.start, agent.run, bus)
            if gap:
                await anyio.sleep(gap)
    tg.start_soon(resolve_doubts, bus, agents)
    tg.start_soon(keep_last_good, bus, agents)
