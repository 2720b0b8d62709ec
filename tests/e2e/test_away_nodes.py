"""A stopped node does not stop the fleet: four agents as real processes, one stopped with
SIGTERM (it says so: ``node.left``) and one SIGKILLed (its heartbeats stop). ``publish --wait``
exits 0 on the two others and names the two as away; each converges within 2 s of its first
heartbeat once it is back. ``--require-all`` makes them required."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from confbus.schemas import subjects
from confbus.schemas.events import NodeLeft
from confbus.schemas.node import decode_heartbeat
from tests.distributor.e2e import NS, config_file, content, live_under_policy, stack_of, wait_event
from tests.e2e.stack import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NODES = ("n1", "n2", "n3", "n4")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_of(tmp_path, NODES)


async def liveness_of(stack: Stack, node: str) -> tuple[str, str]:
    async with stack.client() as client:
        st = await client.fleet_status(NS)
    n = next(x for x in st.nodes if x.node == node)
    return n.liveness, n.liveness_reason


async def back_and_converged(stack: Stack, node: str, data: bytes) -> float:
    """Restart ``node``; the seconds from its first heartbeat to its file holding ``data``."""
    async with stack.client() as client:
        sub = await client.bus.nc.subscribe(subjects.heartbeat(node))
        await anyio.to_thread.run_sync(lambda: stack.agents[node].proc.start())
        with anyio.fail_after(10):
            while True:
                msg = await sub.next_msg(timeout=10)
                if not decode_heartbeat(msg.data).leaving:
                    break
        first = anyio.current_time()
        await sub.unsubscribe()
    with anyio.fail_after(2.0):  # the must-show: within 2 s of coming back
        while stack.agents[node].read(NS) != data:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return anyio.current_time() - first


async def test_a_stopped_and_a_killed_node_do_not_stop_a_publish(
    stack: Stack, tmp_path: Path
) -> None:
    await live_under_policy(stack, len(NODES), strategy="linear:50%")
    r = await stack.confbus("publish", NS, str(config_file(tmp_path, "v1")), "--wait")
    assert r.returncode == 0, r.stderr
    assert "production on 4 node(s)" in r.stdout, r.stdout

    stack.agents["n3"].proc.stop()  # SIGTERM: it says it leaves
    stack.agents["n4"].proc.kill()  # SIGKILL: it just stops beating
    async with stack.client() as client:
        left = await wait_event(client.bus, NodeLeft, node="n3")
    assert left.namespace == NS
    liveness, why = await liveness_of(stack, "n3")
    assert liveness == "away" and "stopped" in why, (liveness, why)

    async def n4_away() -> bool:
        return (await liveness_of(stack, "n4"))[0] == "away"

    await eventually(n4_away, timeout=10, every=0.1, what="n4 away")
    _, why = await liveness_of(stack, "n4")
    assert "missed" in why and "heartbeats" in why, why

    publish_v2 = ("publish", NS, str(config_file(tmp_path, "v2")), "--id", "ci-v2", "--wait")
    r = await stack.confbus(*publish_v2, "--timeout", "60")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "production on 2 node(s), 2 away" in r.stdout, r.stdout
    assert "away: n3, n4" in r.stderr and "catch up when they are back" in r.stderr, r.stderr
    for n in ("n1", "n2"):
        assert stack.agents[n].read(NS) == content("v2"), n
    for n in ("n3", "n4"):
        assert stack.agents[n].read(NS) == content("v1"), n
    async with stack.client() as client:
        rollout = await client.rollout_info(NS)
    assert rollout is not None and rollout.away == ["n3", "n4"], rollout
    assert rollout.targets == ["n1", "n2"]
    status = await stack.confbus("status", NS)
    assert "stopped (node.left)" in status.stdout, status.stdout

    for n in ("n3", "n4"):
        await back_and_converged(stack, n, content("v2"))

    # The CI job retried: the rollout it picks up ended with n3 and n4 away, but they hold v2
    # now, and the job is told so rather than the rollout's old account.
    r = await stack.confbus(*publish_v2, "--timeout", "60")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "production on 4 node(s) (rollout" in r.stdout, r.stdout
    assert "n3, n4: away during the rollout, caught up on v2 since" in r.stderr, r.stderr
    assert "away:" not in r.stderr, r.stderr


async def test_require_all_waits_for_the_away_nodes(stack: Stack, tmp_path: Path) -> None:
    await stack.live(len(NODES))
    stack.agents["n4"].proc.stop()
    async with stack.client() as client:
        await wait_event(client.bus, NodeLeft, node="n4")
    args = ("publish", NS, str(config_file(tmp_path, "v1")), "--wait", "--require-all")
    r = await stack.confbus(*args, "--timeout", "4")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "n4 not back on v1 within --timeout" in r.stderr, r.stderr

    async with anyio.create_task_group() as tg:
        result: list[subprocess.CompletedProcess[str]] = []

        async def publish_again() -> None:
            result.append(await stack.confbus(*args, "--timeout", "60"))

        tg.start_soon(publish_again)
        await back_and_converged(stack, "n4", content("v1"))
    assert result[0].returncode == 0, result[0].stderr
    assert "n4: caught up" in result[0].stderr, result[0].stderr


async def test_every_node_away_the_version_waits_for_them(stack: Stack, tmp_path: Path) -> None:
    """One rule whether nodes stopped (SIGTERM) or just fell silent: with no live node the
    version becomes production and every node catches up when it is back — not a refusal."""
    await stack.live(len(NODES))
    r = await stack.confbus("publish", NS, str(config_file(tmp_path, "v1")), "--wait")
    assert r.returncode == 0, r.stderr
    for n in NODES:
        stack.agents[n].proc.stop()
    async with stack.client() as client:
        for n in NODES:
            await wait_event(client.bus, NodeLeft, node=n)

    r = await stack.confbus("publish", NS, str(config_file(tmp_path, "v2")), "--wait")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "production on 0 node(s), 4 away" in r.stdout, r.stdout
    assert "away: n1, n2, n3, n4" in r.stderr, r.stderr
    async with stack.client() as client:
        rollout = await client.rollout_info(NS)
        prod = (await client.get(NS, "production", content=False)).info
    assert rollout is not None and rollout.away == list(NODES) and not rollout.targets, rollout
    assert prod.version == 2, prod
    for n in NODES:
        assert stack.agents[n].read(NS) == content("v1"), n  # untouched while stopped

    await back_and_converged(stack, "n1", content("v2"))
