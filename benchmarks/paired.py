"""A kind of switch against the plain switch, in one fleet and one run: one fleet of agents
follows two namespaces, switches alternate between them, and the plain one is the figure's
baseline (benchmarks/signed_switch.py, benchmarks/variants_switch.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.fleets import AgentFleet, AgentSpec, wait_heartbeats
from benchmarks.processes import Context
from benchmarks.report import Figure, stats
from benchmarks.switch import Watch, timed_switch
from confbus.runtime.bus import Bus

# The order of a round alternates: the second switch of a round starts while the fleet still
# finishes the first (history copies, heartbeats), and neither namespace may always pay it.
ALTERNATING = "switches alternate between the two namespaces, each first in every other round"


async def paired_switches(
    ctx: Context,
    url: str,
    bus: Bus,
    root: Path,
    nodes: list[str],
    pair: tuple[str, str],
    iterations: int,
    store: Callable[[Watch, int], Awaitable[int]],
    *,
    trust: Path | None = None,
) -> dict[str, list[float]]:
    """Milliseconds from switch request to all applied on ``nodes``, per namespace of ``pair``
    (plain first), over ``iterations`` rounds after a warm-up round. The fleet (on the
    nats-server at ``url``, in ``root``, with ``trust`` roots if any) is started here;
    ``store(watch, i)`` stores round ``i``'s version of ``watch.namespace``, returns its number."""
    plain, other = pair
    fleet = AgentFleet(
        ctx,
        url,
        root,
        [AgentSpec(node, pair) for node in nodes],
        processes=1 if ctx.smoke else 4,
        connections=1 if ctx.smoke else 2,
        heartbeat_interval=0.5 if ctx.smoke else 2.0,
        tag=f"agents-{other}",
        trust=trust,
    ).start()
    await wait_heartbeats(bus, nodes, timeout=60.0 + len(nodes) * 0.05)
    watches = {ns: await Watch(bus, ns).start() for ns in pair}
    took: dict[str, list[float]] = {plain: [], other: []}
    for i in range(iterations + 1):  # the first round warms up leadership and caches
        for ns in pair if i % 2 else pair[::-1]:
            v = await store(watches[ns], i)
            seconds, _ = await timed_switch(bus, watches[ns], ns, v, nodes, 10.0)
            if i:
                took[ns].append(seconds * 1000)
    fleet.stop()
    return took


def paired_figure(
    bench: str,
    name: str,
    took: dict[str, list[float]],
    pair: tuple[str, str],
    baseline_name: str,
    params: dict[str, Any],
    notes: str = "",
) -> Figure:
    """The figure of ``paired_switches``: the other namespace's switch against the plain one's;
    the target, at most 1.2× the plain switch."""
    plain, other = pair
    return Figure(
        benchmark=bench,
        name=name,
        unit="ms",
        value=stats(took[other]),
        baseline=stats(took[plain]),
        baseline_name=baseline_name,
        params=params,
        notes=f"switch request → all applied; {ALTERNATING}{notes}",
    ).target_ratio(1.2)
