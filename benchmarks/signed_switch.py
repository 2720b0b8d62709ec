"""The cost of trust: a switch of 100 agents whose versions are signed (2 of 3 authors, checked
by every agent against its trust roots file before it votes) beside the same switch unsigned.

One fleet follows two namespaces, ``plain`` (no rule) and ``signed`` (2 of alice, bob, carol),
so both run on the same processes, connections and disk; switches alternate between them,
through the real version-store (which checks the signatures at publish) and coordinator. The
unsigned switch is this figure's baseline, measured in the same run; the target is ≤ 1.2×.
"""

from __future__ import annotations

import hashlib
import secrets

import msgspec

from benchmarks.paired import paired_figure, paired_switches
from benchmarks.processes import Context, open_bus
from benchmarks.report import Figure
from benchmarks.switch import Watch, config_bytes, store_version
from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.signing import SigningKey
from confbus.schemas.api import store as store_api
from confbus.schemas.policy import Policy
from confbus.schemas.signing import SigningRule, Statement, TrustRoots

BENCH = "signed_switch"
PLAIN, SIGNED = "plain", "signed"


async def _stored(bus: Bus, watch: Watch, ns: str, version: int, keys: list[SigningKey]) -> int:
    """Version ``version`` of ``ns``, signed by ``keys`` (none: unsigned), through the store."""
    content = config_bytes(version)
    change_id = secrets.token_hex(8)
    sha = hashlib.sha256(content).hexdigest()
    signatures = [k.sign(Statement(ns, version, sha, "json", change_id)) for k in keys]
    return await store_version(
        bus, watch, ns, content, change_id=change_id, base=version - 1, signatures=signatures
    )


async def run(ctx: Context) -> list[Figure]:
    n, iterations = (3, 3) if ctx.smoke else (100, 20)
    keys = [SigningKey.generate(name) for name in ("alice", "bob", "carol")]
    rule = SigningRule(keys=[k.trusted() for k in keys], threshold=2)
    roots = ctx.path("trust") / "roots.json"
    roots.write_bytes(
        msgspec.json.encode(TrustRoots(namespaces={PLAIN: SigningRule(threshold=0), SIGNED: rule}))
    )
    nats = ctx.start_nats("nats-signed")
    nodes = [f"n{i:04d}" for i in range(n)]
    bus = await open_bus(nats.url, "bench-signed-switch")
    try:
        ctx.version_store(nats.url, "signed")
        ctx.service("coordinator", nats.url, name="coordinator-signed")
        await call(
            bus,
            store_api.POLICY_SET,
            store_api.PolicySetRequest(policy=Policy(namespace=SIGNED, signing=rule)),
        )
        signers = {PLAIN: [], SIGNED: keys[:2]}

        async def stored(watch: Watch, i: int) -> int:
            return await _stored(bus, watch, watch.namespace, i + 1, signers[watch.namespace])

        root = ctx.path("fleet-signed")
        pair = (PLAIN, SIGNED)
        took = await paired_switches(
            ctx, nats.url, bus, root, nodes, pair, iterations, stored, trust=roots
        )
    finally:
        await bus.close()
    figure = paired_figure(
        BENCH,
        f"signed switch (2 of 3 signatures checked by every agent), {n} agents",
        took,
        (PLAIN, SIGNED),
        "the same switch, unsigned, same fleet and run",
        {"agents": n, "signatures": 2, "iterations": iterations},
    )
    return [figure]
