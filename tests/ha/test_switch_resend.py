"""A switch request whose coordinator replica dies while it runs: the caller finds out from
that replica's presence within about a second (not at its 19 s deadline), sends the request
again, and the request id makes the repeat safe — one transaction per request, whatever
point the replica died at (docs/design.md §4.6, ``confbus.coordinator.requests``).

c1 is armed to SIGKILL itself at a step of its *second* switch: it runs the first switch
alone (so it leads the namespace), c2 joins, and the second switch kills c1 mid-request,
whichever replica the request reached first."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.runtime.api import call
from confbus.runtime.bus import connect
from confbus.schemas.api import txn as txn_api
from confbus.schemas.txn import Prepare
from tests.e2e.helpers import store_version, switch, txn_records
from tests.e2e.stack import Stack, start_stack
from tests.ha.hastack import lease_holder

pytestmark = pytest.mark.anyio

NS = "web"
NODES = ("n1", "n2")
VOTE_S = 2.0
# Found out from the presence (~0.6 s), taken over by the survivor (~0.5 s), settled: well
# inside this, where waiting for the reply would take the whole deadline.
FOUND_OUT_S = 8.0


def stack_killing_at(tmp_path: Path, failpoint: str) -> Iterator[Stack]:
    s = start_stack(tmp_path, services=("version_store",))
    try:
        env = {"CONFBUS_FAILPOINTS": f"{failpoint}=kill@2"}
        s.start_service("coordinator", *replica("c1"), name="c1", env=env)
        for n in NODES:
            s.start_agent(n)
        yield s
    finally:
        s.stop()


def replica(name: str) -> tuple[str, ...]:
    return ("--instance", name, "--lease-ttl", "5")


@pytest.fixture
def after_prepare(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_killing_at(tmp_path, "coordinator.after_prepare_sent")


@pytest.fixture
def on_arrival(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_killing_at(tmp_path, "coordinator.switch_taken")


async def resent_after_kill(stack: Stack) -> tuple[txn_api.SwitchRequest, txn_api.SwitchReply]:
    """Lead with one switch, then send one that kills the leader mid-request; the reply, and
    how it came (checked: fast, the leader dead, the survivor leading)."""
    bus = await connect(stack.url, name="test")
    try:
        first = await store_version(bus, NS, b'{"n": 1}', "c1")
        assert (await switch(bus, NS, first, NODES, timeout_s=VOTE_S)).outcome == "commit"
        held = await lease_holder(bus, "coordinator", NS)
        assert held is not None and held[0] == "c1"
        leader = "c1"
        stack.start_service("coordinator", *replica("c2"), name="c2")
        second = await store_version(bus, NS, b'{"n": 2}', "c2")
        request = txn_api.SwitchRequest(
            namespace=NS, version=second, nodes=list(NODES), timeout_s=VOTE_S
        )
        assert txn_api.SWITCH.deadline_s(request) > 2 * FOUND_OUT_S
        sent = time.monotonic()
        reply = await call(bus, txn_api.SWITCH, request)
        took = time.monotonic() - sent
        print(f"\nanswered {took:.2f}s after the request that killed {leader}")
        assert took < FOUND_OUT_S
        popen = stack.services[leader].popen
        assert popen is not None and popen.poll() is not None, "the leader is still running"
        now = await lease_holder(bus, "coordinator", NS)
        assert now is not None and now[0] != leader
        # Sent once more (as a caller whose answer was lost would): the same answer.
        again = await call(bus, txn_api.SWITCH, request)
        assert (again.txid, again.outcome) == (reply.txid, reply.outcome)
        return request, reply
    finally:
        await bus.close()


async def prepares_of(stack: Stack, version: int) -> list[Prepare]:
    bus = await connect(stack.url, name="test-read")
    try:
        records = await txn_records(bus, NS)
        return [r for r in records if isinstance(r, Prepare) and r.version == version]
    finally:
        await bus.close()


async def test_killed_after_its_prepare_the_same_transaction_is_the_answer(
    after_prepare: Stack,
) -> None:
    request, reply = await resent_after_kill(after_prepare)
    prepares = await prepares_of(after_prepare, request.version)
    # One transaction for the request: the dead leader's, aborted by its successor.
    assert [p.txid for p in prepares] == [reply.txid]
    assert reply.outcome == "abort"
    assert {v.vote for v in reply.votes} == {"missing"}


async def test_killed_before_starting_the_repeat_runs_it_once(on_arrival: Stack) -> None:
    request, reply = await resent_after_kill(on_arrival)
    prepares = await prepares_of(on_arrival, request.version)
    assert reply.outcome == "commit"
    assert [p.txid for p in prepares] == [reply.txid]
