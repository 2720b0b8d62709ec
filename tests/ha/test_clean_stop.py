"""A clean stop (SIGTERM) of the replica holding a lease hands it over at once: under
``confbus up --ha``, for the coordinator, distributor and health-watcher replicas leading a
namespace, the holder writes its lease released (expiry 1970) on its way out and a replica
holds it in a new term right after. (The rollbacker holds a lease only while it drives a
rollback; its release on a stop is the same ``Leases.release_all``.)"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio
import pytest

from confbus.runtime.bus import Bus
from confbus.runtime.leases import RELEASED
from confbus.schemas.state import decode_lease, lease_key
from confbus.schemas.streams import CFG_STATE
from tests.ha.hastack import health_samples, lease_holder, needs_etcd, start_ha
from tests.helpers import eventually

pytestmark = [pytest.mark.anyio, needs_etcd]

NS = "web"
CONTENT = b'{"i": 0}'
ROLES = ("coordinator", "distributor", "health")
HANDED_OVER_S = 3.0  # well under the 5 s TTL (+ 0.5 s skew) a killed holder's lease lasts


def held(bus: Bus, role: str) -> Callable[[], Awaitable[tuple[str, int] | None]]:
    return lambda: lease_holder(bus, role, NS)


async def test_a_clean_stop_hands_each_lease_over_at_once(tmp_path: Path) -> None:
    stack = start_ha(tmp_path / "data")
    try:
        agent = stack.start_agent("n1", NS, tmp_path / "nodes")
        bus = await stack.bus("service", name="test-probe")
        stop = anyio.Event()
        try:
            async with stack.client("ci", name="test-ci") as ci, anyio.create_task_group() as tg:
                tg.start_soon(health_samples, bus, NS, ("n1",), stop)
                # A switch: a coordinator and a distributor replica lead the namespace.
                await ci.publish(NS, CONTENT, change_id="c0", timeout=60)

                async def applied() -> bool:
                    return agent.read() == CONTENT

                await eventually(applied, timeout=60, what="the change applied")
                kv = await bus.kv(CFG_STATE.name)
                for n, role in enumerate(ROLES, start=1):
                    holder, epoch = await eventually(
                        held(bus, role), timeout=30, what=f"lease.{role}.{NS} held"
                    )
                    watcher = await kv.watch(lease_key(role, NS))
                    while await watcher.updates(timeout=5) is not None:  # type: ignore[no-untyped-call]
                        pass  # the current record, up to the end-of-history marker
                    os.kill(stack.pid(holder), signal.SIGTERM)
                    # Work for the namespace's next leader (a coordinator takes a lease when a
                    # switch asks for one).
                    tg.start_soon(partial(ci.publish, NS, b'{"i": %d}' % n, timeout=60))
                    released = False
                    with anyio.fail_after(30):
                        while True:
                            entry = await watcher.updates(timeout=30)  # type: ignore[no-untyped-call]
                            if entry is None or not entry.value:
                                continue
                            record = decode_lease(entry.value)
                            if record.holder == holder and record.expires_at == RELEASED:
                                released = True
                                at = anyio.current_time()
                            elif released and record.epoch > epoch:
                                took = anyio.current_time() - at
                                break
                    await watcher.stop()  # type: ignore[no-untyped-call]
                    assert took < HANDED_OVER_S, (role, took)
                    await anyio.to_thread.run_sync(
                        stack.proc.err.wait_for, f"{holder} ready again", 60.0
                    )
                stop.set()
        finally:
            await bus.close()
    finally:
        stack.cleanup()
