"""``confbus forget NODE``: an operator forgets a node that is gone for good (a decommissioned
machine, a demo's nodes), through the distributor's ``forget`` operation — refused while the
node is live, announced as ``node.forgotten`` — and ``confbus status`` no longer lists it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.schemas.events import NodeForgotten
from tests.cli.procs import arun_confbus
from tests.distributor.e2e import NS, rollout_stack, wait_event
from tests.e2e.stack import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = rollout_stack(tmp_path, ("n1", "n2"))
    try:
        yield s
    finally:
        s.stop()


async def test_a_node_gone_for_good_is_forgotten(stack: Stack) -> None:
    url = ["--nats-url", stack.url]
    async with stack.client() as client:
        await stack.live(2)
        # While it heartbeats, forgetting it would not last: refused, and said why.
        live = await arun_confbus(*url, "forget", "n1")
        assert live.returncode == 1 and "is live" in live.stderr, live

        stack.agents["n1"].proc.stop()

        async def n1_not_live() -> bool:
            st = await client.fleet_status(NS)
            return any(n.node == "n1" and n.liveness != "live" for n in st.nodes)

        await eventually(n1_not_live, timeout=20, what="n1 no longer live")
        done = await arun_confbus(*url, "forget", "n1", "--as", "olga", "--reason", "retired")
        assert done.returncode == 0, done
        assert done.stdout == f"forgot n1 (it followed {NS})\n"
        status = await arun_confbus(*url, "status", NS)
        assert "n2" in status.stdout and "n1" not in status.stdout, status.stdout
        event = await wait_event(client.bus, NodeForgotten, node="n1")
        assert (event.actor, event.reason) == ("olga", "retired")

        unknown = await arun_confbus(*url, "forget", "n9")
        assert unknown.returncode == 1 and "no node 'n9'" in unknown.stderr, unknown

        # A node that comes back is simply a member again.
        stack.agents["n1"].proc.start()
        await stack.live(2)
