"""Faults on the path from a proposed change to a stored version (one nats-server, SQLite).

- ``redelivery_storm``: two version-store replicas share the durable consumer with a 0.5 s
  ack wait; injected naks after the commit and after the announcement, stalls past the ack
  wait, SIGKILLs of a replica, and poison messages (undecodable, wrong namespace, and ones that
  make validation raise every time). Duplicate *effects* (a change id stored twice, two
  ``version.created`` for a version) must be 0 whatever the duplicate deliveries; every poison
  message must be dead-lettered exactly once.
- ``store_kill``: the version-store SIGKILLed during writes, by a timer or at a failpoint
  before/after the commit and after the announcement. ``PRAGMA integrity_check`` after every
  crash; at the end, accepted changes lost and announced versions missing.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Unpack

import anyio

from confbus.procs.proc import Proc
from tests.faults.changeflow import Workload, add_publishes, check, drain, read_store, wait_consumed
from tests.faults.history import History
from tests.faults.results import Figures, RunOptions, finish
from tests.faults.shims import BUG_ENV, FAULTS_ENV, SEED_ENV
from tests.faults.stack import FaultStack, log_counts
from tests.faults.wait import until

STORM_FAULTS = ",".join(
    [
        # A forced nak after the commit: redelivered, found stored, never stored again.
        "version_store.after_commit=unavailable:0.15",
        # A forced nak after the announcement: redelivered, must not be announced again.
        "version_store.after_events=unavailable:0.1",
        # A stall past the 0.5 s ack wait: the other replica gets the same batch meanwhile.
        "version_store.after_commit=delay:0.8:0.05",
    ]
)
# Undecodable and wrong-namespace messages fail on their own; a "bug" one makes validation
# raise, which fails the whole fetched batch it arrived in.
POISON = ("garbage", "wrong-namespace", "bug", "bug", "garbage", "wrong-namespace")
BATCH_POISON = tuple(p for p in POISON if p == "bug")
SOLO_POISON = tuple(p for p in POISON if p != "bug")
STORE_ACK_WAIT_S = 3.0
KILL_POINTS = (
    "version_store.before_commit",
    "version_store.after_commit",
    "version_store.after_events",
)


def integrity_ok(path: Path) -> bool:
    """``PRAGMA integrity_check`` on the store file (its writer is dead)."""
    with sqlite3.connect(path, timeout=10) as db:
        rows = db.execute("PRAGMA integrity_check").fetchall()
    return rows == [("ok",)]


async def redelivery_storm(
    root: Path,
    *,
    changes: int = 200,
    crashes: int = 2,
    seed: int = 1,
    poison_in_batches: bool = False,
    **run: Unpack[RunOptions],
) -> Figures:
    """``poison_in_batches``: the messages that make validation raise are sent *during* the
    load, so good changes share their failing batches (see the finding in RELIABILITY.md);
    otherwise they are sent once every good change has been consumed."""
    started = time.monotonic()
    fig = Figures(
        scenario="redelivery_storm_mixed_poison" if poison_in_batches else "redelivery_storm",
        title="redelivery storm on the version-store (0.5 s ack wait, naks, stalls, crashes)"
        + (", poison in the load's batches" if poison_in_batches else ""),
        **run,
    )
    bug = fig.bug
    stack = FaultStack.single(root)
    try:

        def replica(name: str, n: int) -> Proc:
            env = {FAULTS_ENV: STORM_FAULTS, SEED_ENV: str(seed * 10 + n), BUG_ENV: bug}
            return stack.service(
                "version_store", "--ack-wait", "0.5", "--batch", "8", env=env, name=name, shim=True
            )

        replicas = [replica("vs-a", 1).start(timeout=30), replica("vs-b", 2).start(timeout=30)]
        bus = await stack.bus()
        wl = Workload(bus, History())
        await wl.watch_events()
        per_writer = changes // 2
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: wl.writer(0, count=per_writer, rate=80))
            tg.start_soon(lambda: wl.writer(1, count=changes - per_writer, rate=80))
            await wl.poison(SOLO_POISON[: len(SOLO_POISON) // 2])
            if poison_in_batches:
                tg.start_soon(_poison_the_load, wl, changes)
            for k in range(crashes):
                share = (k + 1) * changes // (crashes + 1)
                await until(lambda s=share: len(wl.accepted) >= s, 60, what="load")  # type: ignore[misc]
                victim = replicas[k % len(replicas)]
                wl.history.mark("fault")
                victim.kill()  # a consumer crash mid-batch
                victim.start(timeout=30)
                wl.history.mark("heal")
            await wl.poison(SOLO_POISON[len(SOLO_POISON) // 2 :])
        drain_started = time.monotonic()
        if not poison_in_batches:
            # Only once every good change is through: their batches stay clean.
            await wait_consumed(bus, 90)
            await wl.poison(BATCH_POISON)
        consumed = await wait_consumed(bus, 90)
        unresolved = await wl.drain(60)
        fig.notes["drain_s"] = round(time.monotonic() - drain_started, 2)
        for proc in replicas:
            proc.stop()
        logged = sum((log_counts(p) for p in replicas), Counter())
        # Deliveries that did not end in an ack: all of them came back (or were dead-lettered).
        fig.notes["forced_naks"] = logged["transient failure, redelivering"]
        fig.notes["bug_naks"] = logged["handler bug, redelivering"]
        fig.notes["dead_lettered"] = logged["dead-lettered"]
        facts = await read_store(stack.store_path())
        await check(fig, wl, bus, facts)
        fig.runs = 1
        add_publishes(fig, wl, drained=consumed and not unresolved)
        await wl.close()
        await bus.close()
    finally:
        stack.stop()
    return finish(fig, started)


async def _poison_the_load(wl: Workload, changes: int, count: int = 10) -> None:
    """A message that makes validation raise every ~10 % of the load."""
    for k in range(count):
        share = k * changes // count
        await until(lambda s=share: len(wl.accepted) >= s, 60, what="load")  # type: ignore[misc]
        await wl.poison(BATCH_POISON[:1])


async def store_kill(
    root: Path,
    *,
    runs: int = 10,
    seed: int = 2,
    points: tuple[str, ...] = KILL_POINTS,
    timer_kills: bool = True,
    **run: Unpack[RunOptions],
) -> Figures:
    """``runs`` crashes: alternately a SIGKILL at a random moment of the load and a failpoint
    kill at one of ``points`` on a random batch."""
    started = time.monotonic()
    rng = random.Random(seed)
    fig = Figures(
        scenario="store_kill",
        title="version-store kill -9 during writes (SQLite)",
        **run,
    )
    bug = fig.bug
    stack = FaultStack.single(root)
    integrity_failures = 0
    try:
        # The in-flight batch of a killed store is redelivered after the ack wait (30 s by
        # default): 3 s keeps the drain short; the drain time is reported.
        store = stack.service(
            "version_store",
            "--batch",
            "16",
            "--ack-wait",
            str(STORE_ACK_WAIT_S),
            env={BUG_ENV: bug} if bug else None,
            shim=bool(bug),
        )

        def arm(i: int) -> str | None:
            """Run ``i``'s failpoint (None: a timer kill), set before the process starts."""
            if timer_kills and i % 2 == 0:
                store.env.pop("CONFBUS_FAILPOINTS", None)
                return None
            point = points[i % len(points)]
            store.env["CONFBUS_FAILPOINTS"] = f"{point}=kill@{rng.randint(1, 4)}"
            return point

        point = arm(0)
        store.start(timeout=30)
        bus = await stack.bus()
        wl = Workload(bus, History())
        await wl.watch_events()
        async with anyio.create_task_group() as tg:
            for w in range(3):
                tg.start_soon(lambda w=w: wl.writer(w, rate=60))  # type: ignore[misc]
            for i in range(runs):
                floor = len(wl.accepted) + 10
                await until(lambda f=floor: len(wl.accepted) >= f, 60, what="load")  # type: ignore[misc]
                wl.history.mark("fault")
                if point is None:
                    await anyio.sleep(rng.uniform(0.0, 0.5))  # a random moment of the load
                    store.kill()
                else:
                    code = await anyio.to_thread.run_sync(store.wait_exit, 60.0)
                    assert code == -9, f"version-store exited {code}, not at {point}"
                if not await anyio.to_thread.run_sync(integrity_ok, stack.store_path()):
                    integrity_failures += 1
                point = arm(i + 1) if i + 1 < runs else None
                if i + 1 == runs:
                    store.env.pop("CONFBUS_FAILPOINTS", None)
                store.start(timeout=30)
                wl.history.mark("heal")
                fig.runs += 1
            wl.stop.set()
        drained = await drain(fig, wl, bus, 10 if bug else 60)
        store.stop()
        facts = await read_store(stack.store_path())
        await check(fig, wl, bus, facts)
        fig.safety["integrity_failures"] += integrity_failures
        add_publishes(fig, wl, drained=drained)
        await wl.close()
        await bus.close()
    finally:
        stack.stop()
    return finish(fig, started)
