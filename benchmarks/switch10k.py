"""Switch latency at 10,000 agents (issue 23 item 5): one atomic switch of 10,000 real
``NodeAgent``s in 20 agent hosts of 500 on 2 NATS connections each, beside the raw fan-out of
the same shape (an fsynced JetStream publish and two request/reply rounds to 10,000 subscribers
in 20 processes, with the same file work), interleaved; with the CPU and the memory (RSS) of
the coordinator, nats-server and the hosts per switch, and of the baseline's processes.

It is ``benchmarks.switch``'s measurement at another size, not in ``make bench``'s default set
(it takes several minutes): ``python -m benchmarks switch10k --out DIR``. The agents heartbeat
every 10 s here, not 2 s: 10,000 heartbeats every 2 s are each node's own CPU in a real fleet,
but here they would all be on this machine's two cores, in the middle of every switch.
``CONFBUS_BENCH_10K=AGENTS,HOSTS,SWITCHES`` runs another shape (e.g. ``2000,4,3``).
"""

from __future__ import annotations

import os

from benchmarks.processes import Context
from benchmarks.report import Figure
from benchmarks.switch import SMOKE, Size, figures, run_size


def size() -> Size:
    agents, hosts, switches = (
        int(x) for x in os.environ.get("CONFBUS_BENCH_10K", "10000,20,5").split(",")
    )
    return Size(
        agents,
        switches,
        0,  # publish → applied is the 1000-agent run's: this one is the 2PC itself
        processes=hosts,
        vote_timeout_s=180.0,
        heartbeat_s=10.0,
    )


async def run(ctx: Context) -> list[Figure]:
    return figures([await run_size(ctx, SMOKE[0] if ctx.smoke else size())])
