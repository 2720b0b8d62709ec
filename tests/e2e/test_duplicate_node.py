"""Two agents with one node id: the second (a fresh state dir) is refused — it exits 1 saying
which instance holds the node — and ``status`` and ``doctor`` report it; it never writes the
node's file. An agent restarted on its own state dir (a crash) is the same instance and just
comes back. An agent with no state goes straight to its node's target version: one apply, not
a replay of every transaction the node was ever part of. Real processes throughout."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from confbus.procs.proc import Proc
from confbus.schemas.events import NodeApplied, NodeDuplicate
from tests.distributor.e2e import NS, content, of, publish_all, stack_of, wait_event
from tests.e2e.stack import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NODES = ("n1", "n2")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_of(tmp_path, NODES)


async def test_a_second_agent_with_the_same_node_id_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.live(len(NODES))
    await publish_all(stack, tmp_path, "v1", "v2", "v3")

    other = tmp_path / "other"
    twin = stack.start_agent(
        "n1",
        (NS,),
        "--heartbeat-interval",
        "0.3",
        live_dir=other / "etc",
        state_dir=other / "state",
        wait_ready=False,
        key="n1-twin",
    )
    code = await exit_code(twin.proc)
    assert code == 1, code
    err = twin.proc.log_text()
    assert "node n1 is already live" in err, err
    assert not (other / "etc" / f"{NS}.conf").exists()  # it wrote nothing

    async with stack.client() as client:
        dup = await wait_event(client.bus, NodeDuplicate, node="n1")
    evs = await stack.events()
    assert dup.instance != dup.live_instance, dup
    assert len([e for e in of(evs, NodeApplied) if e.node == "n1"]) == 3  # v1, v2, v3 once
    status = await stack.confbus("status", NS)
    assert "a second agent" in status.stdout and "refused" in status.stdout, status.stdout
    doctor = await stack.confbus("doctor", "--agents-wait", "1")
    assert "n1" in doctor.stdout and "refused" in doctor.stdout, doctor.stdout
    assert "all checks passed" not in doctor.stdout, doctor.stdout

    # The node's own agent, killed and restarted on its own state dir: the same instance.
    stack.agents["n1"].proc.kill()
    stack.agents["n1"].proc.start()
    await stack.live(len(NODES))
    await publish_all(stack, tmp_path, "v4")
    evs = await stack.events()
    assert len(of(evs, NodeDuplicate)) == 1, of(evs, NodeDuplicate)


async def test_an_agent_with_no_state_goes_straight_to_its_target(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.live(len(NODES))
    await publish_all(stack, tmp_path, "v1", "v2", "v3")
    # n2, part of all three transactions, reinstalled: stopped, its state and file wiped.
    stack.agents["n2"].proc.stop()
    shutil.rmtree(tmp_path / "nodes" / "n2")
    agent = stack.start_agent("n2", (NS,), "--heartbeat-interval", "0.3", key="n2-new")
    await stack.files_hold(["n2-new"], content("v3"))

    async def applied() -> list[int] | None:
        """The versions the agent logged as applied, once v3 is among them (it logs an apply
        just after it wrote the file)."""
        found = [
            line["version"]
            for line in map(json.loads, agent.proc.log_text().splitlines())  # one JSON a line
            if line.get("msg") == "applied"
        ]
        return found if 3 in found else None

    versions = await eventually(applied, timeout=10, what="n2-new's applied log line")
    assert versions == [3], versions  # not v1, v2, v3 replayed into its file
    kept = tmp_path / "nodes" / "n2" / "state" / NS / "versions"
    assert sorted(p.name for p in kept.iterdir()) == ["3"]


async def exit_code(proc: Proc) -> int:
    def wait() -> int:
        assert proc.popen is not None
        try:
            return proc.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            return -1

    return await anyio.to_thread.run_sync(wait)
