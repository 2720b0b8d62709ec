"""``confbus rollback --to N`` to a version the namespace's current policy refuses (its JSON
Schema now requires a field the version lacks) is refused with the reason; ``--force`` rolls
back anyway, and the audit log says who forced it past what. Real processes throughout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.schemas.events import RollbackCompleted, RollbackStarted, VersionCreated
from tests.distributor.e2e import NS, content, of, publish_all, set_policy, stack_of
from tests.e2e.stack import Stack

pytestmark = pytest.mark.anyio

NODES = ("n1", "n2")
REGION_REQUIRED = {"type": "object", "required": ["region"]}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_of(tmp_path, NODES, services=("version_store", "coordinator", "rollbacker"))


async def test_a_rollback_the_current_schema_refuses_needs_force(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.live(len(NODES))
    await publish_all(stack, tmp_path, "v1")
    async with stack.client() as client:
        await set_policy(client, json_schema=REGION_REQUIRED)
    v2 = tmp_path / "v2.json"
    v2.write_bytes(b'{"release": "v2", "region": "eu1"}\n')
    r = await stack.confbus("publish", NS, str(v2), "--wait")
    assert r.returncode == 0, (r.stdout, r.stderr)

    r = await stack.confbus("rollback", NS, "--to", "1", "--as", "bob")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "v1 does not pass web's current policy" in r.stderr, r.stderr
    assert "'region' is a required property" in r.stderr, r.stderr
    assert "--force" in r.stderr, r.stderr
    evs = await stack.events()
    assert not of(evs, RollbackStarted), of(evs, RollbackStarted)
    assert [e.version for e in of(evs, VersionCreated)] == [1, 2]  # nothing was created
    await stack.files_hold(NODES, v2.read_bytes())

    args = ("--to", "1", "--force", "--as", "alice", "--reason", "incident 12", "--wait")
    r = await stack.confbus("rollback", NS, *args)
    assert r.returncode == 0, (r.stdout, r.stderr)
    await stack.files_hold(NODES, content("v1"))
    evs = await stack.events()
    (started,) = of(evs, RollbackStarted)
    assert started.actor == "alice", started
    assert "incident 12" in started.reason, started.reason
    assert "forced by alice past the current policy" in started.reason, started.reason
    assert "'region' is a required property" in started.reason, started.reason
    assert len(of(evs, RollbackCompleted)) == 1
