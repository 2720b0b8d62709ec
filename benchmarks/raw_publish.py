"""The raw whole-process floor of ``confbus publish --wait``: a plain Python script (nats-py and
the standard library, nothing of confbus) that reads FILE, then does what any 2PC-shaped publish
to N nodes must — a prepare fan-out, one fsynced JetStream publish, a commit fan-out — to the
subscribers of ``benchmarks.baselines`` (which do the agents' file work; the subjects are its
``round_subject``'s), and exits.

``python benchmarks/raw_publish.py NATS_URL NS N FILE`` (run as a file, not ``-m``: importing
the ``benchmarks`` package is not part of the floor). ``benchmarks.startup`` times it.
"""

import asyncio
import sys

import nats
from nats.aio.client import Client


async def fanout(nc: Client, subject: str, payload: bytes, n: int) -> None:
    done = asyncio.get_running_loop().create_future()
    got = 0

    async def on_reply(_msg: object) -> None:
        nonlocal got
        got += 1
        if got >= n and not done.done():
            done.set_result(None)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    await nc.publish(subject, payload, reply=inbox)
    await asyncio.wait_for(done, 30.0)
    await sub.unsubscribe()


async def main(url: str, namespace: str, n: int, content: bytes) -> None:
    nc = await nats.connect(url)
    try:
        await fanout(nc, f"bench.base.{namespace}.r1", content, n)
        await nc.jetstream().publish("bench.js.decision", content, timeout=10.0)
        await fanout(nc, f"bench.base.{namespace}.r2", b"commit", n)
    finally:
        await nc.close()


if __name__ == "__main__":
    with open(sys.argv[4], "rb") as f:
        content = f.read()
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), content))
