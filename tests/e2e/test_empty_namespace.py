"""``publish --wait`` to a namespace no node follows (a typo in CI) exits 1 and says so; it
says the namespace is being created; ``--allow-empty`` accepts it; and an agent started a
moment before the publish counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.schemas.events import RolloutCompleted
from tests.distributor.e2e import NS, config_file, content, stack_of, wait_event
from tests.e2e.stack import Stack

pytestmark = pytest.mark.anyio


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_of(tmp_path, ())


async def test_no_node_following_the_namespace_exits_1(stack: Stack, tmp_path: Path) -> None:
    f = config_file(tmp_path, "v1")
    # Its status, before anything was published to it, is a typo's too: exit 1, said.
    r = await stack.confbus("status", "wbe")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "no namespace wbe: nothing was published to it" in r.stderr, r.stderr
    r = await stack.confbus("publish", "wbe", str(f), "--wait", "--timeout", "60")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "namespace wbe does not exist yet: creating it" in r.stderr, r.stderr
    assert "no node follows wbe" in r.stderr and "nothing was deployed" in r.stderr, r.stderr

    r = await stack.confbus("publish", "wbe", str(f), "--wait", "--allow-empty")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "does not exist yet" not in r.stderr, r.stderr  # it does now
    r = await stack.confbus("status", "wbe")
    assert r.returncode == 0 and "production v" in r.stdout, (r.stdout, r.stderr)


async def test_an_agent_started_just_before_the_publish_counts(
    stack: Stack, tmp_path: Path
) -> None:
    async with stack.client() as client:
        # Started, not yet up (its interpreter still loading) when the version is stored.
        stack.start_agent("n1", (NS,), wait_ready=False)
        v1 = await client.publish(NS, content("v1"))
        done = await wait_event(client.bus, RolloutCompleted, version=v1.version)
    assert "no agent follows" not in done.reason, done.reason
    assert stack.agents["n1"].read(NS) == content("v1")
