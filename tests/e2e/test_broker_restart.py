"""After a broker restart every service serves again within about a second: its consumers,
its KV watches and its API subscriptions. Each test SIGKILLs the nats-server of a running
stack (services and agents as real processes), starts it again on the same port and store,
and measures how long until the service does its job again — each probe is something only a
working service can answer, asked again until it is answered."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from functools import partial

import anyio
import nats.errors
import nats.js.errors
import pytest

from confbus.client import Client
from confbus.runtime.api import call
from confbus.runtime.bus import Bus, connect
from confbus.runtime.errors import ConfbusError
from confbus.runtime.events import event_subject
from confbus.schemas import subjects
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import health as health_api
from confbus.schemas.api import store as store_api
from confbus.schemas.api import txn as txn_api
from confbus.schemas.api.txn import switch_deadline_s
from confbus.schemas.changes import ChangeProposed, msg_id
from confbus.schemas.events import NodeForgotten
from confbus.schemas.fleet import CURSOR_KEY, decode_cursor
from confbus.schemas.health import Alert, HealthSample
from confbus.schemas.state import decode_ledger, ledger_key
from confbus.schemas.streams import CFG_CHECKPOINTS, CFG_STATE
from tests.e2e.helpers import switch
from tests.e2e.stack import Stack, start_stack

pytestmark = pytest.mark.anyio

NS = "web"
NODES = ("n1", "n2")
SERVICES = ("version_store", "coordinator", "distributor", "health_watcher", "rollbacker")
BOUND_S = 5.0  # "within a second", asserted with room for a loaded 2-core machine
PROBE_TIMEOUT_S = 0.5  # one probe's own wait: short, so a service back is noticed soon


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("restart"), SERVICES)
    try:
        # A checkpoint soon after each event: the cursor says what the historian has read.
        s.start_service("historian", "--idle", "0.2", "--tick", "0.1")
        s.start_agents(NODES, (NS,))
        anyio.run(_first_version, s.url, backend="asyncio")
        yield s
    finally:
        s.stop()


async def _first_version(url: str) -> None:
    async with Client(url, name="test-setup") as client:
        await _rolled_out(client, "v1")


async def _rolled_out(client: Client, label: str) -> bool:
    info = await client.publish(NS, f'{{"release": "{label}"}}'.encode(), change_id=label)
    rollout = await client.wait_rollout(NS, info.version, timeout=60)
    assert rollout.state == "completed", rollout.reason
    return True


@pytest.fixture
async def bus(stack: Stack) -> AsyncIterator[Bus]:
    b = await connect(stack.url, name="test-probe")
    try:
        yield b
    finally:
        await b.close()


def restart_broker(stack: Stack) -> float:
    """SIGKILL the nats-server, start it on the same port and store; when it is ready."""
    stack.nats.kill()
    stack.nats.restart()
    return time.monotonic()


async def served_after(
    back: float,
    what: str,
    probe: Callable[[], Awaitable[bool]],
    *,
    each_s: float = 4 * PROBE_TIMEOUT_S,
    timeout: float = 30.0,
) -> float:
    """Ask ``probe`` (each time for at most ``each_s``) until it says yes — a bus error, a
    timeout: not yet; seconds since ``back``, the moment the server was ready again."""
    with anyio.fail_after(timeout):
        while True:
            try:
                with anyio.fail_after(each_s):
                    if await probe():
                        break
            except (ConfbusError, nats.errors.Error, TimeoutError):
                pass
            await anyio.sleep(0.02)
    took = time.monotonic() - back
    print(f"\n{what}: serving {took:.2f} s after the broker was back")
    return took


async def test_the_version_store_stores_a_change_again(stack: Stack, bus: Bus) -> None:
    back = restart_broker(stack)
    # A namespace no agent follows: nothing to roll out, no switch in flight at the next kill.
    ns = f"vs{uuid.uuid4().hex[:8]}"
    change = ChangeProposed(namespace=ns, change_id="probe", content=b"{}")

    async def stored() -> bool:
        await bus.publish(
            subjects.change(ns), change, msg_id=msg_id(ns, change.change_id), timeout=0.5
        )
        status = await call(
            bus, store_api.CHANGE_STATUS,
            store_api.ChangeStatusRequest(namespace=ns, change_id=change.change_id),
            timeout=PROBE_TIMEOUT_S,
        )  # fmt: skip
        return status.status == "stored"

    assert await served_after(back, "version-store (CFG_CHANGES consumer, API)", stored) < BOUND_S


async def test_the_coordinator_answers_and_every_agent_votes_again(stack: Stack, bus: Bus) -> None:
    back = restart_broker(stack)

    async def answers() -> bool:
        await call(
            bus, txn_api.IN_DOUBT, txn_api.InDoubtRequest(namespace=NS), timeout=PROBE_TIMEOUT_S
        )
        return True

    async def voted(node: str) -> bool:
        # The node holds this version already: it reads the prepare and votes no (a vote is
        # what counts here), and nothing is switched.
        # A switch acts: its caller waits its whole deadline. It is answered within the vote
        # timeout (1 s) once the coordinator serves, which the probe before this one shows.
        reply = await switch(bus, NS, 1, [node], timeout_s=1.0)
        return [v.vote for v in reply.votes] == ["no"]

    assert await served_after(back, "coordinator (API, heads)", answers) < BOUND_S
    for node in NODES:  # each agent reads CFG_TXN again
        took = await served_after(
            back, f"agent {node} (CFG_TXN)", partial(voted, node), each_s=switch_deadline_s(1.0)
        )
        assert took < BOUND_S


async def test_the_distributor_reports_and_rolls_out_again(stack: Stack, bus: Bus) -> None:
    back = restart_broker(stack)

    async def reports() -> bool:
        reply = await call(
            bus, dist_api.STATUS, dist_api.StatusRequest(namespace=NS), timeout=PROBE_TIMEOUT_S
        )
        return {n.node for n in reply.nodes if n.liveness == "live"} == set(NODES)

    assert await served_after(back, "distributor (API, membership)", reports) < BOUND_S
    label = f"d-{uuid.uuid4().hex[:8]}"
    async with Client(stack.url, name="test-publisher") as client:
        # Its version-event consumer, rollout-record watch and the switch behind it.
        took = await served_after(
            back, "a publish rolled out", lambda: _rolled_out(client, label), each_s=60
        )
    for node in NODES:
        assert stack.agents[node].read(NS) == f'{{"release": "{label}"}}'.encode()
    assert took < 2 * BOUND_S


async def test_the_health_watcher_counts_a_new_sample_again(stack: Stack, bus: Bus) -> None:
    back = restart_broker(stack)
    wall = datetime.now(UTC)

    async def counted() -> bool:
        sample = HealthSample(namespace=NS, node="n1", version=1, metrics={"up": 1.0})
        await bus.publish(subjects.health(NS, "n1"), sample, timeout=0.5)
        verdict = await call(
            bus, health_api.VERDICT,
            health_api.VerdictRequest(namespace=NS, version=1, nodes=["n1"], since=wall),
            timeout=PROBE_TIMEOUT_S,
        )  # fmt: skip
        return verdict.samples > 0

    took = await served_after(back, "health-watcher (CFG_HEALTH reading, API)", counted)
    assert took < BOUND_S


async def test_the_rollbacker_judges_an_alert_again(stack: Stack, bus: Bus) -> None:
    back = restart_broker(stack)
    ns = f"rb{uuid.uuid4().hex[:8]}"
    alert = Alert(alert_id=f"probe-{ns}", namespace=ns, version=None, summary="a probe")

    async def judged() -> bool:
        await bus.publish(subjects.alert(ns), alert, msg_id=alert.alert_id, timeout=0.5)
        kv = await bus.kv(CFG_STATE.name)
        try:
            entry = await kv.get(ledger_key(ns))
        except nats.js.errors.KeyNotFoundError:
            return False
        ledger = decode_ledger(entry.value or b"")
        return ledger.seen(alert.alert_id) is not None

    took = await served_after(back, "rollbacker (CFG_ALERTS consumer, ledger)", judged)
    assert took < BOUND_S


async def test_the_historian_folds_a_new_event_again(stack: Stack, bus: Bus) -> None:
    back = restart_broker(stack)
    ns = f"hs{uuid.uuid4().hex[:8]}"
    event = NodeForgotten(namespace=ns, node="gone", actor="test")

    async def folded() -> bool:
        ack = await bus.publish(event_subject(event), event, msg_id=f"probe-{ns}", timeout=0.5)
        kv = await bus.kv(CFG_CHECKPOINTS.name)
        try:
            cursor = decode_cursor((await kv.get(CURSOR_KEY)).value or b"")
        except nats.js.errors.KeyNotFoundError:
            return False
        return cursor.seq >= ack.seq

    took = await served_after(back, "historian (CFG_EVENTS reading, checkpoints)", folded)
    assert took < BOUND_S
