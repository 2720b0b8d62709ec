"""The cost of variants: a switch of 100 agents across 4 variants (one version, a base and four
overlays keyed by ``dc``, each node staging its own entry) beside the same switch of one
variant (docs/design.md §2.6).

One fleet follows two namespaces, ``plain`` (one content for all) and ``variants`` (a base of
the same size and shape plus an overlay per datacenter ``d0``…``d3``, 25 nodes each), so both
run on the same processes, connections and disk; switches alternate between them, through the
real version-store (which validates every variant the members produce at publish) and
coordinator (which reads the participants' labels and renders each variant once per prepare).
The nodes' labels are their ``node.<node>`` records in ``CFG_STATE``, written here as the
distributor's membership would write them from heartbeats. After the last switch the live files
are read back: each node must hold its own variant, and four different variants must be live.
The single-variant switch is this figure's baseline, measured in the same run; the target is
≤ 1.2×.
"""

from __future__ import annotations

import hashlib
import json

from benchmarks.fleets import AgentFleet, AgentSpec, live_file, wait_heartbeats
from benchmarks.processes import Context, open_bus
from benchmarks.report import Figure, stats
from benchmarks.switch import Watch, config_bytes, store_version, timed_switch
from confbus.runtime.bus import Bus
from confbus.runtime.kv import StateKV
from confbus.schemas.node import NamespaceState
from confbus.schemas.state import NodeRecord, node_key
from confbus.schemas.streams import CFG_STATE
from confbus.schemas.variants import Overlay, VariantSet, encode_variants, render

BENCH = "variants_switch"
PLAIN, VARIANTS = "plain", "variants"
DCS = ("d0", "d1", "d2", "d3")


def labels_of(index: int) -> dict[str, str]:
    return {"dc": DCS[index % len(DCS)]}


def version_of(version: int) -> VariantSet:
    """A base of the plain namespace's size and shape, and one overlay per datacenter."""
    overlays = [
        Overlay(
            selector={"dc": dc},
            content=json.dumps({"dc": dc, "pool": {"max": 16 * (k + 1)}, "version": version}),
        )
        for k, dc in enumerate(DCS)
    ]
    return VariantSet(format="json", base=config_bytes(version).decode(), overlays=overlays)


async def _record_labels(bus: Bus, nodes: list[str]) -> None:
    kv = await StateKV.open(bus, CFG_STATE)
    states = [NamespaceState(namespace=ns) for ns in (PLAIN, VARIANTS)]
    for i, node in enumerate(nodes):
        rec = NodeRecord(node=node, labels=labels_of(i), namespaces=states)
        await kv.put(node_key(node), rec)


async def run(ctx: Context) -> list[Figure]:
    n, iterations = (4, 3) if ctx.smoke else (100, 20)
    nats = ctx.start_nats("nats-variants")
    nodes = [f"n{i:04d}" for i in range(n)]
    root = ctx.path("fleet-variants")
    bus = await open_bus(nats.url, "bench-variants-switch")
    try:
        ctx.version_store(nats.url, "variants")
        ctx.service("coordinator", nats.url, name="coordinator-variants")
        await _record_labels(bus, nodes)
        fleet = AgentFleet(
            ctx,
            nats.url,
            root,
            [AgentSpec(node, (PLAIN, VARIANTS)) for node in nodes],
            processes=1 if ctx.smoke else 4,
            connections=1 if ctx.smoke else 2,
            heartbeat_interval=0.5 if ctx.smoke else 2.0,
            tag="agents-variants",
        ).start()
        await wait_heartbeats(bus, nodes, timeout=60.0 + n * 0.05)
        watches = {ns: await Watch(bus, ns).start() for ns in (PLAIN, VARIANTS)}
        took: dict[str, list[float]] = {PLAIN: [], VARIANTS: []}
        last = version_of(0)
        for i in range(iterations + 1):  # the first round warms up leadership and caches
            # Which goes first alternates: the second of a pair starts while the fleet still
            # finishes the first (history copies, heartbeats), and neither may always pay it.
            for ns in (PLAIN, VARIANTS) if i % 2 else (VARIANTS, PLAIN):
                if ns == VARIANTS:
                    last = version_of(i + 1)
                    content = encode_variants(last)
                else:
                    content = config_bytes(i + 1)
                v = await store_version(bus, watches[ns], ns, content, base=i)
                seconds, _ = await timed_switch(bus, watches[ns], ns, v, nodes, 10.0)
                if i:
                    took[ns].append(seconds * 1000)
        fleet.stop()
    finally:
        await bus.close()
    live = {node: live_file(root, node, VARIANTS).read_bytes() for node in nodes}
    wrong = [node for i, node in enumerate(nodes) if live[node] != render(last, labels_of(i))]
    if wrong:
        raise RuntimeError(f"nodes not running their own variant: {wrong[:5]}")
    variants_live = len({hashlib.sha256(b).digest() for b in live.values()})
    if variants_live != min(n, len(DCS)):
        raise RuntimeError(f"{variants_live} variants live, expected {len(DCS)}")
    figure = Figure(
        benchmark=BENCH,
        name=f"switch of {n} agents across {len(DCS)} variants (each node its own bytes)",
        unit="ms",
        value=stats(took[VARIANTS]),
        baseline=stats(took[PLAIN]),
        baseline_name="the same switch, one variant, same fleet and run",
        params={"agents": n, "variants": variants_live, "iterations": iterations},
        notes="switch request → all applied; switches alternate between the two namespaces, "
        "each first in every other round; live files checked against render() afterwards",
    ).target_ratio(1.2)
    return [figure]
