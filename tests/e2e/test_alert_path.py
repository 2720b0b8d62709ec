"""Alerts that arrive through a real Alertmanager (and from a real Prometheus's alerting rule)
roll a version back on every node — including one that passed its bake and became the last
known good, while it is still *suspect* (``rollback.window_s`` after it became production).

Everything is real: nats-server, every confbus service and three agents as processes writing
real files, an app whose error rate the installed config decides, Prometheus 2.42 scraping it
every second, Alertmanager 0.25 routing every alert to the health-watcher's receiver. One
Prometheus and one Alertmanager serve the module; each test has its own confbus and namespace.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from confbus.schemas.events import (
    AlertActed,
    AlertIgnored,
    RollbackCompleted,
    RollbackStarted,
    VersionLastGood,
    VersionPromoted,
)
from confbus.schemas.policy import Policy, PrometheusSource, RollbackPolicy
from tests.e2e.promstack import PromStack, promstack_fixture
from tests.e2e.traffic_app import config
from tests.e2e.trafficstack import error_ratio_rule, traffic_world
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NODES = ("n1", "n2", "n3")
GOOD = config(rps=100, error_ratio=0.02)
LATE = config(rps=101, error_ratio=0.02)  # fine at its bake; hurts later, as at an evening peak
BAD = config(rps=100, error_ratio=0.50)  # in a 15 s window it outweighs GOOD for ~14 s

# Over 15 s, so the alert goes on firing for a while after the rollback: Alertmanager re-sends.
RATE = 'sum by (confbus_namespace) (rate(%s{confbus_namespace=~"am-.*"}[15s]))'
# A Prometheus alerting rule on the app's error ratio, per namespace; only the namespaces of
# the test that relies on it (am-*) are watched, so the other tests' bad versions stay quiet.
RULES = {
    "groups": [
        {
            "name": "app",
            "interval": "1s",
            "rules": [
                {
                    "alert": "AppErrorRatioHigh",
                    "expr": f"{RATE % 'app_errors_total'} / {RATE % 'app_requests_total'} > 0.05",
                    "annotations": {
                        "summary": "5xx ratio above 5%",
                        "value": "{{ $value }}",
                        "threshold": "0.05",
                    },
                }
            ],
        }
    ]
}


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromStack]:
    yield from promstack_fixture(tmp_path_factory.mktemp("promstack"), RULES)


def bake_policy(ns: str, prom: PromStack, window_s: float) -> Policy:
    """Every version bakes 4 s and is judged on its error ratio in Prometheus."""
    return Policy(
        namespace=ns,
        bake_s=4.0,
        vote_timeout_s=3.0,
        prometheus=PrometheusSource(url=prom.prom_url, timeout_s=3.0),
        health_rules=[error_ratio_rule("5xx", threshold=0.05, window_s=4.0)],
        rollback=RollbackPolicy(window_s=window_s, cooldown_s=0.0),
    )


async def test_an_alert_after_the_bake_rolls_a_suspect_version_back_but_not_after_its_window(
    prom: PromStack, tmp_path: Path
) -> None:
    ns = "late"
    async with traffic_world(tmp_path, prom, ns, NODES) as w:
        await w.client.set_policy(bake_policy(ns, prom, window_s=2.0), actor="test")
        v1 = (await w.client.publish(ns, GOOD, change_id="good")).version
        first = await w.client.wait_rollout(ns, v1, timeout=90)
        assert first.state == "completed" and first.last_good, first
        v2 = (await w.client.publish(ns, LATE, change_id="late")).version
        second = await w.client.wait_rollout(ns, v2, timeout=90)
        assert second.state == "completed" and second.last_good, second  # its bake passed
        assert (await w.client.get(ns, "last-good", content=False)).info.version == v2

        # Past the (short) suspect window: Alertmanager's alert is ignored, and says why.
        promoted = [e for e in await w.events("version.promoted") if isinstance(e, VersionPromoted)]
        went_out = [e.at for e in promoted if e.version == v2][-1].timestamp()
        # The window passing is the point of this step: wait out what is left of it.
        await anyio.sleep(max(0.0, went_out + 2.5 - time.time()))
        labels = {"alertname": "EveningPeak", "confbus_namespace": ns, "confbus_version": str(v2)}
        await anyio.to_thread.run_sync(prom.fire, labels, {"summary": "p99 at the peak"})
        ignored = await w.wait_event("alert.ignored")
        assert isinstance(ignored[0], AlertIgnored) and ignored[0].version == v2
        assert ignored[0].alert_id.startswith("am:"), ignored[0]
        assert "suspect window" in ignored[0].reason, ignored[0].reason
        assert not await w.events("rollback.started") and w.files_hold(LATE)

        # Within the window (now an hour): the alert rolls v2 back to v1 on every node, and v2
        # loses its last-known-good mark with the reason in the audit log.
        await w.client.set_policy(bake_policy(ns, prom, window_s=3600.0), actor="test")
        labels = {**labels, "alertname": "EveningPeakAgain"}
        await anyio.to_thread.run_sync(prom.fire, labels, {"summary": "p99 at the peak"})
        acted = await w.wait_event("alert.acted")
        assert isinstance(acted[0], AlertActed) and acted[0].version == v2
        started = (await w.wait_event("rollback.started"))[0]
        assert isinstance(started, RollbackStarted)
        assert (started.from_version, started.to_version) == (v2, v1)

        async def restored() -> bool:
            return w.files_hold(GOOD)

        await eventually(restored, timeout=60, what="every node's file back to v1's bytes")
        done = (await w.wait_event("rollback.completed"))[0]
        assert isinstance(done, RollbackCompleted)
        prod = await w.client.get(ns, "production", content=False)
        assert prod.info.version == done.new_version and prod.info.rollback_of == v1
        marks = [e for e in await w.events("version.last_good") if isinstance(e, VersionLastGood)]
        revoked = [m for m in marks if m.version == v1 and f"v{v2} lost its" in m.reason]
        assert revoked, [(m.version, m.reason) for m in marks]
        assert (await w.client.get(ns, "last-good", content=False)).info.version != v2


async def test_a_prometheus_rule_through_alertmanager_rolls_back_once(
    prom: PromStack, tmp_path: Path
) -> None:
    ns = "am-path"
    async with traffic_world(tmp_path, prom, ns, NODES) as w:
        # No health rules: every bake passes, so only Prometheus's alert can stop BAD.
        policy = Policy(namespace=ns, vote_timeout_s=3.0, rollback=RollbackPolicy(cooldown_s=0.0))
        await w.client.set_policy(policy, actor="test")
        v1 = (await w.client.publish(ns, GOOD, change_id="good")).version
        assert (await w.client.wait_rollout(ns, v1, timeout=60)).state == "completed"
        await w.client.mark_good(ns, v1, actor="operator", reason="checked by hand")
        v2 = (await w.client.publish(ns, BAD, change_id="bad")).version
        assert (await w.client.wait_rollout(ns, v2, timeout=60)).state == "completed"

        async def restored() -> bool:
            return w.files_hold(GOOD)

        await eventually(restored, timeout=60, what="Prometheus's alert rolling BAD back")
        await w.wait_event("rollback.completed")

        # The rule goes on firing until its 15 s window has forgotten BAD, and Alertmanager
        # re-sends the alert every 2 s meanwhile; then it resolves, and the rollbacker says so.
        async def resolved() -> bool:
            return any(
                isinstance(e, AlertIgnored) and e.reason == "resolved"
                for e in await w.events("alert.ignored")
            )

        await eventually(resolved, timeout=60, every=0.2, what="the alert resolved")
        posts = 'confbus_health_watcher_receiver_requests_total{status="200"}'
        # The first firing, at least one re-send of it, the resolution (Alertmanager's cadence
        # under load decides how many re-sends; one is enough to show they change nothing).
        assert await w.watcher_metric(posts) >= 3
        started = await w.events("rollback.started")
        assert len(started) == 1 and isinstance(started[0], RollbackStarted)
        assert (started[0].from_version, started[0].to_version) == (v2, v1)
        assert (started[0].alert_id or "").startswith("am:")
        acted = await w.events("alert.acted")
        assert len(acted) == 1 and isinstance(acted[0], AlertActed)
        assert acted[0].rule == "AppErrorRatioHigh" and acted[0].source == "alertmanager"
        assert w.files_hold(GOOD)
