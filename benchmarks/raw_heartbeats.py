"""The raw floor of heartbeats, for ``benchmarks.heartbeat``: a plain Python script (nats-py,
msgspec and the standard library, nothing of confbus), run as a file.

``python benchmarks/raw_heartbeats.py beat NATS_URL FILE INTERVAL CONNECTIONS``: one task per
node of FILE (a JSON object, subject → the node's heartbeat bytes as captured from its agent)
publishes those bytes every 80–100 % of INTERVAL at random, as the agents do, on CONNECTIONS
connections — what sending a heartbeat must cost, whatever builds it.

``python benchmarks/raw_heartbeats.py listen NATS_URL``: one subscription to every node's
heartbeat, each decoded from JSON (untyped) — what receiving one must cost, whatever then
judges it.

Each prints ``{"event": "ready", …}`` once it is subscribed or beating, and runs until
SIGTERM.
"""

import asyncio
import json
import random
import signal
import sys

import msgspec
import nats
from nats.aio.client import Client

SPREAD = 0.2  # the agents' (confbus.agent.heartbeat.HEARTBEAT_SPREAD)


async def beat(url: str, payloads: dict[str, str], interval: float, connections: int) -> None:
    conns = [await nats.connect(url, no_echo=True) for _ in range(connections)]

    async def one(nc: Client, subject: str, data: bytes) -> None:
        await asyncio.sleep(interval * random.random())  # started spread over an interval
        while True:
            await nc.publish(subject, data)
            await asyncio.sleep(interval * (1.0 - SPREAD * random.random()))

    tasks = [
        asyncio.create_task(one(conns[i % connections], subject, data.encode()))
        for i, (subject, data) in enumerate(sorted(payloads.items()))
    ]
    print(json.dumps({"event": "ready", "service": "raw-beat", "nodes": len(tasks)}), flush=True)
    await _until_stopped()
    for t in tasks:
        t.cancel()


async def listen(url: str) -> None:
    nc = await nats.connect(url)
    decode = msgspec.json.Decoder().decode

    async def on_msg(msg: object) -> None:
        decode(msg.data)  # type: ignore[attr-defined]

    await nc.subscribe("cfg.node.*.heartbeat", cb=on_msg)
    await nc.flush()
    print(json.dumps({"event": "ready", "service": "raw-listen"}), flush=True)
    await _until_stopped()


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str]) -> None:
    if argv[0] == "beat":
        with open(argv[2], "rb") as f:
            payloads = json.load(f)
        asyncio.run(beat(argv[1], payloads, float(argv[3]), int(argv[4])))
    elif argv[0] == "listen":
        asyncio.run(listen(argv[1]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
