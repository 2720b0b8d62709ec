"""The demo as a test: the whole confbus on loopback — nats-server, version-store,
coordinator, distributor, health-watcher and rollbacker as processes — and four nodes, each a
real ``flaky_app`` (examples/flaky_app) with a real agent that writes its config file and
forwards its ``/metrics`` (``--health-url``).

A good config is published and becomes the last known good; a bad one (``fail_ratio`` 0.6)
makes the apps fail; the error rate crosses the rule; an alert is raised; the rollbacker rolls
back in two batches, each checked healthy before the next; every node is back on the good
bytes and the apps' error rate is back to normal. The event stream tells that story in order.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from confbus.client import Client
from confbus.procs.proc import Proc
from confbus.runtime.events import event_type
from confbus.runtime.http import http_get
from confbus.schemas import subjects
from confbus.schemas.events import (
    AnyEvent,
    NodeApplied,
    RollbackBatch,
    RollbackCompleted,
    RollbackStarted,
    VersionCreated,
    VersionLastGood,
)
from confbus.schemas.policy import HealthRule, Policy, RollbackPolicy
from tests.e2e.helpers import EventTap
from tests.e2e.stack import Stack, start_stack
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NS = "web"
NODES = ("n1", "n2", "n3", "n4")
APP = Path(__file__).resolve().parents[2] / "examples" / "flaky_app" / "app.py"
GOOD = b'{"fail_ratio": 0.0, "greeting": "hello"}\n'
BAD = b'{"fail_ratio": 0.6, "greeting": "hello"}\n'
SERVICES = ("version_store", "coordinator", "distributor", "health_watcher", "rollbacker")

POLICY = Policy(
    namespace=NS,
    strategy="all-at-once",
    bake_s=2.0,
    vote_timeout_s=3.0,
    health_rules=[
        HealthRule(
            name="error-rate",
            metric="error_rate",
            op=">",
            threshold=0.2,
            window_s=2.0,
            min_samples=3,
            consecutive=2,
            errors="app_errors_total",
            requests="app_requests_total",
        )
    ],
    rollback=RollbackPolicy(
        strategy="batches:2", healthy_threshold=0.8, cooldown_s=600.0, window_s=600.0
    ),
)


@dataclass
class Node:
    name: str
    app: Proc
    app_port: int
    config: Path


class Story(EventTap):
    """Every event and alert of the namespace from before the first publish, in order."""

    async def wait(self, probe: Callable[[], object], timeout: float, what: str) -> None:
        try:
            await self.wait_for(probe, timeout)
        except TimeoutError:
            types = [_describe(e) for e in self.events]
            raise AssertionError(f"timed out waiting for {what}; events: {types}") from None


def _describe(e: AnyEvent) -> str:
    version = getattr(e, "version", None) or getattr(e, "new_version", None)
    out = f"{event_type(e)}" + (f"(v{version})" if version else "")
    if event_type(e) in ("health.verdict", "rollout.baked"):
        out += f"[{e.at:%H:%M:%S.%f} {e.reason[:160]}]"
    return out


def in_order(
    events: Sequence[AnyEvent], steps: Sequence[tuple[str, Callable[[AnyEvent], bool]]]
) -> None:
    """Each step matches an event after the previous step's match."""
    pos = 0
    for name, match in steps:
        for i in range(pos, len(events)):
            if match(events[i]):
                pos = i + 1
                break
        else:
            story = [_describe(e) for e in events]
            raise AssertionError(f"no {name} after event #{pos} in the story: {story}")


def is_(tag: str, **fields: object) -> Callable[[AnyEvent], bool]:
    return lambda e: event_type(e) == tag and all(getattr(e, k) == v for k, v in fields.items())


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path, services=())
    try:
        for pkg in SERVICES:
            # A policy change reaches the health-watcher within its policy TTL (5 s by
            # default); this test moves faster than that.
            extra = (
                ("--eval-interval", "0.5", "--policy-ttl", "0.5") if pkg == "health_watcher" else ()
            )
            s.start_service(pkg, *extra)
        yield s
    finally:
        s.stop()


def start_node(stack: Stack, name: str, seed: int) -> Node:
    config = stack.root / "nodes" / name / "etc" / f"{NS}.conf"
    config.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(APP), "--config", str(config), "--load", "40", "--seed", str(seed)]
    app = Proc(f"app-{name}", argv, stack.logs).start()
    assert app.ready is not None
    port = int(app.ready["port"])
    stack.start_agent(
        name,
        (NS,),
        "--health-url",
        f"http://127.0.0.1:{port}/metrics",
        "--health-interval",
        "0.5",
    )
    stack.services[f"app-{name}"] = app  # stopped with the stack
    return Node(name, app, port, config)


async def counters(node: Node) -> tuple[float, float]:
    _, body = await http_get("127.0.0.1", node.app_port, "/metrics")
    values = dict(
        line.split(" ", 1) for line in body.decode().splitlines() if line and line[0] != "#"
    )
    return float(values["app_requests_total"]), float(values["app_errors_total"])


async def error_rate_since(
    node: Node, start: tuple[float, float], min_requests: float
) -> tuple[float] | None:
    """(errors / requests since ``start``,) once at least ``min_requests`` came in."""
    requests, errors = await counters(node)
    if requests - start[0] < min_requests:
        return None
    return ((errors - start[1]) / (requests - start[0]),)


async def test_bad_config_is_rolled_back_by_itself(stack: Stack) -> None:
    story = Story()
    async with Client(stack.url) as client:
        await client.bus.nc.subscribe(subjects.events_of(NS), cb=story.on_event)
        await client.bus.nc.subscribe(subjects.alert(NS), cb=story.on_alert)
        # The policy first, as an operator would: the nodes are judged by its rules from the
        # first sample on.
        await client.set_policy(POLICY, actor="demo")
        nodes = [start_node(stack, name, seed) for seed, name in enumerate(NODES, 1)]
        await eventually(
            lambda: _live(client, len(NODES)),
            timeout=30,
            what="every agent heard by the distributor",
        )

        # 1. A good config: rolled out, baked with data, the last known good.
        v1 = (await client.publish(NS, GOOD, change_id="good-1", author="demo")).version
        await story.wait(
            lambda: any(isinstance(e, VersionLastGood) and e.version == v1 for e in story.events),
            60,
            "the good config to become the last known good",
        )
        assert all(n.config.read_bytes() == GOOD for n in nodes)

        # 2. A bad config: the apps start failing; the error rate crosses the rule; an alert.
        v2 = (await client.publish(NS, BAD, change_id="bad-2", author="demo")).version
        await story.wait(lambda: story.alerts, 60, "an alert")
        alert_at, alert = story.alert_times[0], story.alerts[0]
        assert alert.version == v2 and alert.source in ("health-watcher", "distributor")

        # 3. The rollback, batch by batch, to the last known good's bytes as a new version.
        await story.wait(
            lambda: any(isinstance(e, RollbackCompleted) for e in story.events),
            120,
            "the rollback to complete",
        )
        restored = {}
        for e in story.events:
            if isinstance(e, NodeApplied) and e.version > v2:
                restored[e.node] = e.version
        restored_at = time.monotonic()
        completed = next(e for e in story.events if isinstance(e, RollbackCompleted))
        v3 = completed.new_version
        assert sorted(restored) == sorted(NODES) and set(restored.values()) == {v3}
        assert all(n.config.read_bytes() == GOOD for n in nodes)  # the last known good's bytes
        started = next(e for e in story.events if isinstance(e, RollbackStarted))
        assert (started.from_version, started.to_version, started.new_version) == (v2, v1, v3)
        assert len(started.batches) == 2
        batches = [e for e in story.events if isinstance(e, RollbackBatch)]
        assert [b.batch for b in batches] == [0, 1]
        assert all(b.healthy_share is not None and b.healthy_share >= 0.8 for b in batches)
        created = next(e for e in story.events if isinstance(e, VersionCreated) and e.version == v3)
        assert created.rollback_of == v1
        prod = await client.get(NS, "production", content=False)
        assert prod.info.version == v3

        # 4. The apps' error rate is back to normal.
        starts = [await counters(n) for n in nodes]
        for node, start in zip(nodes, starts, strict=True):

            async def serving(
                node: Node = node, start: tuple[float, float] = start
            ) -> tuple[float] | None:
                return await error_rate_since(node, start, 40)

            (rate,) = await eventually(serving, timeout=30, what=f"{node.name} serving again")
            assert rate < 0.05, f"{node.name} still fails {rate:.0%} of requests"

        # 5. The story, in order.
        in_order(
            story.events,
            [
                ("v1 created", is_("version.created", version=v1)),
                ("v1 rollout", is_("rollout.started", version=v1)),
                ("v1 applied", is_("node.applied", version=v1)),
                ("v1 promoted", is_("version.promoted", version=v1)),
                ("v1 last good", is_("version.last_good", version=v1)),
                ("v2 created", is_("version.created", version=v2)),
                ("v2 rollout", is_("rollout.started", version=v2)),
                ("v2 applied", is_("node.applied", version=v2)),
                ("v3 created (rollback_of v1)", is_("version.created", version=v3, rollback_of=v1)),
                ("rollback started", is_("rollback.started", new_version=v3)),
                ("batch 1 applied", is_("node.applied", version=v3)),
                ("batch 1 verified", is_("rollback.batch", batch=0)),
                ("batch 2 applied", is_("node.applied", version=v3)),
                ("batch 2 verified", is_("rollback.batch", batch=1)),
                ("v3 promoted", is_("version.promoted", version=v3)),
                ("rollback completed", is_("rollback.completed", new_version=v3)),
            ],
        )
        # Whoever acted is said in one form: the demo's author, a node, or a service as
        # <service>@<instance> — whichever service it was.
        services = {"version-store", "coordinator", "distributor", "health-watcher", "rollbacker"}
        for e in story.events:
            if e.actor and e.actor != "demo" and e.actor not in NODES:
                service, at, _ = e.actor.partition("@")
                assert at and service in services, (event_type(e), e.actor)
        # The bad rollout ended rolled_back and the bad version never became production.
        assert any(is_("rollout.rolled_back", version=v2)(e) for e in story.events)
        assert not any(is_("version.promoted", version=v2)(e) for e in story.events)
        seconds = restored_at - alert_at
        print(
            json.dumps(
                {
                    "alert_to_all_restored_s": round(seconds, 3),
                    "rollback_s": round(completed.seconds, 3),
                    "alert_source": alert.source,
                    "story": [_describe(e) for e in story.events],
                }
            )
        )


async def _live(client: Client, count: int) -> bool:
    try:
        status = await client.fleet_status(NS)
    except Exception:
        return False
    return sum(1 for n in status.nodes if n.liveness == "live") >= count
