"""The console's own cost, beside the bus calls it renders.

- **history page**: ``GET /ns/<ns>?limit=10000`` — every one of 10,000 versions in one page —
  through the real console (uvicorn, Starlette, Jinja2) over HTTP keep-alive; baseline: the
  calls it makes on the bus, made by the Python client from this process (``history`` in
  pages of 1,000, and the policy).
- **fleet page**: ``GET /ns/<ns>/fleet`` with 1,000 nodes (heartbeats from this process: the
  distributor counts them as it counts agents); baseline: ``cfg.api.dist.status`` for the
  same namespace.
- the same two through the JSON API, to see what the HTML costs over JSON.

Target: each page renders in under 300 ms (median) — the console's own part, read from the
``Server-Timing`` header it sends (``render`` beside ``bus``, the time the same request waited
on its bus calls). ``python -m benchmarks console`` runs it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import anyio
import httpx

from benchmarks.processes import Context, open_bus
from benchmarks.report import Figure, stats
from confbus.client import Client
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.schemas import subjects, tokens
from confbus.schemas.node import Heartbeat, NamespaceState
from confbus.schemas.policy import Policy
from confbus.version_store.storage import NewVersion, open_store

BENCH = "console"
HISTORY_NS = "hist"
FLEET_NS = "fleet"
TARGET_MS = 300.0


def _ms(samples: list[float]) -> list[float]:
    return [s * 1000.0 for s in samples]


async def _fill(store_url: str, versions: int) -> None:
    async with open_store(store_url) as store:
        for start in range(0, versions, 500):
            batch = [
                NewVersion.build(
                    HISTORY_NS,
                    f"v-{i}",
                    json.dumps({"i": i, "pad": "x" * 100}).encode(),
                    author=f"user-{i % 7}",
                    message=f"change number {i}",
                )
                for i in range(start, min(versions, start + 500))
            ]
            results = await store.append(batch)
            assert all(r.outcome == "stored" for r in results), results[:1]
        await store.set_policy(Policy(namespace=FLEET_NS, format="json"))


async def _heartbeats(bus: Bus, nodes: int) -> None:
    sha = "0" * 64
    for i in range(nodes):
        node = f"node-{i:04d}"
        beat = Heartbeat(
            node=node,
            labels={"dc": f"dc{i % 3}", "rack": f"r{i % 20}"},
            namespaces=[NamespaceState(namespace=FLEET_NS, applied_version=1, sha256=sha)],
            interval_s=30.0,
            started_at=datetime.now(UTC),
        )
        await bus.nc.publish(subjects.heartbeat(node), encode(beat))
    await bus.nc.flush()


async def _timed(
    n: int, calls: dict[str, Callable[[], Awaitable[object]]]
) -> dict[str, tuple[float, list[float]]]:
    """Per call: its first time (cold: connections, templates, the console's row cache) and
    ``n`` times after. The calls take turns, so a busy moment of the machine falls on all of
    them alike rather than on whichever ran then."""
    out: dict[str, tuple[float, list[float]]] = {}
    for name, call in calls.items():
        t0 = time.perf_counter()
        await call()
        out[name] = (time.perf_counter() - t0, [])
    for _ in range(n):
        for name, call in calls.items():
            t0 = time.perf_counter()
            await call()
            out[name][1].append(time.perf_counter() - t0)
    return out


async def run(ctx: Context) -> list[Figure]:
    versions, nodes, reads = (1_000, 100, 5) if ctx.smoke else (10_000, 1_000, 30)
    nats = ctx.start_nats()
    store_url = f"sqlite:///{ctx.path('store') / 'store.db'}"
    setup = await open_bus(nats.url)
    try:
        await _fill(store_url, versions)
        ctx.service("version_store", nats.url, "--store", store_url)
        ctx.service("distributor", nats.url, "--heartbeat-interval", "30")
        token_file = ctx.path("console") / "tokens.json"
        text, record = tokens.new_token("bench", "viewer")
        token_file.write_bytes(tokens.encode_token_file(tokens.TokenFile(tokens=[record])))
        console = ctx.service("console", nats.url, "--tokens-file", str(token_file))
        assert console.ready is not None
        base = f"http://127.0.0.1:{console.ready['http_port']}/"
        await _heartbeats(setup, nodes)
        async with (
            Client(nats.url) as client,
            httpx.AsyncClient(
                base_url=base, headers={"authorization": f"Bearer {text}"}, timeout=60
            ) as http,  # fmt: skip
        ):
            with anyio.fail_after(60):  # until the distributor has seen every heartbeat
                while True:
                    if len((await client.fleet_status(FLEET_NS)).nodes) >= nodes:
                        break
                    await anyio.sleep(0.2)

            timings: dict[str, list[float]] = {}

            async def page(path: str) -> None:
                r = await http.get(path)
                assert r.status_code == 200, r.text[:300]
                for part in r.headers.get("server-timing", "").split(","):
                    name, _, dur = part.strip().partition(";dur=")
                    if dur:
                        timings.setdefault(f"{path.split('?')[0]} {name}", []).append(float(dur))

            async def raw_history() -> None:
                await client.policy(HISTORY_NS)
                got = await client.history(HISTORY_NS, limit=versions)
                assert len(got) == versions

            async def raw_fleet() -> None:
                assert len((await client.fleet_status(FLEET_NS)).nodes) == nodes

            hist, fleet = f"ns/{HISTORY_NS}", f"ns/{FLEET_NS}/fleet"
            t = await _timed(
                reads,
                {
                    "history_raw": raw_history,
                    "history_page": lambda: page(f"{hist}?limit={versions}"),
                    "history_api": lambda: page(
                        f"api/v1/namespaces/{HISTORY_NS}/versions?limit={versions}"
                    ),
                    "fleet_raw": raw_fleet,
                    "fleet_page": lambda: page(fleet),
                    "fleet_api": lambda: page(f"api/v1/namespaces/{FLEET_NS}/fleet"),
                },
            )
    finally:
        await setup.close()
    params = {"versions": versions, "nodes": nodes, "reads": reads}
    history_raw, history_page, history_api = t["history_raw"], t["history_page"], t["history_api"]
    fleet_raw, fleet_page, fleet_api = t["fleet_raw"], t["fleet_page"], t["fleet_api"]
    # The console's own part, from its Server-Timing: building the HTML, beside the time the
    # same request waited on the bus (the first, cold request left out, as everywhere here).
    store_calls = "the store calls it makes (client, same process)"
    status_call = "the distributor status call (client, same process)"
    return [
        Figure(BENCH, f"history page render, {versions:,} versions", "ms",
               stats(timings[f"{hist} render"][1:]), baseline=stats(timings[f"{hist} bus"][1:]),
               baseline_name="its bus calls, same requests", params=params,
               notes="the console's own cost (Server-Timing)").target_median(TARGET_MS),
        Figure(BENCH, f"fleet page render, {nodes:,} nodes", "ms",
               stats(timings[f"{fleet} render"][1:]), baseline=stats(timings[f"{fleet} bus"][1:]),
               baseline_name="its bus call, same requests", params=params,
               notes="the console's own cost (Server-Timing)").target_median(TARGET_MS),
        Figure(BENCH, f"history page, {versions:,} versions (HTML)", "ms",
               stats(_ms(history_page[1])), baseline=stats(_ms(history_raw[1])),
               baseline_name=store_calls, params=params,
               notes="the whole page over HTTP: mostly its ten store calls"),
        Figure(BENCH, f"history page, {versions:,} versions, first (cold rows)", "ms",
               stats(_ms([history_page[0]])), baseline=stats(_ms([history_raw[0]])),
               baseline_name=store_calls, params=params,
               notes="one sample: the console builds each row once and keeps it"),
        Figure(BENCH, f"history, {versions:,} versions (JSON API)", "ms",
               stats(_ms(history_api[1])), baseline=stats(_ms(history_raw[1])),
               baseline_name=store_calls, params=params),
        Figure(BENCH, f"fleet page, {nodes:,} nodes (HTML)", "ms", stats(_ms(fleet_page[1])),
               baseline=stats(_ms(fleet_raw[1])), baseline_name=status_call, params=params,
               notes="the whole page over HTTP"),
        Figure(BENCH, f"fleet, {nodes:,} nodes (JSON API)", "ms", stats(_ms(fleet_api[1])),
               baseline=stats(_ms(fleet_raw[1])), baseline_name=status_call, params=params),
    ]  # fmt: skip
