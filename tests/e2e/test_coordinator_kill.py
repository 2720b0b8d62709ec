"""Kill -9 the coordinator at each step of the two-phase commit.

After each crash a fresh coordinator starts; the test then waits until nothing is in doubt
and checks, against the decision records: every agent agrees with the written decision
(its live file holds the newest committed version's bytes), no agent applied a version of an
aborted transaction, and no transaction stays undecided.

CI runs ``CONFBUS_FAULT_RUNS`` (default 3, ~60 s for the four steps on the 2-core CI machine)
crashes per step; ``-m slow`` runs 100 each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from confbus.coordinator.head import Heads
from confbus.runtime.api import call
from confbus.runtime.bus import Bus, connect
from confbus.runtime.errors import Unavailable
from confbus.schemas.api import txn as txn_api
from confbus.schemas.events import NodeApplied
from confbus.schemas.streams import CFG_TXN_HEAD
from tests.e2e.helpers import agent_status, decisions, events, store_version, switch
from tests.e2e.stack import Stack, stack_fixture
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NS = "web"
NODES = ("n1", "n2", "n3")
STEPS = (
    "coordinator.after_prepare_sent",
    "coordinator.after_votes",
    "coordinator.after_decision_written",
    "coordinator.after_decision_published",
)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_fixture(tmp_path, ("version_store",), agents=NODES)


async def crash_and_recover(stack: Stack, bus: Bus, step: str, runs: int) -> dict[str, int]:
    contents: dict[int, bytes] = {}
    figures = {"runs": 0, "commit": 0, "abort": 0}
    for i in range(runs):
        content = f'{{"run": {i}, "step": "{step}"}}\n'.encode()
        v = await store_version(bus, NS, content, f"{step}-{i}")
        contents[v] = content
        armed = stack.start_service(
            "coordinator",
            "--vote-timeout",
            "1",
            env={"CONFBUS_FAILPOINTS": f"{step}=kill"},
            name=f"coordinator-{i}",
        )
        async with anyio.create_task_group() as tg:
            # The reply never comes (the coordinator dies first): do not wait for it.
            tg.start_soon(_switch_quietly, bus, v)
            assert await anyio.to_thread.run_sync(armed.wait_exit) == -9
            tg.cancel_scope.cancel()
        survivor = stack.start_service(
            "coordinator", "--vote-timeout", "1", name=f"coordinator-{i}-recovered"
        )
        await eventually(lambda: settled(stack, bus), timeout=30, what="nothing in doubt")
        await check_agreement(stack, bus, contents)
        survivor.stop()
        figures["runs"] += 1
    for d in (await decisions(bus, NS)).values():
        figures[d.outcome] += 1
    return figures


async def _switch_quietly(bus: Bus, version: int) -> None:
    with pytest.raises(Unavailable):
        await switch(bus, NS, version, NODES, timeout_s=1.0, request_timeout=30.0)


async def settled(stack: Stack, bus: Bus) -> bool:
    in_doubt = await call(bus, txn_api.IN_DOUBT, txn_api.InDoubtRequest(namespace=NS))
    if in_doubt.txns:
        return False
    head = (await Heads(await bus.kv(CFG_TXN_HEAD.name)).get(NS)).value
    if head.txid is not None and head.txid not in await decisions(bus, NS):
        return False
    for agent in stack.agents.values():
        assert agent.proc.ready is not None
        st = await agent_status(agent.proc.ready["http_port"])
        ns = st["namespaces"]
        assert isinstance(ns, dict)
        if ns[NS]["in_doubt"] is not None:
            return False
    return True


async def check_agreement(stack: Stack, bus: Bus, contents: dict[int, bytes]) -> None:
    ds = await decisions(bus, NS)
    aborted = {txid for txid, d in ds.items() if d.outcome == "abort"}
    applied = [e for e in await events(bus, NS) if isinstance(e, NodeApplied)]
    assert not [e for e in applied if e.txid in aborted], "applied an aborted transaction"
    committed = [d.version for d in ds.values() if d.outcome == "commit"]
    expected = contents[max(committed)] if committed else None

    async def agree() -> bool:
        return all(a.read(NS) == expected for a in stack.agents.values())

    # Agents apply the decision from the stream; give them the time to read it.
    await eventually(agree, timeout=15, what=f"every agent on {expected!r}")


@pytest.mark.parametrize("step", STEPS)
async def test_coordinator_killed_at_each_step(stack: Stack, step: str) -> None:
    runs = int(os.environ.get("CONFBUS_FAULT_RUNS", "3"))
    bus = await connect(stack.url, name="test")
    try:
        figures = await crash_and_recover(stack, bus, step, runs)
    finally:
        await bus.close()
    print(f"\n{step}: {figures}")
    assert figures["runs"] == runs


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~5 s a crash and its recovery: ~9 min a step
@pytest.mark.parametrize("step", STEPS)
async def test_coordinator_killed_at_each_step_100(stack: Stack, step: str) -> None:
    bus = await connect(stack.url, name="test")
    try:
        figures = await crash_and_recover(stack, bus, step, 100)
    finally:
        await bus.close()
    print(f"\n{step}: {figures}")
