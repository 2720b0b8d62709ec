"""A version published with a selector is production for the matching nodes only: four agents,
two labelled ``dc=eu1`` and two ``dc=us1``; a version for ``dc=eu1`` reaches e1 and e2, and u1
and u2 keep theirs — no catch-up switch moves them, ``status`` says each node's target and why,
and a ``dc=us1`` node that joins later gets the us1 production. A version for every node then
reaches all. Real processes throughout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from confbus.schemas import subjects
from confbus.schemas.events import NodeCatchUp
from tests.distributor.e2e import NS, content, events, of, stack_of, wait_rollout
from tests.e2e.stack import Stack

pytestmark = pytest.mark.anyio

LABELS = {"e1": "eu1", "e2": "eu1", "u1": "us1", "u2": "us1"}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    labels = {n: ("--label", f"dc={dc}") for n, dc in LABELS.items()}
    yield from stack_of(tmp_path, tuple(LABELS), agent_args=labels)


async def heartbeats_heard(stack: Stack, node: str, count: int) -> None:
    """Wait until ``count`` more heartbeats of ``node`` went out: each one the distributor
    hears is a chance for a catch-up to start."""
    async with stack.client() as client:
        sub = await client.bus.nc.subscribe(subjects.heartbeat(node))
        with anyio.fail_after(10):
            for _ in range(count):
                await sub.next_msg(timeout=10)
        await sub.unsubscribe()


async def test_a_version_with_a_selector_is_production_for_its_nodes_only(stack: Stack) -> None:
    async with stack.client() as client:
        await stack.live(len(LABELS))
        v1 = await client.publish(NS, content("v1"))
        await wait_rollout(client, v1.version)
        await stack.files_hold(list(LABELS), content("v1"))
        v2 = await client.publish(NS, content("v2"), selector={"dc": "eu1"})
        done = await wait_rollout(client, v2.version)
    assert done.state == "completed" and done.targets == ["e1", "e2"], done
    await stack.files_hold(["e1", "e2"], content("v2"))
    for n in ("u1", "u2"):
        await heartbeats_heard(stack, n, 5)
    assert stack.agents["u1"].read(NS) == content("v1")
    assert stack.agents["u2"].read(NS) == content("v1")
    async with stack.client() as client:
        moved = [e for e in of(await events(client.bus), NodeCatchUp) if e.node in ("u1", "u2")]
        st = await client.fleet_status(NS)
    assert not moved, moved
    targets = {n.node: (n.target_version, n.target_reason) for n in st.nodes}
    assert targets["e1"] == (2, "production v2 for dc=eu1"), targets
    assert targets["u1"] == (1, "production v1 (v2 is for dc=eu1 only)"), targets
    r = await stack.confbus("status", NS)
    assert "target: production v1 (v2 is for dc=eu1 only)" in r.stdout, r.stdout

    stack.start_agent("u3", (NS,), "--heartbeat-interval", "0.3", "--label", "dc=us1")
    await stack.files_hold(["u3"], content("v1"))

    async with stack.client() as client:
        v3 = await client.publish(NS, content("v3"))
        done = await wait_rollout(client, v3.version)
        assert done.state == "completed", done
        await stack.files_hold([*LABELS, "u3"], content("v3"))
        st = await client.fleet_status(NS)
    assert {(n.target_version, n.target_reason) for n in st.nodes} == {(3, "production v3")}
