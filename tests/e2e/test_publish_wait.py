"""``confbus publish … --wait`` as a CI job runs it (issues 4 and 5): the real CLI process
against real services and three agent processes writing real files; the exit code, the
messages and the bytes on each node's disk are what is checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.schemas.events import RolloutCompleted
from tests.distributor.e2e import NS, config_file, content, live_under_policy, stack_of, wait_event
from tests.e2e.stack import Stack

pytestmark = pytest.mark.anyio

NODES = ("n1", "n2", "n3")
BAD_VALIDATE = ("--validate", "sh -c 'echo pool too small >&2; exit 1'")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_of(tmp_path, NODES)


@pytest.fixture
def bad_stack(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_of(tmp_path, NODES, agent_args={"n2": BAD_VALIDATE})


async def test_publish_wait_exits_0_once_every_node_holds_the_bytes(
    stack: Stack, tmp_path: Path
) -> None:
    await live_under_policy(stack, len(NODES), strategy="linear:34%")
    f = config_file(tmp_path, "v1")
    args = ("publish", NS, str(f), "--id", "3f2a9c1", "--wait", "--timeout", "60", "--progress")
    r = await stack.confbus(*args)
    assert r.returncode == 0, r.stderr
    assert f"{NS} v1 " in r.stdout and "production on 3 node(s)" in r.stdout, r.stdout
    # The waves as they completed, on stderr.
    assert "in 2 wave(s), linear:34%" in r.stderr and "wave 2: committed" in r.stderr, r.stderr
    # When it exits 0, the bytes are already on every node's disk.
    for n in NODES:
        assert stack.agents[n].read(NS) == content("v1"), n

    # A retried CI job (same --id): the same version, and it waits for nothing new.
    again = await stack.confbus(*args)
    assert again.returncode == 0, again.stderr
    assert f"{NS} v1 " in again.stdout and "production on 3 node(s)" in again.stdout
    async with stack.client() as client:
        assert [v.version for v in await client.history(NS)] == [1]


async def test_a_refusing_node_exits_1_with_its_reason_and_no_file_changes(
    bad_stack: Stack, tmp_path: Path
) -> None:
    await live_under_policy(bad_stack, len(NODES), max_excluded=0.0)
    r = await bad_stack.confbus(
        "publish", NS, str(config_file(tmp_path, "v1")), "--wait", "--timeout", "60"
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "n2" in r.stderr and "pool too small" in r.stderr, r.stderr
    assert "failed" in r.stderr, r.stderr
    for n in NODES:
        assert bad_stack.agents[n].read(NS) is None, n


async def test_a_draft_waits_for_approval_then_times_out_with_3(
    stack: Stack, tmp_path: Path
) -> None:
    await live_under_policy(stack, len(NODES), require_approval=True)
    r = await stack.confbus(
        "publish", NS, str(config_file(tmp_path, "v1")), "--wait", "--timeout", "3"
    )
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "waiting for approval" in r.stderr and "confbus approve web 1 --as" in r.stderr
    assert "timed out: web v1 is still a draft" in r.stderr, r.stderr
    for n in NODES:
        assert stack.agents[n].read(NS) is None, n

    # Approved meanwhile: a second wait (the CI job retried) sees it through.
    async with stack.client() as client:
        await stack.live(len(NODES))
        await client.approve(NS, 1, "reviewer")
        await wait_event(client.bus, RolloutCompleted, version=1)
    r = await stack.confbus(
        "publish", NS, str(config_file(tmp_path, "v1")), "--wait", "--timeout", "60"
    )
    assert r.returncode == 0, r.stderr
    assert all(stack.agents[n].read(NS) == content("v1") for n in NODES)
