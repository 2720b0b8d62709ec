"""The Alertmanager webhook receiver of a real health-watcher process, over real HTTP."""

from __future__ import annotations

import copy
import json
import os
import random
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from confbus.health_watcher.alertmanager import Rejected, decode
from confbus.procs.proc import Proc
from confbus.runtime.http import MAX_BODY_BYTES, http_get, http_post
from confbus.schemas.health import Alert
from confbus.schemas.policy import Policy
from tests.health_watcher.conftest import StartWatcher
from tests.health_watcher.support import AlertLog, StoreStub, metric

NS = "web"
STARTS = "2026-05-04T10:00:00.123Z"


def am_alert(status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "HighErrorRate", "confbus_namespace": NS, **labels},
        "annotations": {"summary": "errors above 5%", "value": "0.31", "threshold": "0.05"},
        "startsAt": STARTS,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-05-04T10:05:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
        "fingerprint": "c0ffee00c0ffee00",
    }


def webhook(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="HighErrorRate"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "confbus",
        "groupLabels": {"alertname": "HighErrorRate"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


async def post(proc: Proc, payload: bytes) -> tuple[int, dict[str, Any]]:
    port = proc.ready["alertmanager_port"]  # type: ignore[index]
    status, raw = await http_post("127.0.0.1", port, "/alertmanager", payload)
    return status, json.loads(raw) if raw else {}


async def test_firing_then_resolved_become_alerts(
    store: StoreStub, alert_log: AlertLog, start_watcher: StartWatcher
) -> None:
    store.policies[NS] = Policy(namespace=NS)
    watcher = await start_watcher()
    assert watcher.ready is not None
    port = watcher.ready["alertmanager_port"]
    assert isinstance(port, int)
    # The whole URL, for Alertmanager's webhook_configs: nothing left to guess.
    assert watcher.ready["alertmanager_url"] == f"http://127.0.0.1:{port}/alertmanager"

    status, reply = await post(watcher, body(webhook(am_alert(confbus_version="12", node="n3"))))
    assert status == 200, reply
    fired = await alert_log.wait(lambda a: a.state == "firing")
    assert fired.source == "alertmanager" and fired.namespace == NS and fired.version == 12
    assert fired.rule == "HighErrorRate" and fired.summary == "errors above 5%"
    assert fired.value == 0.31 and fired.threshold == 0.05 and fired.nodes == ["n3"]
    assert fired.alert_id == "am:c0ffee00c0ffee00:1777888800"
    assert reply == {"accepted": 1, "alert_ids": [fired.alert_id]}

    # Alertmanager repeats a firing group: same id (the stream drops the copy).
    assert (await post(watcher, body(webhook(am_alert(confbus_version="12")))))[0] == 200

    resolved_hook = webhook(am_alert("resolved", confbus_version="12"), status="resolved")
    assert (await post(watcher, body(resolved_hook)))[0] == 200
    resolved = await alert_log.wait(lambda a: a.state == "resolved")
    assert resolved.alert_id == fired.alert_id and resolved.source == "alertmanager"

    # The plain ``namespace`` label works too; no version label: version None.
    plain = am_alert()
    del plain["labels"]["confbus_namespace"]
    plain["labels"]["namespace"] = NS
    plain["fingerprint"] = "feedfacefeedface"
    assert (await post(watcher, body(webhook(plain))))[0] == 200
    other = await alert_log.wait(lambda a: a.alert_id.startswith("am:feedface"))
    assert other.version is None and other.namespace == NS
    port = watcher.ready["http_port"]
    assert await metric(port, "confbus_health_watcher_receiver_requests_total", status="200") == 4


def _bad(case: str) -> tuple[bytes, int, str]:
    """(body, status, a word the reason must contain) for one hand-picked malformed body."""
    missing_ns = am_alert()
    del missing_ns["labels"]["confbus_namespace"]
    no_starts = am_alert()
    del no_starts["startsAt"]
    cases: dict[str, tuple[bytes, int, str]] = {
        "empty": (b"", 400, "webhook"),
        "not json": (b"alert!", 400, "webhook"),
        "truncated": (body(webhook(am_alert()))[:-7], 400, "webhook"),
        "array": (b"[]", 400, "object"),
        "empty object": (b"{}", 400, "version"),
        "no alerts": (body({"version": "4"}), 400, "alerts"),
        "alerts not a list": (body({**webhook(), "alerts": {}}), 400, "alerts"),
        "bad status": (body(webhook({**am_alert(), "status": "pending"})), 400, "status"),
        "labels not strings": (
            body(webhook({**am_alert(), "labels": {"confbus_namespace": 7}})),
            400,
            "labels",
        ),
        "no startsAt": (body(webhook(no_starts)), 400, "startsAt"),
        "bad startsAt": (body(webhook({**am_alert(), "startsAt": "yesterday"})), 400, "startsAt"),
        "no namespace label": (body(webhook(missing_ns)), 422, "confbus_namespace"),
        "bad namespace": (
            body(webhook(am_alert(confbus_namespace="Web.Prod"))),
            422,
            "not a confbus namespace",
        ),
        "unknown namespace": (
            body(webhook(am_alert(confbus_namespace="payments"))),
            422,
            "unknown namespace",
        ),
        "bad version": (body(webhook(am_alert(confbus_version="v2"))), 422, "version"),
        "one bad among good": (
            body(webhook(am_alert(), am_alert(confbus_namespace="nope"))),
            422,
            "nope",
        ),
    }
    return cases[case]


def _json_values() -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )


def _mutated() -> st.SearchStrategy[bytes]:
    """A real webhook with one field broken (replaced by any JSON value, or removed)."""
    paths = [
        ("version",),
        ("alerts",),
        ("alerts", 0),
        ("alerts", 0, "status"),
        ("alerts", 0, "labels"),
        ("alerts", 0, "labels", "confbus_namespace"),
        ("alerts", 0, "labels", "confbus_version"),
        ("alerts", 0, "annotations"),
        ("alerts", 0, "startsAt"),
        ("alerts", 0, "fingerprint"),
    ]

    def build(path: tuple[Any, ...], value: Any, remove: bool) -> bytes:
        doc = copy.deepcopy(webhook(am_alert()))
        node = doc
        for key in path[:-1]:
            node = node[key]
        if remove and isinstance(node, dict):
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
        return body(doc)

    return st.builds(build, st.sampled_from(paths), _json_values(), st.booleans())


def _garbage(n: int, seed: int) -> list[bytes]:
    """``n`` bodies drawn by Hypothesis that must be refused (a body that happens to be a valid
    webhook for a known namespace is left out)."""
    out: list[bytes] = []

    @hypothesis_seed(seed)
    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.binary(max_size=200) | _json_values().map(body) | _mutated() | _mutated() | _mutated()
    )
    def collect(payload: bytes) -> None:
        try:
            alerts = decode(payload)
        except Rejected:
            out.append(payload)
            return
        if any(a.namespace != NS for a in alerts):
            out.append(payload)  # a well-formed webhook for an unknown namespace

    collect()
    return out


@pytest.mark.parametrize(
    "seed", [int(os.environ.get("CONFBUS_TEST_SEED", random.randrange(2**32)))]
)
async def test_malformed_bodies_are_refused_with_the_reason_and_publish_nothing(
    seed: int, store: StoreStub, alert_log: AlertLog, start_watcher: StartWatcher
) -> None:
    store.policies[NS] = Policy(namespace=NS)
    watcher = await start_watcher()
    names = [
        "empty", "not json", "truncated", "array", "empty object", "no alerts",
        "alerts not a list", "bad status", "labels not strings", "no startsAt", "bad startsAt",
        "no namespace label", "bad namespace", "unknown namespace", "bad version",
        "one bad among good",
    ]  # fmt: skip
    for name in names:
        payload, want, word = _bad(name)
        status, reply = await post(watcher, payload)
        assert status == want, (name, status, reply)
        assert word.lower() in reply["error"].lower(), (name, reply)
    # Too large: refused from its Content-Length, before any of it is read.
    async with await anyio.connect_tcp("127.0.0.1", watcher.ready["alertmanager_port"]) as s:  # type: ignore[index]
        await s.send(
            f"POST /alertmanager HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        raw = b""
        with anyio.fail_after(5):
            try:
                while True:
                    raw += await s.receive()
            except anyio.EndOfStream:
                pass
    assert raw.startswith(b"HTTP/1.1 413") and b"exceeds" in raw

    garbage = _garbage(200, seed)
    assert len(garbage) > 100
    for payload in garbage:
        status, reply = await post(watcher, payload)
        assert status in (400, 422), f"seed={seed} body={payload!r}: {status} {reply}"
        assert reply["error"], f"seed={seed} body={payload!r}: no reason"

    # Still serving, and nothing was published before this one valid webhook.
    port = watcher.ready["http_port"]  # type: ignore[index]
    assert (await http_get("127.0.0.1", port, "/healthz"))[0] == 200
    assert (await post(watcher, body(webhook(am_alert()))))[0] == 200

    def sentinel(a: Alert) -> bool:
        return a.alert_id.startswith("am:c0ffee00")

    await alert_log.wait(sentinel)
    assert len(alert_log.alerts) == 1, f"seed={seed}: {alert_log.alerts}"
    refused = await metric(port, "confbus_health_watcher_receiver_requests_total", status="400")
    refused += await metric(port, "confbus_health_watcher_receiver_requests_total", status="422")
    assert refused == len(garbage) + len(names)  # "too large" is refused before the handler
