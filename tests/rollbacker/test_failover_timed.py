"""The rollbacker's fail-over, timed (issue 23 item 2, RELIABILITY.md finding 8): SIGKILL of the
replica driving a rollback, in the middle of it, and the seconds until the rollback's next
apply — its remaining nodes back on the last good version, switched by the other replica.

Per kill: a good version on every node, then a bad one, and an alert; replica A (armed to
pause 5 s after each batch, so the rollback is under way when it dies) starts the rollback and
switches its first batch; replica B is running, watching the driver's presence; the test kills
A as the first batch's event arrives and waits for every node to read the good bytes again.
B is then stopped cleanly (it hands its lease back), so the next round's A drives again.
Figures into the fault results (scenario ``rollbacker_failover``) for the report.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from tests.faults.results import Figures, RunOptions, ci_and_slow, finish
from tests.ha.failover import RECOVERED, TARGETS, load_notes, now_fault
from tests.helpers import eventually
from tests.rollbacker.world import NS, World, policy, world

pytestmark = pytest.mark.anyio

NEXT_APPLY = "kill → the rollback's next apply"
ROLE = "rollbacker"
PAUSE_AFTER_BATCH = "rollbacker.after_batch=delay:5"


def content(kind: str, r: int) -> bytes:
    ratio = 0.0 if kind == "good" else 0.9
    return json.dumps({"fail_ratio": ratio, "name": f"{kind}-{r}"}).encode() + b"\n"


async def one_round(w: World, r: int) -> float:
    """One rollback, its driver killed after its first batch: seconds to its next apply."""
    good, bad = content("good", r), content("bad", r)
    v_good = await w.store.add(NS, good, f"good-{r}")
    await w.switch(v_good)
    await w.store.promote(NS, v_good)
    await w.store.mark_good(NS, v_good)
    v_bad = await w.store.add(NS, bad, f"bad-{r}")
    await w.switch(v_bad)
    await w.store.promote(NS, v_bad)
    driver = w.start_rollbacker(
        "--instance", f"rb-a{r}", env={"CONFBUS_FAILPOINTS": PAUSE_AFTER_BATCH}
    )
    await w.alert(f"a-{r}", v_bad)
    await w.tap.wait_type("rollback.started", count=r + 1, timeout=30)
    peer = w.start_rollbacker("--instance", f"rb-b{r}")
    await w.tap.wait_type("rollback.batch", count=2 * r + 1, timeout=30)
    assert driver.alive(), "the driver ended before its rollback was under way"
    killed = time.monotonic()
    os.kill(driver.pid, signal.SIGKILL)
    await eventually(
        lambda: _true(all(w.read(n) == good for n in w.nodes)),
        timeout=60,
        every=0.02,
        what=f"every node back on good-{r} after the driver's kill",
    )
    took = time.monotonic() - killed
    await w.tap.wait_type("rollback.completed", count=r + 1, timeout=30)
    driver.wait_exit()
    peer.stop()  # a clean stop: its leases are released, the next driver takes them at once
    return took


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize(("kills", "opts"), ci_and_slow(2, 20, budget_s=240))
async def test_killing_the_driver_of_a_rollback(
    nats_server: NatsServer, bus: Bus, tmp_path: Path, kills: int, opts: RunOptions
) -> None:
    started = time.monotonic()
    # Back to back: no cooldown, no cap (each round is a rollback of its own bad version).
    pol = policy(strategy="batches:2", cooldown_s=0.0, max_per_window=1000)
    took: list[float] = []
    faults = []  # for the load average at each kill
    async with world(nats_server, bus, tmp_path, pol=pol, start_rollbacker=False) as w:
        for r in range(kills):
            faults.append(now_fault(f"rollbacker round {r}", ROLE, "rollbacker", "", 0))
            took.append(round(await one_round(w, r), 3))
            print(f"round {r}: the rollback's next apply {took[-1]:.2f}s after the kill")
    fig = Figures(
        scenario="rollbacker_failover",
        title="SIGKILL of the rollbacker replica driving a rollback (4 nodes, 2 batches)",
        tier=opts.get("tier", "ci"),
        runs=len(took),
        ok=len(took),
        samples={ROLE: {NEXT_APPLY: took}},
        targets={ROLE: {NEXT_APPLY: TARGETS[ROLE][RECOVERED]}},  # the lease roles' 1.5 s
        budget_s=opts.get("budget_s"),
        notes={"rounds": len(took), **load_notes(faults)},
    )
    finish(fig, started)
