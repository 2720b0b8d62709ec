"""Two coordinator replicas: one leads a namespace — the one holding
``lease.coordinator.<ns>`` — and the other forwards its switch requests there; when the leader
is killed, the other takes the namespace over in a new epoch, and nothing of the old epoch is
written after that."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.coordinator.head import Heads
from confbus.runtime.bus import Bus, connect
from confbus.runtime.errors import Unavailable
from confbus.runtime.http import http_get
from confbus.schemas.streams import CFG_TXN_HEAD
from confbus.schemas.txn import Decision
from tests.e2e.helpers import decisions, store_version, switch, txn_records
from tests.e2e.stack import Stack, start_stack
from tests.ha.hastack import lease_holder
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NS = "web"
NODES = ("n1", "n2", "n3")
TTL = "2"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path, services=("version_store",))
    try:
        for name in ("c1", "c2"):
            s.start_service("coordinator", "--instance", name, "--lease-ttl", TTL, name=name)
        s.start_agents(NODES)
        yield s
    finally:
        s.stop()


async def forwarded(stack: Stack, name: str) -> float:
    ready = stack.services[name].ready
    assert ready is not None
    _, body = await http_get("127.0.0.1", ready["http_port"], "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("confbus_coordinator_forwarded_total "):
            return float(line.split()[1])
    return 0.0


async def switch_retrying(bus: Bus, version: int) -> str:
    """What the distributor does: a 503 ("not leader, retry") is retried."""

    async def attempt() -> str | None:
        try:
            reply = await switch(bus, NS, version, NODES, timeout_s=2.0)
        except Unavailable:
            return None
        return reply.outcome

    return await eventually(attempt, timeout=60, every=0.2, what=f"a switch to v{version}")


async def test_one_replica_leads_the_other_forwards_and_takes_over(stack: Stack) -> None:
    bus = await connect(stack.url, name="test")
    try:
        versions = []
        for i in range(30):  # bounded: until a request has landed on the other replica
            versions.append(await store_version(bus, NS, b'{"n": %d}' % i, f"c{i}"))
            assert (await switch(bus, NS, versions[-1], NODES)).outcome == "commit"
            held = await lease_holder(bus, "coordinator", NS)
            assert held is not None
            leader, epoch = held
            other = "c2" if leader == "c1" else "c1"
            if i >= 3 and await forwarded(stack, other) >= 1:
                break
        # Requests land on both replicas (a queue group); only the leader ran them.
        assert await forwarded(stack, other) >= 1
        assert {d.epoch for d in (await decisions(bus, NS)).values()} == {1}
        versions.append(await store_version(bus, NS, b'{"n": "last"}', "c-last"))

        stack.services[leader].kill()
        killed = time.monotonic()
        assert await switch_retrying(bus, versions[-1]) == "commit"
        print(f"\nv{versions[-1]} switched {time.monotonic() - killed:.2f}s after the leader died")

        now = await lease_holder(bus, "coordinator", NS)
        assert now is not None and now[0] == other and now[1] > epoch
        head = (await Heads(await bus.kv(CFG_TXN_HEAD.name)).get(NS)).value
        assert head.epoch >= 2 and head.leader == other
        highest = 0
        for record in await txn_records(bus, NS):
            if isinstance(record, Decision):
                assert record.epoch >= highest, "a decision from an older epoch was written"
            highest = max(highest, record.epoch)
    finally:
        await bus.close()
