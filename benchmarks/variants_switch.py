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

from benchmarks.fleets import live_file
from benchmarks.paired import paired_figure, paired_switches
from benchmarks.processes import Context, open_bus
from benchmarks.report import Figure
from benchmarks.switch import Watch, config_bytes, store_version
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
        last = version_of(0)

        async def stored(watch: Watch, i: int) -> int:
            nonlocal last
            if watch.namespace == VARIANTS:
                last = version_of(i + 1)
                content = encode_variants(last)
            else:
                content = config_bytes(i + 1)
            return await store_version(bus, watch, watch.namespace, content, base=i)

        pair = (PLAIN, VARIANTS)
        took = await paired_switches(ctx, nats.url, bus, root, nodes, pair, iterations, stored)
    finally:
        await bus.close()
    live = {node: live_file(root, node, VARIANTS).read_bytes() for node in nodes}
    wrong = [node for i, node in enumerate(nodes) if live[node] != render(last, labels_of(i))]
    if wrong:
        raise RuntimeError(f"nodes not running their own variant: {wrong[:5]}")
    variants_live = len({hashlib.sha256(b).digest() for b in live.values()})
    if variants_live != min(n, len(DCS)):
        raise RuntimeError(f"{variants_live} variants live, expected {len(DCS)}")
    figure = paired_figure(
        BENCH,
        f"switch of {n} agents across {len(DCS)} variants (each node its own bytes)",
        took,
        (PLAIN, VARIANTS),
        "the same switch, one variant, same fleet and run",
        {"agents": n, "variants": variants_live, "iterations": iterations},
        "; live files checked against render() afterwards",
    )
    return [figure]
