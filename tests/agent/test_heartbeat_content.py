"""What an agent's heartbeats say, on a real nats-server: a live file changed by hand shows in
its next heartbeat (the drift check looks at the file's stat each beat and hashes it again when
the stat moved), and an unchanged heartbeat is the last one built with the time of now.

The wait between beats (``BeatTimer``): a beat asked for while one is being sent goes out
right after it; one asked for during the wait ends the wait."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from nats.aio.msg import Msg

from confbus.agent.heartbeat import BeatTimer
from confbus.agent.node import Binding, NodeAgent
from confbus.agent.state_io import SETTLED_NS, FileHash
from confbus.runtime.bus import Bus
from confbus.schemas import subjects
from confbus.schemas.node import Heartbeat, decode_heartbeat

pytestmark = pytest.mark.anyio


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Beats:
    """Every heartbeat of one node, with a wake-up for each."""

    def __init__(self) -> None:
        self.got: list[Heartbeat] = []
        self._new = anyio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.got.append(decode_heartbeat(msg.data))
        self._new.set()
        self._new = anyio.Event()

    async def after(self, start: int, count: int, timeout: float = 10.0) -> list[Heartbeat]:
        """The first ``count`` heartbeats from index ``start`` on, once they came."""
        with anyio.fail_after(timeout):
            while len(self.got) < start + count:
                await self._new.wait()
        return self.got[start : start + count]


def live_sha(hb: Heartbeat) -> str | None:
    return hb.namespaces[0].sha256


async def test_a_hand_edit_shows_in_the_next_heartbeat(bus: Bus, tmp_path: Path) -> None:
    live = tmp_path / "etc" / "web.json"
    live.parent.mkdir()
    live.write_bytes(b"one")
    agent = NodeAgent(
        node="n1",
        bindings=[Binding("web", str(live))],
        state_dir=str(tmp_path / "state"),
        heartbeat_interval_s=0.1,
    )
    beats = Beats()
    await bus.nc.subscribe(subjects.heartbeat("n1"), cb=beats.on_msg)
    async with anyio.create_task_group() as tg:
        await tg.start(agent.run, bus)
        disk = agent.namespaces["web"].disk
        # Past the racy second after the write: the hash is kept, and a beat costs a stat.
        settled_at = live.stat().st_ctime_ns + SETTLED_NS
        while time.time_ns() <= settled_at:
            await beats.after(len(beats.got), 1)
        (first,) = await beats.after(len(beats.got), 1)
        assert live_sha(first) == sha(b"one")
        assert disk.live_unchanged(sha(b"one"))

        # The same size, the same inode: only the times move. Every heartbeat after the one
        # that may have been on its way says the new bytes.
        n = len(beats.got)
        with live.open("r+b") as f:
            f.write(b"two")
        _, *after = await beats.after(n, 3)
        assert [live_sha(hb) for hb in after] == [sha(b"two")] * 2

        n = len(beats.got)
        live.unlink()
        _, *after = await beats.after(n, 3)
        assert [live_sha(hb) for hb in after] == [None] * 2

        n = len(beats.got)
        tmp = live.with_name("new")
        tmp.write_bytes(b"three")
        os.replace(tmp, live)
        _, *after = await beats.after(n, 3)
        assert [live_sha(hb) for hb in after] == [sha(b"three")] * 2
        tg.cancel_scope.cancel()


async def test_an_unchanged_heartbeat_is_the_last_one_with_the_time_of_now(
    tmp_path: Path,
) -> None:
    agent = NodeAgent(
        node="n1",
        bindings=[Binding("web", str(tmp_path / "web.json"))],
        state_dir=str(tmp_path / "state"),
        labels={"zone": "a"},
    )
    await agent.load()
    one = agent.heartbeat()
    two = agent.heartbeat()
    assert two.at >= one.at and two.at <= datetime.now(UTC)
    assert (two.node, two.labels, two.namespaces, two.ready, two.instance) == (
        one.node,
        one.labels,
        one.namespaces,
        one.ready,
        one.instance,
    )
    # A new state (each 2PC step and each drift check that found a change set one): rebuilt.
    (tmp_path / "web.json").write_bytes(b"by hand")
    ns = agent.namespaces["web"]
    ns.state = ns.disk.snapshot()
    three = agent.heartbeat()
    assert three.namespaces[0].sha256 == sha(b"by hand") != one.namespaces[0].sha256


def test_a_file_is_unchanged_only_while_its_stat_is_the_one_hashed_and_settled(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.conf"
    path.write_bytes(b"one")
    hashes = FileHash()
    assert hashes.current(path) == sha(b"one")
    # Written within the last second: its times might not move with the next write, so it
    # is never taken as unchanged; the full check reads it again.
    assert not hashes.unchanged(path, sha(b"one"))
    old = time.time_ns() - 2 * SETTLED_NS
    os.utime(path, ns=(old, old))  # moves the ctime to now: still not settled
    assert not hashes.unchanged(path, sha(b"one"))


def test_a_settled_file_is_unchanged_until_it_is_touched(tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    path.write_bytes(b"one")
    hashes = FileHash()
    settled_at = path.stat().st_ctime_ns + SETTLED_NS
    while time.time_ns() <= settled_at:
        time.sleep(0.05)
    assert hashes.current(path) == sha(b"one")
    assert hashes.unchanged(path, sha(b"one"))
    assert not hashes.unchanged(path, sha(b"two"))  # not the hash the caller holds
    with path.open("r+b") as f:
        f.write(b"two")
    assert not hashes.unchanged(path, sha(b"one"))
    assert hashes.current(path) == sha(b"two")
    path.unlink()
    assert not hashes.unchanged(path, sha(b"two"))
    assert hashes.current(path) is None
    assert hashes.unchanged(path, None)  # an absence is remembered
    path.write_bytes(b"one")
    assert not hashes.unchanged(path, None)


async def test_a_beat_asked_for_while_one_is_sent_goes_out_right_after() -> None:
    timer = BeatTimer()
    timer.begin()
    timer.now()  # during the send
    with anyio.fail_after(1):
        await timer.wait(60.0)
    timer.begin()
    with anyio.move_on_after(0.05) as waited:
        await timer.wait(60.0)
    assert waited.cancelled_caught  # nothing asked: the whole wait


async def test_a_beat_asked_for_during_the_wait_ends_it() -> None:
    timer = BeatTimer()
    timer.begin()
    with anyio.fail_after(1):  # not the 60 s
        async with anyio.create_task_group() as tg:
            tg.start_soon(timer.wait, 60.0)
            await anyio.wait_all_tasks_blocked()
            timer.now()
    # and a wait runs to its delay when nobody asks
    started = time.monotonic()
    timer.begin()
    await timer.wait(0.05)
    assert time.monotonic() - started >= 0.05
