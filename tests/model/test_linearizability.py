"""Linearizability of the version-store: the checker itself on hand-made histories
(it must reject each kind of illegal history), then concurrent histories of publishes
(conditional with ``base`` and unconditional) and reads recorded against the real storage —
SQLite (several connections on one file) and a 3-member etcd cluster whose leader is killed
and restarted under the load. A read-through cache without invalidation (a deliberate bug)
must be caught.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from confbus.version_store.errors import NotFound
from confbus.version_store.storage import NewVersion, Store
from confbus.version_store.storage.sqlite import SqliteStore
from tests.faults.history import History
from tests.faults.results import Figures, assert_caught, assert_safe, finish
from tests.faults.wait import until
from tests.model.linearizability import Op, anomalies, check, check_all

NS = "lin"

# -- the checker on hand-made histories ----------------------------------------------------------


def pub(p: str, cid: str, out: Any, t0: float, t1: float, base: int | None = None) -> Op:
    return Op(p, "publish", (cid, base), out, t0, t1, NS)


def read(p: str, out: tuple[int, str | None], t0: float, t1: float) -> Op:
    return Op(p, "read", None, out, t0, t1, NS)


def test_checker_accepts_a_legal_concurrent_history() -> None:
    h = [
        pub("a", "x", 1, 0, 3),
        pub("b", "y", 2, 1, 4),  # concurrent with x: either order is possible...
        read("c", (1, "x"), 2, 2.5),  # ...and this read fixes it: x first
        read("c", (2, "y"), 5, 6),
        pub("a", "z", "conflict", 7, 8, base=1),  # a stale base: refused
        pub("b", "w", 3, 7, 9, base=2),
        read("a", (3, "w"), 10, 11),
    ]
    assert check(h).ok


def test_checker_rejects_a_read_that_misses_an_acked_version() -> None:
    h = [pub("a", "x", 1, 0, 1), read("b", (0, None), 2, 3)]
    result = check(h)
    assert not result.ok
    assert anomalies(h)["stale_reads"] == 1


def test_checker_rejects_versions_out_of_real_time_order() -> None:
    h = [pub("a", "x", 2, 0, 1), pub("b", "y", 1, 2, 3)]  # y invoked after x returned
    assert not check(h).ok
    assert anomalies(h)["out_of_real_time_order"] == 1


def test_checker_rejects_a_conditional_publish_that_won_against_a_newer_base() -> None:
    h = [
        pub("a", "x", 1, 0, 1),
        pub("b", "y", 2, 2, 3),
        pub("c", "z", 2, 4, 5, base=1),  # base 1 is stale once y is version 2: must conflict
    ]
    assert not check(h).ok
    assert anomalies(h)["conditional_won_against_newer_base"] == 1


def test_checker_rejects_a_conflict_that_should_have_won() -> None:
    h = [pub("a", "x", 1, 0, 1), pub("b", "y", "conflict", 2, 3, base=1)]
    assert not check(h).ok


def test_an_unknown_publish_may_or_may_not_have_happened() -> None:
    unknown = Op("a", "publish", ("x", None), None, 0, math.inf, NS)
    seen = [unknown, read("b", (1, "x"), 1, 2)]
    not_seen = [unknown, read("b", (0, None), 1, 2)]
    assert check(seen).ok and check(not_seen).ok
    # But not both: once a read saw it, a later read cannot miss it.
    assert not check([*seen, read("b", (0, None), 3, 4)]).ok


def test_the_search_backtracks_through_concurrent_publishes() -> None:
    # Five concurrent publishes; the reads force one particular order among 120.
    order = ["e", "c", "a", "d", "b"]
    h = [pub(p, p, order.index(p) + 1, 0, 10) for p in "abcde"]
    h += [read("r", (i + 1, cid), 1 + i, 1.5 + i) for i, cid in enumerate(order)]
    result = check(h)
    assert result.ok and result.explored > 10


# -- recording real histories ---------------------------------------------------------------------


class StaleReadCache:
    """A deliberate bug: reads served from a cache that is never invalidated for 0.5 s."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cached: tuple[float, Any] | None = None

    async def resolve(self, namespace: str, ref: str) -> Any:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < 0.5:
            return self._cached[1]
        value = await self.store.resolve(namespace, ref)
        self._cached = (now, value)
        return value


async def newest(reader: Any) -> tuple[int, str | None]:
    try:
        info = await reader.resolve(NS, "latest")
    except NotFound:
        return (0, None)
    return (info.version, info.change_id)


async def client(
    name: str,
    store: Store,
    history: History,
    ops: int,
    seed: int,
    reader: Any = None,
) -> None:
    """One client, one operation at a time: reads, unconditional publishes, and conditional
    publishes on the newest version it last saw."""
    rng = random.Random(seed)
    seen = 0
    reader = reader or store
    for i in range(ops):
        kind = rng.random()
        if kind < 0.4:
            out = await history.run(name, "read", NS, None, lambda: newest(reader))
            if out is not None:
                seen = out[0]
            continue
        base = seen if kind < 0.7 else None
        change_id = f"{name}-{i}"

        async def publish(cid: str = change_id, b: int | None = base) -> Any:
            item = NewVersion.build(NS, cid, f'{{"c": "{cid}"}}'.encode(), base=b)
            (result,) = await store.append([item])
            if result.outcome in ("stored", "duplicate"):
                assert result.version is not None
                return result.version
            if result.outcome == "conflict":
                return "conflict"
            raise AssertionError(f"unexpected outcome {result}")

        out = await history.run(name, "publish", NS, (change_id, base), publish)
        if isinstance(out, int):
            seen = max(seen, out)


def to_ops(history: History) -> list[Op]:
    """A read that failed did nothing: left out. A publish that failed may have happened."""
    out = []
    for h in history.ops:
        if h.result == "ok":
            out.append(Op(h.process, h.f, h.value, h.output, h.invoke, h.complete, h.key))
        elif h.f == "publish":
            out.append(Op(h.process, h.f, h.value, None, h.invoke, math.inf, h.key))
    return out


def figures_of(scenario: str, title: str, tier: str, bug: str = "") -> Figures:
    return Figures(scenario=scenario, title=title, tier=tier, bug=bug)  # type: ignore[arg-type]


def judge(fig: Figures, histories: Sequence[History]) -> None:
    illegal = 0
    totals = dict.fromkeys(("stale_reads", "out_of_real_time_order"), 0)
    totals["conditional_won_against_newer_base"] = 0
    explored = 0
    for h in histories:
        ops = to_ops(h)
        results = check_all(ops)
        illegal += sum(1 for r in results.values() if not r.ok)
        explored += sum(r.explored for r in results.values())
        for k, v in anomalies(ops).items():
            totals[k] += v
        counts = h.counts()
        fig.ok += counts["ok"]
        fig.failed += counts["fail"]
        fig.unknown += counts["unknown"]
    fig.runs = len(histories)
    fig.safety = {"illegal_histories": illegal, **totals}
    fig.notes["search_steps"] = explored


async def sqlite_history(path: Path, clients: int, ops: int, seed: int, bug: bool) -> History:
    history = History()
    stores = [SqliteStore(path) for _ in range(clients)]
    for s in stores:
        await s.open()
    try:
        async with anyio.create_task_group() as tg:
            for c, s in enumerate(stores):
                reader = StaleReadCache(s) if bug else None
                tg.start_soon(client, f"c{c}", s, history, ops, seed * 100 + c, reader)
    finally:
        for s in stores:
            await s.close()
    return history


async def run_sqlite(tmp: Path, runs: int, tier: str, bug: bool = False) -> Figures:
    started = time.monotonic()
    fig = figures_of(
        "linearizability_sqlite",
        "version-store histories linearizable (SQLite, 8 connections)",
        tier,
        "stale_read_cache" if bug else "",
    )
    fig.budget_s = {"ci": 3.0, "bug": 1.0}.get(tier)
    histories = [
        await sqlite_history(tmp / f"run{i}.db", clients=8, ops=40, seed=i, bug=bug)
        for i in range(runs)
    ]
    judge(fig, histories)
    return finish(fig, started)


async def test_sqlite_histories_are_linearizable(tmp_path: Path) -> None:
    assert_safe(await run_sqlite(tmp_path, runs=3, tier="ci"))


@pytest.mark.slow
@pytest.mark.timeout(2400)
async def test_sqlite_histories_are_linearizable_many(tmp_path: Path) -> None:
    assert_safe(await run_sqlite(tmp_path, runs=50, tier="slow"))


async def test_a_stale_read_cache_is_caught(tmp_path: Path) -> None:
    fig = await run_sqlite(tmp_path, runs=1, tier="bug", bug=True)
    assert_caught(fig, "illegal_histories")


# -- etcd: three members, the leader killed under the load ----------------------------------------


@pytest.fixture(scope="module")
def etcd3(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from confbus.procs.etcd import ETCD_HINT, EtcdCluster, etcd_binary

    if etcd_binary() is None:
        pytest.skip(ETCD_HINT)
    root = tmp_path_factory.mktemp("etcd-lin")
    cluster = EtcdCluster.on_loopback(root, 3, fast_election=True).start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def etcd_history(
    cluster: Any, kills: int, clients: int, ops: int, seed: int
) -> tuple[History, list[float]]:
    from confbus.version_store.storage.etcd import EtcdStore
    from tests.helpers import etcd_leader

    history = History()
    prefix = f"/lin-{uuid.uuid4().hex[:8]}/"
    eps = cluster.endpoints
    stores = [
        EtcdStore(eps[c % 3 :] + eps[: c % 3], prefix=prefix, request_timeout_s=1.0)
        for c in range(clients)
    ]
    for s in stores:
        await s.open()
    elections: list[float] = []

    async def nemesis(done: anyio.Event) -> None:
        rng = random.Random(seed)
        for _ in range(kills):
            await _after_some(history, 40 + rng.randint(0, 20), done)
            if done.is_set():
                return
            leader = await etcd_leader(cluster.endpoints)
            history.mark("fault")
            killed = time.monotonic()
            cluster.kill(leader)
            others = [m.endpoint for m in cluster.members if m.name != leader]

            async def elected(old: str = leader, eps: list[str] = others) -> bool:
                return await etcd_leader(eps, timeout=30) != old

            await until(elected, 30, every=0.05, what="a new etcd leader")
            elections.append(time.monotonic() - killed)
            cluster.member(leader).restart()
            await anyio.to_thread.run_sync(cluster.wait_healthy, [cluster.member(leader)], 30.0)
            history.mark("heal")

    try:
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(nemesis, done)
            async with anyio.create_task_group() as clients_tg:
                for c, s in enumerate(stores):
                    clients_tg.start_soon(client, f"c{c}", s, history, ops, seed * 100 + c, None)
            done.set()
    finally:
        for s in stores:
            await s.close()
    return history, elections


async def _after_some(history: History, n: int, done: anyio.Event) -> None:
    """Until ``n`` more operations were invoked (or the clients are done)."""
    floor = len(history.ops) + n
    await until(lambda: len(history.ops) >= floor or done.is_set(), 120, every=0.05, what="load")


async def run_etcd(cluster: Any, runs: int, kills: int, tier: str) -> Figures:
    started = time.monotonic()
    fig = figures_of(
        "linearizability_etcd",
        "version-store histories linearizable (etcd, 3 members, leader killed)",
        tier,
    )
    fig.budget_s = 8.0 if tier == "ci" else None  # plus ~5 s to start and stop the cluster
    histories = []
    elections: list[float] = []
    for i in range(runs):
        h, e = await etcd_history(cluster, kills=kills, clients=8, ops=60, seed=i)
        histories.append(h)
        elections += e
    judge(fig, histories)
    fig.notes["leader_kills"] = len(elections)
    if elections:
        fig.notes["new_leader_max_s"] = round(max(elections), 2)
    fig.availability = histories[-1].availability()
    # The store retries through an election: the cost shows as the slowest operation.
    fig.longest_unavailable_s = round(
        max(o.complete - o.invoke for h in histories for o in h.ops if o.result == "ok"), 3
    )
    return finish(fig, started)


@pytest.mark.etcd
async def test_etcd_histories_are_linearizable_across_leader_kills(etcd3: Any) -> None:
    fig = await run_etcd(etcd3, runs=1, kills=2, tier="ci")
    assert fig.notes["leader_kills"] == 2
    assert_safe(fig)


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.etcd
async def test_etcd_histories_are_linearizable_many(etcd3: Any) -> None:
    assert_safe(await run_etcd(etcd3, runs=10, kills=3, tier="slow"))
