"""The atomic switch end to end: real nats-server, version-store, coordinator and
agent processes writing real files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import anyio
import pytest

from confbus.runtime.bus import connect
from confbus.schemas.events import NodeApplied, TxnAborted, TxnCommitted
from tests.e2e.helpers import agent_status, decisions, events, store_version, switch
from tests.e2e.stack import Stack, start_stack
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NS = "web"
NODES = ("n1", "n2", "n3")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path, services=("version_store",))
    try:
        yield s
    finally:
        s.stop()


async def files_hold(stack: Stack, nodes: tuple[str, ...], content: bytes) -> bool:
    return all(stack.agents[n].read(NS) == content for n in nodes)


async def test_three_agents_switch_byte_for_byte(stack: Stack) -> None:
    stack.start_service("coordinator")
    stack.start_agents(NODES)
    bus = await connect(stack.url, name="test")
    try:
        content = b'{"pool": 32, "feature": true}\n'
        v = await store_version(bus, NS, content, "c1")
        reply = await switch(bus, NS, v, NODES)
        assert reply.outcome == "commit", reply
        await eventually(lambda: files_hold(stack, NODES, content), what="files switched")
        # Each agent announces its apply just after the rename: wait for the events too.
        applied: list[NodeApplied] = []

        async def all_announced() -> bool:
            applied[:] = [e for e in await events(bus, NS) if isinstance(e, NodeApplied)]
            return len(applied) >= len(NODES)

        await eventually(all_announced, what="node.applied from every agent")
        assert sorted(e.node for e in applied) == list(NODES)
        assert all(e.txid == reply.txid for e in applied)
    finally:
        await bus.close()


async def test_one_failing_validation_changes_no_file_anywhere(stack: Stack) -> None:
    stack.start_service("coordinator")
    good = b'{"pool": 1}\n'
    bus = await connect(stack.url, name="test")
    try:
        for n in NODES:
            extra = ("--validate", "sh -c 'echo pool too small >&2; exit 1'") if n == "n2" else ()
            stack.start_agent(n, (NS,), *extra)
        v = await store_version(bus, NS, good, "c1")
        reply = await switch(bus, NS, v, NODES)
        assert reply.outcome == "abort"
        votes = {r.node: r for r in reply.votes}
        assert votes["n2"].vote == "no" and "pool too small" in votes["n2"].reason
        aborted = [e for e in await events(bus, NS) if isinstance(e, TxnAborted)]
        assert aborted and "n2" in aborted[0].reason and "pool too small" in aborted[0].reason
        # Nobody was left holding a prepared transaction, and no file was written anywhere.
        for n in NODES:
            agent = stack.agents[n]
            assert agent.read(NS) is None
            assert agent.proc.ready is not None
            port: int = agent.proc.ready["http_port"]
            st = await agent_status(port)
            await eventually(partial(_not_in_doubt, port), what=f"{n} not in doubt")
            assert st["node"] == n
        staged = [
            p
            for n in NODES
            for p in stack.agents[n].files[NS].parent.iterdir()
            if "staged" in p.name
        ]
        assert staged == []
    finally:
        await bus.close()


async def _not_in_doubt(port: int) -> bool:
    st = await agent_status(port)
    ns = st["namespaces"]
    assert isinstance(ns, dict)
    return ns[NS]["in_doubt"] is None


async def test_agent_killed_after_voting_yes_learns_the_decision(stack: Stack) -> None:
    stack.start_service("coordinator")
    stack.start_agents(("n1", "n2"))
    stack.start_agent("n3", env={"CONFBUS_FAILPOINTS": "agent.after_vote=kill"})
    bus = await connect(stack.url, name="test")
    try:
        content = b'{"v": 2}\n'
        v = await store_version(bus, NS, content, "c1")
        reply = await switch(bus, NS, v, NODES)
        # n3 voted yes (durably PREPARED) before it died: the transaction commits.
        assert reply.outcome == "commit"
        await anyio.to_thread.run_sync(stack.agents["n3"].proc.wait_exit)
        assert stack.agents["n3"].read(NS) is None
        stack.agents["n3"].proc.env.pop("CONFBUS_FAILPOINTS", None)
        stack.agents["n3"].proc.start()
        await eventually(lambda: files_hold(stack, NODES, content), what="n3 converged")
    finally:
        await bus.close()


async def test_state_dir_on_another_file_system_still_switches(
    stack: Stack, tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:  # noqa: ASYNC240
        pytest.skip("no separate tmpfs available")
    state = shm / f"confbus-test-{os.getpid()}-{tmp_path.name}"
    stack.start_service("coordinator")
    stack.start_agent("n1", state_dir=state)
    bus = await connect(stack.url, name="test")
    try:
        content = b'{"cross": "fs"}\n'
        v = await store_version(bus, NS, content, "c1")
        assert (await switch(bus, NS, v, ["n1"])).outcome == "commit"
        await eventually(lambda: files_hold(stack, ("n1",), content), what="switched")
        # The history copy is written just after the live file's rename.
        kept = state / NS / "versions" / str(v)

        async def history_kept() -> bool:
            return kept.is_file() and kept.read_bytes() == content

        await eventually(history_kept, what="the version kept in the state dir")
    finally:
        await bus.close()
        import shutil

        shutil.rmtree(state, ignore_errors=True)


async def test_paused_coordinator_is_fenced_after_a_takeover(stack: Stack) -> None:
    """A (paused right after sending its prepare) loses the namespace to B; resumed, it can
    write no decision and no agent applies its version."""
    zombie = stack.start_service(
        "coordinator",
        env={"CONFBUS_FAILPOINTS": "coordinator.after_prepare_sent=pause"},
        name="coordinator-a",
    )
    stack.start_agents(NODES)
    bus = await connect(stack.url, name="test")
    try:
        v = await store_version(bus, NS, b'{"zombie": true}\n', "c1")
        result: list[str] = []

        async def zombie_switch() -> None:
            try:
                reply = await switch(bus, NS, v, NODES, timeout_s=1.0, request_timeout=60)
                result.append(reply.outcome)
            except Exception as exc:
                result.append(repr(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(zombie_switch)
            # Wait until A is stopped by its failpoint (SIGSTOP shows as state T).
            await eventually(lambda: _stopped(zombie.pid), what="coordinator A paused")
            stack.start_service("coordinator", name="coordinator-b")

            # B sees A's liveness go stale, takes over (epoch 2) and aborts A's transaction.
            async def aborted() -> bool:
                ds = await decisions(bus, NS)
                return any(d.outcome == "abort" and d.epoch >= 2 for d in ds.values())

            await eventually(aborted, timeout=20, what="B aborted A's transaction")
            zombie.resume()
        assert result == ["abort"], result
        ds = list((await decisions(bus, NS)).values())
        assert len(ds) == 1 and ds[0].outcome == "abort"
        evs = await events(bus, NS)
        assert not [e for e in evs if isinstance(e, NodeApplied)]
        assert not [e for e in evs if isinstance(e, TxnCommitted)]
        for n in NODES:
            assert stack.agents[n].read(NS) is None
    finally:
        await bus.close()


async def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()  # noqa: ASYNC240 (procfs, never blocks)
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"
