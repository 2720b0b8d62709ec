"""A replica of role ``test`` in its own process, for ``test_replica_pause.py``: it takes the
names it is given (``Leases.pursue``), keeps them (``keep``), and acts for each one it holds
every 0.1 s — announcing the act on ``test.act.<holder>`` (with the time, on the machine's
monotonic clock, and the epoch), then writing the name's act record in ``TEST_ACTS`` fenced by
that epoch (refused if a newer holder wrote it). One line on stdout per lease taken or lost.

    python -m tests.ha.lease_replica NATS_URL HOLDER TTL NAME...
"""

from __future__ import annotations

import json
import sys
import time

import anyio
import msgspec

from confbus.runtime.bus import connect
from confbus.runtime.errors import Fenced
from confbus.runtime.kv import StateKV
from confbus.runtime.leases import Leases
from confbus.schemas.streams import CFG_STATE

ACTS = "TEST_ACTS"
ACT_EVERY_S = 0.1


class Act(msgspec.Struct, frozen=True):
    holder: str
    epoch: int
    n: int = 0


decode_act = msgspec.json.Decoder(Act).decode


def say(what: str, **fields: object) -> None:
    print(json.dumps({"event": what, "at": time.monotonic(), **fields}), flush=True)


async def main(url: str, holder: str, ttl: float, names: list[str]) -> None:
    bus = await connect(url, name=holder)
    leases = Leases.on_bus(bus, await bus.kv(CFG_STATE.name), "test", holder, ttl)
    leases.on_change = lambda name, held: say("taken" if held else "lost", name=name)
    acts = StateKV(await bus.kv(ACTS))

    async def act(name: str) -> None:
        with leases.guard(name):
            epoch = leases.require(name).epoch
            await bus.nc.publish(
                f"test.act.{holder}",
                json.dumps({"name": name, "epoch": epoch, "at": time.monotonic()}).encode(),
            )

            def fenced(current: Act | None) -> Act:
                if current is not None and current.epoch > epoch:
                    raise Fenced(f"{name} is at epoch {current.epoch}")
                return Act(holder, epoch, (current.n if current else 0) + 1)

            try:
                await acts.mutate(name, decode_act, fenced)
            except Fenced:
                say("fenced", name=name, epoch=epoch)

    async with anyio.create_task_group() as tg:
        await tg.start(leases.keep)
        tg.start_soon(leases.pursue, lambda: names)
        say("ready")
        while True:
            for name in names:
                if leases.held(name):
                    await act(name)
            await anyio.sleep(ACT_EVERY_S)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:])
