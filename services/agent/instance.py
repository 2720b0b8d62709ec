"""Joining: one agent per node id, and no replay of a node's history (docs/design.md §5.5, §5.6).

An agent with no state reads ``CFG_TXN`` from the stream's end as it is before anyone hears of
it (``txn_stream_end``): the node's history is not replayed into its file — the distributor's
catch-up takes it straight to its target version — and a prepare sent once its first heartbeat
is out is still read.

An agent's **instance id** is kept in its state dir (``<state-dir>/instance``), locked for the
process's life: an agent restarted on its own state — after a crash — is the same instance and
just comes back, and a second process on the same state dir is refused at once. A second agent
started with the same ``--node`` and another state dir is another instance: before it reads a
transaction or writes a file it sends one heartbeat, and a live agent of its node answers at
once with its own; whichever the rule ``confbus.schemas.node.keeps_node`` says does not keep the
node stops, saying which instance holds it (``NodeIdTaken``). The watch goes on for the agent's
life, so two agents that were partitioned apart settle the same way when they meet. The
distributor applies the same rule to their heartbeats, and reports the refused one
(``node.duplicate``, ``confbus status``, ``confbus doctor``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import anyio
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.schemas import subjects
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.node import Heartbeat, decode_heartbeat, keeps_node
from confbus.schemas.streams import CFG_TXN

log = logging.getLogger("confbus.agent")

INSTANCE_FILE = "instance"
JOIN_PROBE_S = 0.5  # at most: a live agent of the node answers a joining one at once
_ID = re.compile(r"^[0-9a-f]{16}$")


class StateDirInUse(Exception):
    def __init__(self, state_dir: Path) -> None:
        super().__init__(
            f"state dir {state_dir} is in use by another agent process: one agent per state dir"
        )


class NodeIdTaken(Exception):
    """Another agent holds this node id; this one stops before it writes anything more."""

    def __init__(self, node: str, live: Heartbeat) -> None:
        self.node = node
        self.live = live
        started = live.started_at.isoformat(timespec="seconds") if live.started_at else "?"
        super().__init__(
            f"node {node} is already live as instance {live.instance or '?'} (started {started}): "
            "a second agent with the same --node would vote and write for it twice; stop the "
            "other one, or give this one its own --node"
        )


async def txn_stream_end(bus: Bus) -> int:
    """``CFG_TXN``'s last sequence now; 0 if it cannot be asked (then the history is read after
    all: slow, but it ends on the target too)."""
    try:
        with anyio.fail_after(5):
            return int((await bus.js.stream_info(CFG_TXN.name)).state.last_seq)
    except (TimeoutError, nats.errors.Error) as exc:
        log.warning("reading the whole transaction history", extra={"error": repr(exc)})
        return 0


def claim_state_dir(state_dir: Path) -> tuple[str, int]:
    """This agent's instance id (made on first use) and the descriptor holding the state
    dir's lock: keep it open for as long as the agent runs."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / INSTANCE_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirInUse(state_dir) from None
    kept = os.read(fd, 64).decode(errors="replace").strip()
    if _ID.match(kept):
        return kept, fd
    # A new state dir (or an unreadable id): a new instance. Written through the locked
    # descriptor and fsynced, so a restart after a crash finds it.
    instance = secrets.token_hex(8)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (instance + "\n").encode(), 0)
    os.fsync(fd)
    return instance, fd


class NodeIdGuard:
    """The watch on this node id for the agent's life: one subscription to the node's own
    heartbeats, settled in its callback (no task of its own, which a host of hundreds of agents
    would pay hundreds of times). The agent connects without echo (``connect(no_echo=True)``):
    the server hands it the other agents' heartbeats only, not each of its own back (~15 % of
    an idle agent host's CPU, a third of the server's work for it); on a connection with echo
    our own are dropped once decoded. ``join`` raises ``NodeIdTaken`` when another live agent
    keeps the node within ``JOIN_PROBE_S``; later, ``check`` raises it (the agent's heartbeat
    loop calls it each time it wakes, and ``beat_now`` wakes it at once). A newer agent heard
    is answered with a heartbeat at once (``beat_now``)."""

    def __init__(self, mine: Callable[[], Heartbeat], beat_now: Callable[[], None]) -> None:
        self._mine = mine
        self._beat_now = beat_now
        self._node = mine().node
        self._instance = mine().instance
        self._taken: NodeIdTaken | None = None
        self._refused = anyio.Event()
        self._sub: Subscription | None = None

    async def join(self, bus: Bus) -> None:
        self._sub = await bus.nc.subscribe(subjects.heartbeat(self._node), cb=self._on_heartbeat)
        await bus.nc.publish(subjects.heartbeat(self._node), encode(self._mine()))
        with anyio.move_on_after(JOIN_PROBE_S):
            await self._refused.wait()
        self.check()

    def check(self) -> None:
        if self._taken is not None:
            raise self._taken

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_heartbeat(self, msg: Msg) -> None:
        with contextlib.suppress(*DECODE_ERRORS):
            hb = decode_heartbeat(msg.data)
            if hb.node != self._node or hb.instance == self._instance or hb.leaving:
                return
            if self._taken is None:
                try:
                    _settle(self._mine(), hb, self._beat_now)
                except NodeIdTaken as taken:
                    self._taken = taken
                    self._refused.set()
                    self._beat_now()  # wakes the heartbeat loop, which raises it


def _settle(me: Heartbeat, other: Heartbeat, beat_now: Callable[[], None]) -> None:
    if not other.instance or keeps_node(me, other):
        log.warning(
            "another agent has this node id: it is refused",
            extra={"node": me.node, "instance": other.instance},
        )
        beat_now()
        return
    raise NodeIdTaken(me.node, other)
