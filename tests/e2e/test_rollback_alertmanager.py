"""An Alertmanager webhook drives the same rollback path, with every service real:
nats-server, version-store, coordinator, distributor, health-watcher (its Alertmanager
receiver) and rollbacker as processes, and three agent processes writing real files.

Alertmanager re-sends a firing group every ``repeat_interval``: the same alert (same
fingerprint and start) rolls back once. Its resolution changes nothing; a malformed body is
refused with a 4xx and changes nothing either.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from confbus.client import Client
from confbus.runtime.http import http_post
from confbus.schemas import subjects
from confbus.schemas.events import AnyEvent, RollbackCompleted, RollbackStarted
from confbus.schemas.health import Alert, decode_alert
from confbus.schemas.policy import Policy, RollbackPolicy
from tests.e2e.stack import Stack, stack_fixture
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NS = "web"
NODES = ("n1", "n2", "n3")
GOOD = b'{"pool": 10}\n'
BAD = b'{"pool": 0}\n'
PATH = "/alertmanager"
SERVICES = ("version_store", "coordinator", "distributor", "health_watcher", "rollbacker")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_fixture(tmp_path, SERVICES, agents=NODES)


def webhook(status: str) -> bytes:
    alert = {
        "status": status,
        "labels": {"alertname": "HighErrorRate", "confbus_namespace": NS, "severity": "page"},
        "annotations": {"summary": "5xx above 20% on web", "value": "0.31", "threshold": "0.2"},
        "startsAt": "2026-11-26T16:40:01Z",
        "endsAt": "2026-11-26T16:45:01Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "fingerprint": "c0ffee1234",
    }
    body = {
        "version": "4",
        "groupKey": '{}:{alertname="HighErrorRate"}',
        "status": status,
        "receiver": "confbus",
        "groupLabels": {"alertname": "HighErrorRate"},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://alertmanager:9093",
        "alerts": [alert],
    }
    return json.dumps(body).encode()


async def test_an_alertmanager_alert_rolls_back_once(stack: Stack) -> None:
    watcher = stack.services["health_watcher"].ready
    assert watcher is not None
    am_port = int(watcher["alertmanager_port"])
    async with Client(stack.url) as client:
        alerts: list[Alert] = []

        async def on_alert(msg: object) -> None:
            alerts.append(decode_alert(msg.data))  # type: ignore[attr-defined]

        await client.bus.nc.subscribe(subjects.alert(NS), cb=on_alert)
        policy = Policy(namespace=NS, rollback=RollbackPolicy(cooldown_s=600.0))
        await client.set_policy(policy, actor="test")
        v1 = (await client.publish(NS, GOOD, change_id="good")).version
        assert (await client.wait_rollout(NS, v1, timeout=60)).state == "completed"
        await client.mark_good(NS, v1, actor="operator", reason="checked by hand")
        v2 = (await client.publish(NS, BAD, change_id="bad")).version
        assert (await client.wait_rollout(NS, v2, timeout=60)).state == "completed"
        assert all(stack.agents[n].read(NS) == BAD for n in NODES)

        # Malformed: refused with the reason, nothing published.
        status, reply = await http_post("127.0.0.1", am_port, "/alertmanager", b'{"alerts": 1}')
        assert 400 <= status < 500, reply
        # Firing, re-sent as Alertmanager does every repeat_interval.
        for _ in range(3):
            status, reply = await http_post(
                "127.0.0.1", am_port, "/alertmanager", webhook("firing")
            )
            assert status == 200, reply

        async def restored() -> bool:
            return all(stack.agents[n].read(NS) == GOOD for n in NODES)

        await eventually(restored, timeout=60, what="every node back on the good bytes")
        started = [e async for e in _events(client, "rollback.started")]
        assert len(started) == 1 and isinstance(started[0], RollbackStarted)
        assert started[0].from_version == v2 and started[0].to_version == v1
        assert (started[0].alert_id or "").startswith("am:")

        async def completed() -> bool:
            return bool([e async for e in _events(client, "rollback.completed")])

        await eventually(completed, timeout=60, what="rollback.completed")
        done = [e async for e in _events(client, "rollback.completed")]
        assert isinstance(done[0], RollbackCompleted)
        prod = await client.get(NS, "production", content=False)
        assert prod.info.version == done[0].new_version and prod.info.rollback_of == v1

        # Resolved: acknowledged, and nothing else happens.
        status, reply = await http_post("127.0.0.1", am_port, "/alertmanager", webhook("resolved"))
        assert status == 200, reply

        async def judged_all() -> bool:
            # The repeats are duplicates (in CFG_ALERTS already, or in the rollbacker's
            # ledger); the resolution is judged and ignored.
            series = 'confbus_rollbacker_alerts_total{outcome="%s"}'
            started = await stack.metric("rollbacker", series % "started")
            ignored = await stack.metric("rollbacker", series % "ignored")
            return started == 1 and ignored == 1

        await eventually(judged_all, timeout=30, what="every alert judged")
        assert {a.source for a in alerts} == {"alertmanager"}
        assert len({a.alert_id for a in alerts}) == 1  # the repeats and the resolution: one id
        assert alerts[-1].state == "resolved"
        assert len([e async for e in _events(client, "rollback.started")]) == 1


async def _events(client: Client, kind: str) -> AsyncIterator[AnyEvent | None]:
    async for item in client.events(subjects.event(NS, kind)):
        yield item.event
