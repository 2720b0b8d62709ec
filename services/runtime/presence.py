"""Whether a lease holder's process is still there, without waiting for its lease to run out.

Every replica that takes leases answers ``cfg.lease.<role>.<instance>.present`` (core NATS) for
as long as its connection is up. When its process dies, the kernel closes the socket and
nats-server drops its subscriptions at once, so a request finds *no responders*; a process that
is merely paused or slow still has its subscription (the request times out). A holder is judged
**gone** only on no responders twice, ``PROBE_GAP_S`` apart (room for its client to reconnect to
another server and subscribe again); a timeout, an error or our own connection reconnecting is
never "gone". ``Leases.acquire`` then takes the lease over at a higher epoch. That is safe only
because nothing a lease protects relies on the lease alone — every write the old holder could
still make is fenced by the epoch or a compare-and-set (docs/design.md §4.6).

Each process also answers under its own life (``<instance>~<life>``): the replica that takes
an acknowledged request names itself that way, and its caller, probing it while it waits, finds
it gone even when a restart under the same instance name already answers for the instance.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field

import anyio
import nats.errors
from anyio.abc import TaskStatus
from nats.aio.msg import Msg

from confbus.runtime.bus import Bus
from confbus.schemas.subjects import lease_presence

PROBE_GAP_S = 0.3  # between the two probes that must both find nobody
PROBE_TIMEOUT_S = 0.5  # a holder that does not answer in time is slow, not gone
WATCH_EVERY_S = 0.25  # how often ``Leases.pursue`` probes the holders of what it wants


@dataclass
class Presence:
    """Our own presence endpoint (``serve``), and probes of other replicas of ``role``."""

    bus: Bus
    role: str
    instance: str
    serving: bool = field(default=False, init=False)  # answering our own probes now
    # This process among the lives of ``instance`` (a replica restarted under its name answers
    # the instance's probes at once): what a request's taker names itself by, so that its
    # caller finds *that* process gone, restarted or not (``confbus.runtime.api``).
    life: str = field(default_factory=lambda: secrets.token_hex(4), init=False)

    @property
    def process(self) -> str:
        """The name only this process answers to: ``<instance>~<life>``."""
        return f"{self.instance}~{self.life}"

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async def answer(msg: Msg) -> None:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(b"")

        subs = [
            await self.bus.nc.subscribe(lease_presence(self.role, name), cb=answer)
            for name in (self.instance, self.process)
        ]
        self.serving = True
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            self.serving = False
            with anyio.CancelScope(shield=True):
                for sub in subs:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()  # the connection may be closed already

    async def answers(self, holder: str) -> bool:
        """One probe: False only when nobody is subscribed (no responders)."""
        try:
            await self.bus.nc.request(
                lease_presence(self.role, holder), b"", timeout=PROBE_TIMEOUT_S
            )
        except nats.errors.NoRespondersError:
            return False
        except (nats.errors.Error, TimeoutError):
            return True  # slow, paused, or our own connection in trouble: not proof of death
        return True

    async def gone(self, holder: str) -> bool:
        """No responders twice, ``PROBE_GAP_S`` apart, and our connection did not reconnect in
        between (a server that just took us back may not know the holder's interest yet)."""
        if holder == self.instance:
            return False
        reconnected = self.bus.reconnected()
        started = time.monotonic()
        if await self.answers(holder):
            return False
        await anyio.sleep(max(0.0, PROBE_GAP_S - (time.monotonic() - started)))
        if reconnected.is_set() or await self.answers(holder):
            return False
        return not reconnected.is_set()
