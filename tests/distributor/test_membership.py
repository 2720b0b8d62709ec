"""Liveness from heartbeats when *we* heard nothing for a while (a broker restart): the silence
is ours, not the fleet's."""

from __future__ import annotations

import time

import anyio
import pytest

from confbus.distributor.membership import Membership
from confbus.schemas.node import Heartbeat, NamespaceState
from confbus.schemas.state import NodeRecord

INTERVAL = 0.5


def beat(node: str) -> Heartbeat:
    return Heartbeat(
        node=node, namespaces=[NamespaceState(namespace="web")], interval_s=INTERVAL, ready=True
    )


def heard_long_ago(m: Membership, seconds: float) -> None:
    """As if the last heartbeats came ``seconds`` earlier than they did."""
    for member in m.members.values():
        member.seen -= seconds
    m.last_any -= seconds


def test_nodes_live_before_we_went_deaf_are_live_when_we_hear_again() -> None:
    m = Membership(heartbeat_interval_s=INTERVAL)
    for node in ("n1", "n2", "n3"):
        m.observe(beat(node))
    m.members["n3"].seen -= 10 * INTERVAL  # n3 had gone quiet before: it stays away
    heard_long_ago(m, 3.0)  # nobody heard for 3 s: six intervals
    assert m.deaf() and not m.is_live("n1") and not m.is_live("n2")

    m.observe(beat("n1"))  # the first heartbeat after the restart

    assert not m.deaf()
    assert m.live_nodes("web") == ["n1", "n2"]
    assert m.liveness("n3") != "live"


def test_a_node_that_died_while_we_were_deaf_turns_away_after_its_own_silence() -> None:
    m = Membership(heartbeat_interval_s=INTERVAL)
    m.observe(beat("n1"))
    m.observe(beat("n2"))
    heard_long_ago(m, 3.0)
    m.observe(beat("n1"))
    assert m.is_live("n2")  # judged as if the 3 s had not passed
    m.members["n2"].seen -= 4 * INTERVAL  # and then it stays silent
    assert not m.is_live("n2")


@pytest.mark.anyio
async def test_the_driver_waits_for_the_first_heartbeat_before_judging_anyone() -> None:
    m = Membership(heartbeat_interval_s=INTERVAL)
    m.started -= 10.0  # long past the start-up warm-up
    m.observe(beat("n1"))
    heard_long_ago(m, 3.0)
    async with anyio.create_task_group() as tg:
        started = time.monotonic()
        tg.start_soon(m.warm)
        await anyio.wait_all_tasks_blocked()  # the driver is waiting: nobody heard yet
        m.observe(beat("n1"))
    assert time.monotonic() - started < INTERVAL  # not the whole 1.5 intervals
    assert m.is_live("n1")


def recorded(*nodes: str, liveness: str = "live") -> list[tuple[NodeRecord, int]]:
    """Node records as a replica that just started reads them from CFG_STATE."""
    web = [NamespaceState(namespace="web")]
    return [
        (NodeRecord(node=n, namespaces=web, interval_s=INTERVAL, liveness=liveness), 1)
        for n in nodes
    ]


async def warm_seconds(m: Membership, *heard: str) -> float:
    """How long ``warm`` takes when ``heard`` heartbeat once it is waiting."""
    async with anyio.create_task_group() as tg:
        started = time.monotonic()
        tg.start_soon(m.warm)
        await anyio.wait_all_tasks_blocked()
        for node in heard:
            m.observe(beat(node))
    return time.monotonic() - started


WINDOW = 1.5 * INTERVAL  # the start-up warm-up


@pytest.mark.anyio
async def test_a_replica_taking_over_judges_once_every_node_recorded_live_has_spoken() -> None:
    m = Membership(heartbeat_interval_s=8.0)  # a 12 s warm-up: what it saves is plain
    m.load(recorded("n1", "n2") + recorded("n3", liveness="away"))
    # n3 was away when the records were written: nobody waits for it.
    assert await warm_seconds(m, "n1", "n2") < 6.0
    assert m.live_nodes("web") == ["n1", "n2"]


@pytest.mark.anyio
async def test_a_node_recorded_live_and_not_heard_keeps_the_whole_warm_up() -> None:
    m = Membership(heartbeat_interval_s=INTERVAL)
    m.load(recorded("n1", "n2"))
    assert await warm_seconds(m, "n1") >= WINDOW * 0.9  # n2 may only be slow to speak


@pytest.mark.anyio
async def test_with_no_records_read_the_whole_warm_up_is_waited() -> None:
    m = Membership(heartbeat_interval_s=INTERVAL)  # records unread (or unreadable)
    assert await warm_seconds(m, "n1", "n2") >= WINDOW * 0.9
