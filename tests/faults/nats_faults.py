"""Faults of the bus itself: a 3-node nats-server cluster on loopback, R3 streams and buckets
(``sync_interval: always``), the version-store consuming ``CFG_CHANGES`` into SQLite while
writers propose changes.

- ``leader_kill``: SIGKILL the leader of ``CFG_CHANGES`` under load, wait for a new leader,
  restart the node, wait until every replica is current again; repeat. Accepted changes lost,
  the longest publish unavailability, and each node's replica of the streams compared at the
  end (divergent nodes).
- ``partition``: cut one node (the leader, then a follower, …) from the other two with
  nftables inside a network namespace, then heal. Same figures. Runs only inside the namespace
  (``tests.faults.partition_main`` is its entry point).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Unpack

import anyio
from anyio.abc import TaskGroup

from confbus.runtime.bus import Bus, connect
from confbus.schemas.streams import CFG_CHANGES, CFG_EVENTS, CFG_TXN_HEAD
from tests.faults import netns
from tests.faults.changeflow import Workload, add_publishes, check, drain, read_store
from tests.faults.cluster import (
    NatsCluster,
    connect_to,
    provision_r3,
    replicas_current,
    stream_leader,
)
from tests.faults.history import History
from tests.faults.results import Figures, RunOptions, finish
from tests.faults.stack import FaultStack
from tests.faults.wait import until

COMPARED = (CFG_CHANGES.name, CFG_EVENTS.name, f"KV_{CFG_TXN_HEAD.name}")
MIN_RATE = 20.0  # accepted changes per second before the first fault, or the run is void


async def all_current(bus: Bus, streams: tuple[str, ...] = COMPARED) -> bool:
    for s in streams:
        if not await replicas_current(bus, s):
            return False
    return True


async def divergent_nodes(cluster: NatsCluster, timeout: float) -> list[str]:
    """Nodes whose replica of a compared stream differs from the others' (after waiting up to
    ``timeout`` for them to agree): message count, bytes, first and last sequence."""
    bad: list[str] = []

    def compare() -> bool:
        bad.clear()
        for stream in COMPARED:
            states = {n: cluster.stream_state(n, stream) for n in cluster.nodes}
            values = [repr(v) for v in states.values()]
            majority = max(set(values), key=values.count)
            bad.extend(n for n, v in states.items() if repr(v) != majority and n not in bad)
        return not bad

    await until(lambda: anyio.to_thread.run_sync(compare), timeout, every=0.5)
    return sorted(bad)


async def _more_load(wl: Workload, n: int, timeout: float = 60.0) -> None:
    """Until ``n`` more changes have been accepted (the load is back)."""
    floor = len(wl.accepted) + n
    await until(lambda: len(wl.accepted) >= floor, timeout, what=f"{n} more accepted changes")


async def _writers(cluster: NatsCluster) -> list[Bus]:
    return [await connect_to(cluster, name, f"faults-writer-{name}") for name in cluster.nodes]


async def _setup(
    root: Path, *, uids: list[int] | None, replicas: int
) -> tuple[NatsCluster, FaultStack, Bus]:
    cluster = NatsCluster(root / "nats", uids=uids).start()
    try:
        await provision_r3(cluster, replicas=replicas)
        stack = FaultStack(root, cluster=cluster, replicas=replicas)
        stack.start_service("version_store", "--ack-wait", "5", "--batch", "32")
        bus = await connect(cluster.url, name="faults-writers", connect_timeout=2.0)
    except BaseException:
        cluster.stop()
        raise
    return cluster, stack, bus


@asynccontextmanager
async def _writing_cluster(
    root: Path, *, uids: list[int] | None, replicas: int
) -> AsyncIterator[tuple[NatsCluster, FaultStack, Bus, Workload]]:
    """The cluster, the version-store, our bus, and a workload with a writer's bus on each
    node (events watched); all closed and stopped at the end."""
    cluster, stack, bus = await _setup(root, uids=uids, replicas=replicas)
    wl = Workload(bus, History(), writer_buses=await _writers(cluster))
    try:
        await wl.watch_events()
        yield cluster, stack, bus, wl
    finally:
        await wl.close()
        for b in [*wl.writer_buses, bus]:
            await b.close()
        stack.stop()


async def _start_load(tg: TaskGroup, wl: Workload, before: str) -> None:
    """Three writers at 40 changes/s each, until 60 changes are accepted (the load is on)."""
    for w in range(3):
        tg.start_soon(lambda w=w: wl.writer(w, rate=40))  # type: ignore[misc]
    await until(lambda: len(wl.accepted) >= 60, 60, what=f"load before {before}")


async def _finish_changes(
    fig: Figures, wl: Workload, stack: FaultStack, cluster: NatsCluster, bus: Bus, bug: str
) -> None:
    """Stop the writers' checks: drain, compare the replicas, read the store, check."""
    # A deliberate-bug run never fully recovers: it is not waited for long.
    drained = await drain(fig, wl, bus, 5 if bug else 60)
    await until(lambda: all_current(bus), 2 if bug else 30)
    bad = await divergent_nodes(cluster, 2 if bug else 30)
    fig.divergent = len(bad)
    if bad:
        fig.notes["divergent_nodes"] = ",".join(bad)
    stack.services["version_store"].stop()
    facts = await read_store(stack.store_path())
    try:
        await check(fig, wl, bus, facts)
    except TimeoutError:
        # A deliberate bug may leave our connection on the node cut off for good, where
        # JetStream answers 503 forever; the divergence found above is the finding.
        if not bug:
            raise
        fig.notes["events_unreadable"] = 1
    add_publishes(fig, wl, drained=drained)
    before = fig.rates.get("before")
    fig.notes["rate_before_per_s"] = before if before is not None else 0.0
    if not bug and (before is None or before < MIN_RATE):
        # etcd's robustness rule: a run that did not hold the load proves nothing.
        fig.safety["void_run_low_load"] = 1


def _figures(scenario: str, title: str, known_bug: str, run: RunOptions) -> Figures:
    """The scenario's figures, once the deliberate bug asked for is known to it."""
    fig = Figures(scenario=scenario, title=title, **run)
    if fig.bug not in ("", known_bug):
        raise ValueError(f"unknown bug {fig.bug!r}")
    return fig


async def leader_kill(
    root: Path,
    *,
    kills: int = 3,
    **run: Unpack[RunOptions],
) -> Figures:
    """``bug="r1_lost_disk"``: streams with one replica, and the killed node comes back with
    an empty disk (while the consumer is stalled) — what R3 exists to prevent."""
    started = time.monotonic()
    title = "NATS stream leader SIGKILLed under publish load (3 nodes, R3)"
    fig = _figures("nats_leader_kill", title, "r1_lost_disk", run)
    bug = fig.bug
    unavailable: list[float] = []
    replicas = 1 if bug else 3
    async with _writing_cluster(root, uids=None, replicas=replicas) as (cluster, stack, bus, wl):
        async with anyio.create_task_group() as tg:
            await _start_load(tg, wl, "the first kill")
            for _ in range(kills):
                leader = await stream_leader(bus, CFG_CHANGES.name)
                store = stack.services["version_store"]
                if bug:
                    store.pause()  # the consumer stalls: accepted changes wait in the stream
                    await _more_load(wl, 30)
                floor = len(wl.accepted) + 30
                wl.history.mark("fault")
                killed_at = time.monotonic()
                cluster.kill(leader)
                if bug:
                    # The node comes back with nothing: its disk was lost.
                    shutil.rmtree(cluster.nodes[leader].data_dir / "jetstream", ignore_errors=True)
                    cluster.restart(leader)
                    store.resume()
                else:
                    # Publishes resume once a new leader is elected; then the node returns.
                    await until(lambda f=floor: len(wl.accepted) >= f, 60, what="a new leader")  # type: ignore[misc]
                    unavailable.append(time.monotonic() - killed_at)
                    cluster.restart(leader)
                if not bug:  # (R1 streams have no replicas to catch up)
                    await until(lambda: all_current(bus), 60)
                wl.history.mark("heal")
                await _more_load(wl, 30)
            wl.stop.set()
        await _finish_changes(fig, wl, stack, cluster, bus, bug)
        fig.runs = kills
        fig.notes["kills"] = kills
        if unavailable:
            fig.notes["kill_to_publishing_max_s"] = round(max(unavailable), 2)
    return finish(fig, started)


async def partition(
    root: Path,
    *,
    count: int = 2,
    cut_s: float = 5.0,
    **run: Unpack[RunOptions],
) -> Figures:
    """Inside the namespace only. ``bug="never_heal"``: one node is left cut off at the end
    (its replicas really do differ) — the divergence check must say so."""
    assert netns.inside(), "run through tests.faults.partition_main (unshare -n)"
    started = time.monotonic()
    title = "one NATS node cut off by nftables (netns), then healed"
    fig = _figures("nats_partition", title, "never_heal", run)
    bug = fig.bug
    await anyio.to_thread.run_sync(root.chmod, 0o711)  # nodes run under their own uids
    uids = list(netns.NODE_UIDS)
    marks = netns.setup({f"n{i + 1}": uid for i, uid in enumerate(uids)})
    cuts: list[str] = []
    async with _writing_cluster(root, uids=uids, replicas=3) as (cluster, stack, bus, wl):
        try:
            async with anyio.create_task_group() as tg:
                await _start_load(tg, wl, "the first cut")
                for k in range(count):
                    leader = await stream_leader(bus, CFG_CHANGES.name)
                    names = list(cluster.nodes)
                    # Alternately the leader (a new one must be elected) and a follower.
                    alone = leader if k % 2 == 0 else next(n for n in names if n != leader)
                    others = [n for n in names if n != alone]
                    wl.history.mark("fault")
                    netns.partition([alone], others, marks, cluster.cluster_ports)
                    cuts.append(f"{alone}({'leader' if alone == leader else 'follower'})")
                    await anyio.sleep(cut_s)  # the fault's duration (its schedule), under load
                    if bug and k == count - 1:
                        break  # BUG: the last cut is never healed
                    netns.heal()
                    await until(lambda: all_current(bus), 60)
                    wl.history.mark("heal")
                    await _more_load(wl, 30)
                wl.stop.set()
            await _finish_changes(fig, wl, stack, cluster, bus, bug)
            fig.runs = len(cuts)
            fig.notes["cut"] = ",".join(cuts)
        finally:
            netns.heal()
    return finish(fig, started)
