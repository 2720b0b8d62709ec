"""The client operations the workloads record: propose a change, wait for its version, switch,
ask what is in doubt, read an agent's status."""

from __future__ import annotations

import json
from collections.abc import Sequence

import anyio
import nats.errors
import nats.js.errors
from nats.js.api import PubAck

from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.http import http_get
from confbus.schemas import subjects
from confbus.schemas.api import txn as txn_api
from confbus.schemas.changes import ChangeProposed, msg_id
from confbus.schemas.streams import CFG_TXN
from tests.e2e.helpers import version_announced


async def propose(
    bus: Bus,
    ns: str,
    change_id: str,
    content: bytes,
    *,
    base: int | None = None,
    timeout: float = 2.0,
) -> PubAck:
    """Publish a change (``Nats-Msg-Id`` = ``<ns>:<change id>``, so a retry is a no-op) and
    return JetStream's ack: from here on the change is *accepted* (docs/design.md §8.1)."""
    change = ChangeProposed(namespace=ns, change_id=change_id, content=content, base=base)
    return await bus.js.publish(
        subjects.change(ns),
        encode(change),
        headers={"Nats-Msg-Id": msg_id(ns, change_id)},
        timeout=timeout,
    )


async def store_version(
    bus: Bus, ns: str, content: bytes, change_id: str, timeout: float = 30.0
) -> int:
    """Propose a change and wait for the version-store to announce its version."""
    sub = await bus.nc.subscribe(subjects.event(ns, "version.*"))
    try:
        with anyio.fail_after(timeout):
            while True:
                try:
                    await propose(bus, ns, change_id, content)
                    break
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    await anyio.sleep(0.2)  # retried with the same id: a no-op if stored
            return await version_announced(sub, change_id, timeout)
    finally:
        await sub.unsubscribe()


async def switch(
    bus: Bus,
    ns: str,
    version: int,
    nodes: Sequence[str],
    *,
    vote_timeout_s: float = 1.0,
    request_timeout: float | None = 30.0,
) -> str:
    """One atomic switch; returns its outcome (commit / abort). ``request_timeout`` None: the
    switch's own deadline (a longer one rides out faults)."""
    reply = await call(
        bus,
        txn_api.SWITCH,
        txn_api.SwitchRequest(
            namespace=ns, version=version, nodes=list(nodes), timeout_s=vote_timeout_s
        ),
        timeout=request_timeout,
    )
    return reply.outcome


async def decision_exists(bus: Bus, ns: str, txid: str) -> bool:
    """The write-once decision record of ``txid`` is in ``CFG_TXN``."""
    try:
        await bus.js.get_last_msg(CFG_TXN.name, subjects.txn_decision(ns, txid))
    except nats.js.errors.NotFoundError:
        return False
    return True


async def in_doubt(bus: Bus, ns: str) -> list[str]:
    """Transactions the coordinator service reports undecided."""
    reply = await call(bus, txn_api.IN_DOUBT, txn_api.InDoubtRequest(namespace=ns), timeout=5.0)
    return [t.txid for t in reply.txns]


async def agent_in_doubt(port: int, ns: str) -> str | None:
    """The txid an agent holds PREPARED and undecided (None: not in doubt)."""
    status, body = await http_get("127.0.0.1", port, "/status")
    assert status == 200, body
    st = json.loads(body)
    txid = st["namespaces"][ns]["in_doubt"]
    return str(txid) if txid is not None else None
