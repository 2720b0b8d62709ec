"""An agent host: several ``NodeAgent``s in one process (benchmarks, tests).

Each agent keeps what is its own — its position in ``CFG_TXN`` and what it does with each
record, its votes and files, its heartbeats, its node id's guard and re-sync requests — and the
host runs once, for all of them, what serves them alike: the reading of ``CFG_TXN`` (one
consumer per namespace, each record fanned out to the agents: ``confbus.agent.txnfeed``), the
in-doubt resolution (``confbus.agent.node.resolve_doubts``) and the last known good
(``confbus.agent.lastgood.keep_last_good``: one subscription and one check with the store per
namespace, not one per agent). A host of 250 agents held 250 of each loop, their subscriptions,
their consumers and their store calls every 30 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from anyio.abc import TaskGroup

from confbus.agent.lastgood import keep_last_good
from confbus.agent.node import NodeAgent, resolve_doubts
from confbus.agent.txnfeed import TxnReader
from confbus.runtime.bus import Bus


async def run_agents(
    bus: Bus,
    agents: Sequence[NodeAgent],
    tg: TaskGroup,
    *,
    spread_s: float = 0.0,
    txn: TxnReader | None = None,
) -> None:
    """Start ``agents`` on ``bus`` in ``tg``, side by side (each waits ``JOIN_PROBE_S`` for
    another agent of its node id before it is started), their starts spread over ``spread_s``;
    returns once every one has started. They read ``CFG_TXN`` through ``txn`` (a host with
    several connections shares one between them), else through a reader of their own on
    ``bus``."""
    reader = txn or TxnReader(bus, tg)
    gap = spread_s / len(agents) if agents else 0.0
    async with anyio.create_task_group() as joining:
        for agent in agents:
            agent.host_txn = reader
            joining.start_soon(tg.start, agent.run, bus)
            if gap:
                await anyio.sleep(gap)
    tg.start_soon(resolve_doubts, bus, agents)
    tg.start_soon(keep_last_good, bus, agents)
