"""The version-store: versions stored per second through the service, and history page latency
at 10k versions — SQLite and (when ``etcd`` is on PATH) etcd, each beside raw baselines
measured in the same run.

- **writes/s**: 4 publishers × 500 changes (each its own NATS connection, all in flight at
  once), counted from the first publish to the last ``version.created`` event: publish to
  ``CFG_CHANGES`` (fsynced), validate, group-commit, the batch's events on ``CFG_EVENTS`` as
  one atomic batch (one fsync), ack. A few rounds; the statistic is over the rounds' rates.
  Baselines: plain aiosqlite insert+commit (WAL, ``synchronous=FULL``) one row per transaction
  and 256 per transaction; the bus's floor — the changes' own fsynced JetStream publishes, all
  in flight; plain etcd puts, one at a time and 64 in flight.
- **latency of one change**: one at a time, publish → ``version.created``; baseline: one
  fsynced JetStream publish+ack.
- **history page**: ``cfg.api.store.history`` (50 versions, a random page) in a namespace of
  10k versions; baselines: the same page by plain SQL on its own connection (the backend's
  query), a plain etcd range read of 50 keys, and a NATS request/reply echo.

``python -m benchmarks store`` runs it in the suite; ``python -m benchmarks.store [--smoke]``
alone prints its figures as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import random
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from nats.aio.msg import Msg

from benchmarks.baselines import ensure_bench_stream
from benchmarks.processes import Context, open_bus, run_alone
from benchmarks.report import Figure, stats
from confbus.runtime.api import call
from confbus.runtime.bus import Bus, connect
from confbus.runtime.codec import encode
from confbus.schemas import subjects
from confbus.schemas.api import store as store_api
from confbus.schemas.changes import ChangeProposed, msg_id
from confbus.schemas.events import VersionCreated, decode_event
from confbus.schemas.policy import Policy
from confbus.version_store.storage import NewVersion, Store, open_store

BENCH = "store"
PAGE = 50


@dataclasses.dataclass(frozen=True)
class Sizes:
    publishers: int
    per_publisher: int
    rounds: int
    sequential: int  # changes published one at a time, for the latency figure
    history_versions: int
    history_reads: int
    raw_rows: int  # rows per round of the raw SQLite baselines
    etcd_puts: int


FULL = Sizes(4, 500, 3, 200, 10_000, 500, 2000, 1000)
SMOKE = Sizes(2, 50, 2, 20, 500, 30, 200, 100)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _content(round_: int, i: int) -> bytes:
    return json.dumps({"round": round_, "i": i, "pad": "x" * 160}).encode()


# -- through the service ----------------------------------------------------------------------


async def _writes_per_second(
    url: str, ns: str, round_: int, sizes: Sizes
) -> tuple[float, list[float]]:
    """One round: the rate, and each change's publish → version.created latency (s)."""
    total = sizes.publishers * sizes.per_publisher
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = anyio.Event()
    last = [0.0]

    async def on_created(msg: Msg) -> None:
        event = decode_event(msg.data)
        if isinstance(event, VersionCreated) and event.change_id in sent:
            now = time.perf_counter()
            latencies.append(now - sent[event.change_id])
            last[0] = now
            if len(latencies) == total:
                done.set()

    listener = await connect(url, name="bench-listener")
    buses = [await connect(url, name=f"bench-pub-{k}") for k in range(sizes.publishers)]
    try:
        await listener.nc.subscribe(subjects.event(ns, "version.created"), cb=on_created)
        await listener.nc.flush()

        async def publisher(k: int, bus: Bus) -> None:
            async def one(i: int) -> None:
                cid = f"r{round_}-p{k}-{i}"
                change = ChangeProposed(
                    namespace=ns, change_id=cid, content=_content(round_, i), author=f"p{k}"
                )
                sent[cid] = time.perf_counter()
                await bus.publish(subjects.change(ns), encode(change), msg_id=msg_id(ns, cid))

            async with anyio.create_task_group() as tg:
                for i in range(sizes.per_publisher):
                    tg.start_soon(one, i)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for k, bus in enumerate(buses):
                tg.start_soon(publisher, k, bus)
        with anyio.fail_after(120):
            await done.wait()
        return total / (last[0] - started), latencies
    finally:
        for b in [listener, *buses]:
            await b.close()


async def _one_at_a_time(url: str, ns: str, n: int) -> list[float]:
    bus = await open_bus(url, "bench-seq")
    out: list[float] = []
    try:
        for i in range(n):
            cid = f"seq-{i}"
            sub = await bus.nc.subscribe(subjects.event(ns, "version.created"), max_msgs=1)
            change = ChangeProposed(namespace=ns, change_id=cid, content=_content(-1, i))
            started = time.perf_counter()
            await bus.publish(subjects.change(ns), encode(change), msg_id=msg_id(ns, cid))
            await sub.next_msg(timeout=30)
            out.append(time.perf_counter() - started)
    finally:
        await bus.close()
    return out


async def _history_reads(url: str, ns: str, newest: int, n: int) -> list[float]:
    bus = await open_bus(url, "bench-history")
    rng = random.Random(7)
    out: list[float] = []
    try:
        for _ in range(n):
            before = rng.randint(PAGE + 1, newest + 1)
            req = store_api.HistoryRequest(namespace=ns, before=before, limit=PAGE)
            started = time.perf_counter()
            reply = await call(bus, store_api.HISTORY, req, timeout=10)
            out.append(time.perf_counter() - started)
            assert len(reply.versions) == PAGE
    finally:
        await bus.close()
    return out


async def _fill(store: Store, ns: str, n: int) -> None:
    """``n`` versions straight into the store, in big batches (not what is measured)."""
    done = 0
    while done < n:
        batch = [
            NewVersion.build(ns, f"fill-{i}", _content(-2, i), author="bench")
            for i in range(done, min(n, done + 500))
        ]
        results = await store.append(batch)
        assert all(r.outcome == "stored" for r in results), results[:1]
        done += len(batch)


# -- raw baselines ----------------------------------------------------------------------------


async def _sqlite_raw(path: Path, rows: int, batch: int) -> tuple[float, list[float]]:
    """Plain aiosqlite, WAL + synchronous=FULL: ``rows`` inserts, ``batch`` per commit.
    Returns the rate and the per-commit latencies (s)."""
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, ns TEXT, data BLOB)"
        )
        payload = _content(0, 0)
        commits: list[float] = []
        started = time.perf_counter()
        for first in range(0, rows, batch):
            t0 = time.perf_counter()
            await db.execute("BEGIN")
            await db.executemany(
                "INSERT INTO t (ns, data) VALUES (?, ?)",
                [("bench", payload)] * min(batch, rows - first),
            )
            await db.execute("COMMIT")
            commits.append(time.perf_counter() - t0)
        return rows / (time.perf_counter() - started), commits
    finally:
        await db.close()


async def _sqlite_page(path: Path, newest: int, n: int) -> list[float]:
    """The floor of a history page: a plain table keyed by (namespace, version) with ``newest``
    rows of metadata, read backwards ``PAGE`` rows at a time on its own connection."""
    db = await aiosqlite.connect(path, isolation_level=None)
    rng = random.Random(7)
    out: list[float] = []
    meta = _content(0, 0)
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(
            "CREATE TABLE v (namespace TEXT, version INTEGER, meta BLOB, "
            "PRIMARY KEY (namespace, version)) WITHOUT ROWID"
        )
        await db.execute("BEGIN")
        await db.executemany(
            "INSERT INTO v VALUES (?, ?, ?)", [("hist", i, meta) for i in range(1, newest + 1)]
        )
        await db.execute("COMMIT")
        for _ in range(n):
            before = rng.randint(PAGE + 1, newest + 1)
            started = time.perf_counter()
            rows = await db.execute_fetchall(
                "SELECT namespace, version, meta FROM v WHERE namespace = ? AND version < ? "
                "ORDER BY version DESC LIMIT ?",
                ("hist", before, PAGE),
            )
            out.append(time.perf_counter() - started)
            assert len(list(rows)) == PAGE
    finally:
        await db.close()
    return out


async def _timed_concurrently(
    n: int, in_flight: int, op: Callable[[int], Awaitable[object]]
) -> tuple[float, list[float]]:
    """``op(0)`` … ``op(n - 1)``, ``in_flight`` at a time: the rate (per second) and each
    one's latency (s)."""
    limit = anyio.Semaphore(in_flight)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with limit:
            t0 = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return n / (time.perf_counter() - started), latencies


async def _js_publishes(bus: Bus, total: int, in_flight: int) -> tuple[float, list[float]]:
    """Fsynced JetStream publishes into one stream, ``in_flight`` at a time."""
    await ensure_bench_stream(bus)
    payload = encode(ChangeProposed(namespace="bench", change_id="x", content=_content(0, 0)))
    run_id = secrets.token_hex(4)  # distinct message ids: a duplicate would skip the fsync

    async def one(i: int) -> None:
        await bus.js.publish("bench.js.store", payload, headers={"Nats-Msg-Id": f"{run_id}-{i}"})

    return await _timed_concurrently(total, in_flight, one)


async def _echo(bus: Bus, n: int) -> list[float]:
    async def reply(msg: Msg) -> None:
        await msg.respond(msg.data)

    sub = await bus.nc.subscribe("bench.echo", cb=reply)
    out: list[float] = []
    try:
        payload = b"x" * 300
        for _ in range(n):
            t0 = time.perf_counter()
            await bus.nc.request("bench.echo", payload, timeout=5)
            out.append(time.perf_counter() - t0)
    finally:
        await sub.unsubscribe()
    return out


async def _etcd_puts(endpoint: str, n: int, in_flight: int) -> tuple[float, list[float]]:
    import aetcd

    host, port = endpoint.rsplit(":", 1)
    value = _content(0, 0)
    async with aetcd.Client(host, int(port)) as client:

        async def one(i: int) -> None:
            await client.put(f"/bench/put/{in_flight}/{i:08d}".encode(), value)

        return await _timed_concurrently(n, in_flight, one)


async def _etcd_ranges(endpoint: str, keys: int, n: int) -> list[float]:
    import aetcd
    from aetcd import transactions as tx

    host, port = endpoint.rsplit(":", 1)
    rng = random.Random(7)
    out: list[float] = []
    value = _content(0, 0)
    async with aetcd.Client(host, int(port)) as client:
        for first in range(0, keys, 100):
            await client.transaction(
                compare=[],
                success=[
                    tx.Put(f"/bench/range/{i:010d}".encode(), value)
                    for i in range(first, min(keys, first + 100))
                ],
                failure=[],
            )
        for _ in range(n):
            start = rng.randint(0, keys - PAGE)
            t0 = time.perf_counter()
            got = await client.get_range(
                f"/bench/range/{start:010d}".encode(), f"/bench/range/{start + PAGE:010d}".encode()
            )
            out.append(time.perf_counter() - t0)
            assert len(list(got)) == PAGE
    return out


# -- the benchmark ----------------------------------------------------------------------------


async def _backend(
    ctx: Context,
    label: str,
    store_url: str,
    sizes: Sizes,
    baselines: Callable[[Bus], Awaitable[dict[str, tuple[Any, str]]]],
    write_target: float,
) -> list[Figure]:
    nats = ctx.start_nats(f"nats-{label}")
    setup = await open_bus(nats.url, "bench-setup")
    figures: list[Figure] = []
    try:
        hist_ns = "hist"
        async with open_store(store_url) as store:
            await _fill(store, hist_ns, sizes.history_versions)
            await store.set_policy(Policy(namespace="w", format="json"))
        service = ctx.try_service(
            "version_store", nats.url, "--store", store_url, name=f"version-store-{label}"
        )
        if service is None:
            return []
        rates: list[float] = []
        loaded: list[float] = []
        for r in range(sizes.rounds):
            rate, lat = await _writes_per_second(nats.url, f"w{r}", r, sizes)
            rates.append(rate)
            loaded += lat
        sequential = await _one_at_a_time(nats.url, "seq", sizes.sequential)
        pages = await _history_reads(nats.url, hist_ns, sizes.history_versions, sizes.history_reads)
        base = await baselines(setup)
    finally:
        await setup.close()

    params = {
        "store": label,
        "publishers": sizes.publishers,
        "changes_per_publisher": sizes.per_publisher,
        "rounds": sizes.rounds,
        "content_bytes": len(_content(0, 0)),
    }
    write_rate = stats(rates)
    for key in ("raw_one", "raw_batched", "raw_bus"):
        if key not in base:
            continue
        baseline, name = base[key]
        fig = Figure(
            BENCH,
            f"{label}: versions stored/s via the service (vs {name})",
            "versions/s",
            write_rate,
            better="higher",
            baseline=baseline,
            baseline_name=name,
            params=params,
            notes="publish → validated → group-committed → version.created event → ack; "
            f"{sizes.publishers} publishers × {sizes.per_publisher} changes in flight, "
            f"statistics over {sizes.rounds} rounds",
        )
        if key == "raw_one":
            fig.target_median(write_target, "median")
        figures.append(fig)

    def latency(what: str, seconds: list[float], **more: Any) -> Figure:
        """A latency figure of this store: its samples in ms, its name after the store's."""
        return Figure(BENCH, f"{label}: {what}", "ms", stats([_ms(x) for x in seconds]), **more)

    under_load = latency(
        "publish → version.created under load",
        loaded,
        params=params,
        notes="per change, with every change of the round in flight at once (queueing "
        "included); no baseline: see the one-at-a-time figure",
    )
    js_one, js_name = base["js_one"]
    one_at_a_time = latency(
        "publish → version.created, one at a time",
        sequential,
        baseline=js_one,
        baseline_name=js_name,
        params={"store": label, "n": sizes.sequential},
    )
    figures += [under_load, one_at_a_time]
    page = f"history page ({PAGE}) at {sizes.history_versions:,} versions"
    for key in ("page_raw", "page_echo"):
        baseline, name = base[key]
        figures.append(
            latency(
                f"{page} (vs {name})",
                pages,
                baseline=baseline,
                baseline_name=name,
                params={"store": label, "versions": sizes.history_versions, "page": PAGE},
            )
        )
    return figures


async def run(ctx: Context) -> list[Figure]:
    sizes = SMOKE if ctx.smoke else FULL
    total = sizes.publishers * sizes.per_publisher
    db = ctx.path("sqlite") / "store.db"

    async def sqlite_baselines(bus: Bus) -> dict[str, tuple[Any, str]]:
        raw = ctx.path("raw")
        one_rates, one_lat, batch_rates = [], [], []
        for r in range(sizes.rounds):
            rate, lat = await _sqlite_raw(raw / f"one-{r}.db", sizes.raw_rows, 1)
            one_rates.append(rate)
            one_lat += lat
            rate, _ = await _sqlite_raw(raw / f"batch-{r}.db", sizes.raw_rows, 256)
            batch_rates.append(rate)
        # The bus's share of a change: its own fsynced publish, all in flight. (Its event goes
        # out in an atomic batch with the rest of its batch's: one fsync for the lot.)
        bus_rates = [(await _js_publishes(bus, total, total))[0] for _ in range(sizes.rounds)]
        _, js_lat = await _js_publishes(bus, sizes.sequential, 1)
        return {
            "raw_one": (stats(one_rates), "aiosqlite insert+commit, 1 row/txn"),
            "raw_batched": (stats(batch_rates), "aiosqlite insert+commit, 256 rows/txn"),
            "raw_bus": (
                stats(bus_rates),
                f"JetStream floor: the changes' own fsynced publishes, {total} in flight",
            ),
            "js_one": (stats([_ms(x) for x in js_lat]), "JetStream publish+ack"),
            "page_raw": (
                stats(
                    [
                        _ms(x)
                        for x in await _sqlite_page(
                            raw / "pages.db", sizes.history_versions, sizes.history_reads
                        )
                    ]
                ),
                "plain aiosqlite page query",
            ),
            "page_echo": (
                stats([_ms(x) for x in await _echo(bus, sizes.history_reads)]),
                "NATS request/reply echo",
            ),
        }

    figures = await _backend(
        ctx, "sqlite", f"sqlite://{db.as_posix()}", sizes, sqlite_baselines, 2000.0
    )

    etcd = ctx.start_etcd()
    if etcd is None:
        ctx.skipped.append("etcd not on PATH: etcd figures left out")
        return figures
    endpoint = etcd.endpoints[0]

    async def etcd_baselines(bus: Bus) -> dict[str, tuple[Any, str]]:
        seq_rates, conc_rates = [], []
        for _ in range(sizes.rounds):
            seq_rates.append((await _etcd_puts(endpoint, sizes.etcd_puts, 1))[0])
            conc_rates.append((await _etcd_puts(endpoint, sizes.etcd_puts, 64))[0])
        _, js_lat = await _js_publishes(bus, sizes.sequential, 1)
        return {
            "raw_one": (stats(seq_rates), "etcd put, one at a time"),
            "raw_batched": (stats(conc_rates), "etcd put, 64 in flight"),
            "js_one": (stats([_ms(x) for x in js_lat]), "JetStream publish+ack"),
            "page_raw": (
                stats(
                    [
                        _ms(x)
                        for x in await _etcd_ranges(
                            endpoint, sizes.history_versions, sizes.history_reads
                        )
                    ]
                ),
                f"etcd range read of {PAGE} keys",
            ),
            "page_echo": (
                stats([_ms(x) for x in await _echo(bus, sizes.history_reads)]),
                "NATS request/reply echo",
            ),
        }

    figures += await _backend(
        ctx, "etcd", f"etcd://{endpoint}/confbus-bench/", sizes, etcd_baselines, 500.0
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    return run_alone(BENCH, run, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
