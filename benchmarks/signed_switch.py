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

from benchmarks.fleets import AgentFleet, AgentSpec, wait_heartbeats
from benchmarks.processes import Context, open_bus
from benchmarks.report import Figure, stats
from benchmarks.switch import Watch, config_bytes, store_version, timed_switch
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
        fleet = AgentFleet(
            ctx,
            nats.url,
            ctx.path("fleet-signed"),
            [AgentSpec(node, (PLAIN, SIGNED)) for node in nodes],
            processes=1 if ctx.smoke else 4,
            connections=1 if ctx.smoke else 2,
            heartbeat_interval=0.5 if ctx.smoke else 2.0,
            tag="agents-signed",
            trust=roots,
        ).start()
        await wait_heartbeats(bus, nodes, timeout=60.0 + n * 0.05)
        await call(
            bus,
            store_api.POLICY_SET,
            store_api.PolicySetRequest(policy=Policy(namespace=SIGNED, signing=rule)),
        )
        watches = {ns: await Watch(bus, ns).start() for ns in (PLAIN, SIGNED)}
        took: dict[str, list[float]] = {PLAIN: [], SIGNED: []}
        rounds: list[tuple[str, list[SigningKey]]] = [(PLAIN, []), (SIGNED, keys[:2])]
        for i in range(iterations + 1):  # the first round warms up leadership and caches
            # Which goes first alternates: the second of a pair starts while the fleet still
            # finishes the first (history copies, heartbeats), and neither may always pay it.
            for ns, signers in rounds if i % 2 else rounds[::-1]:
                v = await _stored(bus, watches[ns], ns, i + 1, signers)
                ms, _ = await timed_switch(bus, watches[ns], ns, v, nodes, 10.0)
                if i:
                    took[ns].append(ms * 1000)
        fleet.stop()
    finally:
        await bus.close()
    figure = Figure(
        benchmark=BENCH,
        name=f"signed switch (2 of 3 signatures checked by every agent), {n} agents",
        unit="ms",
        value=stats(took[SIGNED]),
        baseline=stats(took[PLAIN]),
        baseline_name="the same switch, unsigned, same fleet and run",
        params={"agents": n, "signatures": 2, "iterations": iterations},
        notes="switch request → all applied; switches alternate between the two namespaces, "
        "each first in every other round",
    ).target_ratio(1.2)
    return [figure]
