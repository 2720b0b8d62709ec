"""Every request/reply endpoint of the running services, fed garbage (docs/design.md §8.9).

The endpoints are discovered the way any client would, with ``$SRV.INFO`` (nats.micro), so an
endpoint added tomorrow is fuzzed too. For each request: an answer comes (no timeout); an error
answer carries a 4xx/5xx code and a reason; a refused request stores nothing (no stream, bucket
or namespace moved); afterwards every service still answers a valid request and no process died.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
import nats.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc
from confbus.runtime.bus import connect
from confbus.schemas import subjects
from confbus.schemas.api import ApiError, catalog
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import health as health_api
from confbus.schemas.api import rollback as rollback_api
from confbus.schemas.api import store as store_api
from confbus.schemas.api import txn as txn_api
from confbus.schemas.api.operation import Operation
from confbus.schemas.streams import CFG_ALERTS, CFG_CHANGES, CFG_DLQ, CFG_EVENTS, CFG_TXN
from tests.fuzz.strategies import DEEP, garbage, wire
from tests.helpers import provision_at

SERVICES = {
    "confbus-store": "version_store",
    "confbus-txn": "coordinator",
    "confbus-dist": "distributor",
    "confbus-health": "health_watcher",
    "confbus-rollback": "rollbacker",
}
# A valid request per service: it must still be answered after the fuzzing.
ALIVE: dict[str, tuple[Operation[Any, Any], bytes]] = {
    store_api.SERVICE: (store_api.NAMESPACES, b"{}"),
    txn_api.SERVICE: (txn_api.IN_DOUBT, b"{}"),
    dist_api.SERVICE: (dist_api.STATUS, b'{"namespace": "fuzz-alive"}'),
    health_api.SERVICE: (
        health_api.VERDICT,
        b'{"namespace": "fuzz-alive", "version": 1, "nodes": []}',
    ),
    rollback_api.SERVICE: (rollback_api.START, b'{"namespace": "fuzz-alive"}'),
}
STREAMS = (CFG_CHANGES.name, CFG_TXN.name, CFG_EVENTS.name, CFG_ALERTS.name, CFG_DLQ.name)
EXAMPLES = int(os.environ.get("CONFBUS_FUZZ_EXAMPLES", "20"))
REPLY_TIMEOUT = 5.0


@dataclass
class FuzzStack:
    root: Path
    nats: NatsServer
    procs: dict[str, Proc] = field(default_factory=dict)
    endpoints: list[str] = field(default_factory=list)  # subjects, wildcards filled in

    @property
    def url(self) -> str:
        return self.nats.url

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if not p.alive()]


async def discover(url: str) -> list[str]:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        found: list[str] = []
        for name in SERVICES:
            try:
                msg = await nc.request(f"$SRV.INFO.{name}", b"", timeout=2.0)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                continue
            for ep in json.loads(msg.data)["endpoints"]:
                # A wildcard token (a pinned identity, a namespace) gets a plausible value.
                found.append(
                    ".".join("fuzzer" if t == "*" else t for t in ep["subject"].split("."))
                )
        return sorted(found)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    root = tmp_path_factory.mktemp("fuzz-api")
    server = NatsServer(data_dir=root / "nats").start()
    s = FuzzStack(root, server)
    try:
        anyio.run(provision_at, server.url)
        logs = root / "logs"
        logs.mkdir()
        args: dict[str, list[str]] = {
            "version_store": ["--store", f"sqlite:///{root / 'store.db'}"],
            "distributor": ["--heartbeat-interval", "0.5"],
        }
        for pkg in SERVICES.values():
            s.procs[pkg] = Proc.service(pkg, server.url, logs, *args.get(pkg, [])).start()
        s.endpoints = anyio.run(discover, server.url)
        yield s
    finally:
        for p in s.procs.values():
            p.stop()
        server.stop()


def request_type(subject: str) -> Any:
    """The request type of the declared operation whose subject pattern ``subject`` matches
    (``export_<replica>`` is ``store.EXPORT_AT``'s, ``approve.fuzzer`` ``APPROVE_AS``'s)."""
    tokens = subject.split(".")
    for op in catalog.every_operation():
        pattern = op.pattern.split(".")
        if len(pattern) == len(tokens) and all(map(fnmatch.fnmatchcase, tokens, pattern)):
            return op.request
    return None


async def snapshot(url: str) -> tuple[Any, ...]:
    """What a refused request must leave as it was."""
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        seqs = [(await js.stream_info(s)).state.last_seq for s in STREAMS]
        heads = (await js.stream_info("KV_CFG_TXN_HEAD")).state.messages
        reply = await nc.request(store_api.NAMESPACES.address, b"{}", timeout=REPLY_TIMEOUT)
        return (*seqs, heads, reply.data)
    finally:
        await nc.close()


@dataclass
class Answer:
    code: int | None  # None: a success
    reason: str
    data: bytes


async def ask(url: str, subject: str, body: bytes) -> Answer:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        msg = await nc.request(subject, body, timeout=REPLY_TIMEOUT)
    finally:
        await nc.close()
    headers = msg.headers or {}
    if "Nats-Service-Error-Code" not in headers:
        return Answer(None, "", msg.data)
    err = msgspec.json.decode(msg.data, type=ApiError)  # the error body is an ApiError
    assert int(headers["Nats-Service-Error-Code"]) == err.code
    assert headers.get("Nats-Service-Error"), "an error answer without a reason header"
    return Answer(err.code, err.error, msg.data)


async def one_request(url: str, subject: str, body: bytes) -> Answer:
    before = await snapshot(url)
    try:
        answer = await ask(url, subject, body)
    except nats.errors.TimeoutError:
        raise AssertionError(
            f"{subject}: no answer within {REPLY_TIMEOUT}s to {body[:200]!r}"
        ) from None
    if answer.code is None:
        msgspec.json.decode(answer.data)  # a success is JSON
        return answer
    assert 400 <= answer.code <= 599, answer
    assert answer.reason.strip(), answer
    # An internal error is an exception the service did not expect: a bug, even if answered.
    assert answer.code != 500, f"{subject}: {answer.reason} (for {body[:200]!r})"
    assert await snapshot(url) == before, f"{subject} refused {body[:200]!r} but stored something"
    return answer


FUZZ = settings(
    max_examples=EXAMPLES * 10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_the_endpoints_are_discovered(stack: FuzzStack) -> None:
    ops = {s.split(".", 3)[2] for s in stack.endpoints}
    assert {"store", "txn", "dist"} <= ops, stack.endpoints
    # The pinned twins too, and every request type is known.
    assert store_api.APPROVE_AS.as_user("fuzzer").address in stack.endpoints
    assert [s for s in stack.endpoints if request_type(s) is None] == []


@FUZZ
@given(data=st.data())
def test_garbage_is_refused_with_a_reason(stack: FuzzStack, data: st.DataObject) -> None:
    subject = data.draw(st.sampled_from(stack.endpoints), label="endpoint")
    body = data.draw(garbage(), label="body")
    anyio.run(one_request, stack.url, subject, body)


@FUZZ
@given(data=st.data())
def test_lookalike_requests_are_answered(stack: FuzzStack, data: st.DataObject) -> None:
    """Requests shaped like the endpoint's own (so they reach its checks and its store): an
    answer, and nothing stored unless it was a success."""
    subject = data.draw(st.sampled_from(stack.endpoints), label="endpoint")
    t = request_type(subject)
    # Integers stay within int64: larger ones are a known finding, pinned on its own below.
    body = data.draw(wire(t, int64=True) if t is not None else garbage(), label="body")
    anyio.run(one_request, stack.url, subject, body)


def test_version_numbers_beyond_int64_are_refused_with_400(stack: FuzzStack) -> None:
    body = b'{"namespace": "fuzz", "version": 9223372036854775808, "approver": "x"}'
    answer = anyio.run(ask, stack.url, store_api.APPROVE.address, body)
    assert answer.code == 400, answer


def test_every_service_still_answers(stack: FuzzStack) -> None:
    async def check() -> None:
        for service, (op, body) in ALIVE.items():
            if not any(s.split(".")[2] == service for s in stack.endpoints):
                continue
            answer = await ask(stack.url, op.address, body)
            assert answer.code in (None, 404, 409), (service, answer)

    anyio.run(check)
    assert stack.dead() == []


def test_deeply_nested_requests_are_refused(stack: FuzzStack) -> None:
    """msgspec raises RecursionError (not a msgspec error) for JSON nested ~1000 deep; before
    runtime/api.py caught it, one such request to a concurrent endpoint killed the service."""

    async def check() -> None:
        for subject in stack.endpoints:
            answer = await ask(stack.url, subject, DEEP)
            assert answer.code == 400 and "nested too deeply" in answer.reason, (subject, answer)

    anyio.run(check)
    assert stack.dead() == []


# -- the Alertmanager receiver (HTTP) -----------------------------------------------------------


async def http_post(port: int, raw: bytes) -> tuple[int, bytes]:
    """Send ``raw`` as the whole request; the status and body of the answer."""
    with anyio.fail_after(REPLY_TIMEOUT):
        async with await anyio.connect_tcp("127.0.0.1", port) as conn:
            await conn.send(raw)
            answer = b""
            try:
                while True:
                    answer += await conn.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), f"no HTTP answer to {raw[:200]!r}: {answer[:200]!r}"
    return int(head.split(b" ")[1]), body


def post(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def alerts_published(url: str) -> int:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        return int((await nc.jetstream().stream_info(CFG_ALERTS.name)).state.last_seq)
    finally:
        await nc.close()


async def one_webhook(url: str, port: int, raw: bytes) -> None:
    before = await alerts_published(url)
    status, body = await http_post(port, raw)
    if status == 200:
        return  # a webhook about a namespace that exists: its alerts are published
    assert status in (400, 404, 405, 413, 422, 503), (status, body, raw[:200])
    reason = json.loads(body)["error"]
    assert isinstance(reason, str) and reason.strip(), body
    assert await alerts_published(url) == before, f"refused {raw[:200]!r} but published"


def alertmanager_port(stack: FuzzStack) -> int:
    ready = stack.procs["health_watcher"].ready
    assert ready is not None and "alertmanager_port" in ready, ready
    return int(ready["alertmanager_port"])


webhook_like = st.fixed_dictionaries(
    {
        "version": st.sampled_from(["4", "3", ""]),
        "alerts": st.lists(
            st.fixed_dictionaries(
                {
                    "status": st.sampled_from(["firing", "resolved", "pending"]),
                    "labels": st.dictionaries(
                        st.sampled_from(
                            ["confbus_namespace", "namespace", "confbus_node", "confbus_version",
                             "alertname"]
                        ),
                        st.one_of(st.text(max_size=70), st.from_regex(r"\A[a-z0-9-]{1,8}\Z")),
                    ),
                    "startsAt": st.sampled_from(
                        ["2024-05-01T00:00:00Z", "0001-01-01T00:00:00Z", "not a time", ""]
                    ),
                },
                optional={
                    "annotations": st.dictionaries(st.text(max_size=10), st.text(max_size=20))
                },
            ),
            max_size=3,
        ),
    },
    optional={"status": st.sampled_from(["firing", "resolved", 7])},
).map(lambda d: json.dumps(d).encode())  # fmt: skip


@FUZZ
@given(data=st.data())
def test_alertmanager_garbage_is_refused_with_a_reason(
    stack: FuzzStack, data: st.DataObject
) -> None:
    port = alertmanager_port(stack)
    body = data.draw(st.one_of(garbage(), webhook_like), label="body")
    path = data.draw(st.sampled_from(["/alertmanager", "/alertmanager", "/nope"]), label="path")
    anyio.run(one_webhook, stack.url, port, post(path, body))


@FUZZ
@given(raw=st.binary(max_size=300))
def test_alertmanager_survives_broken_http(stack: FuzzStack, raw: bytes) -> None:
    """Any bytes at all, as long as they end a header block (else the server rightly waits for
    the rest, until its read timeout)."""
    port = alertmanager_port(stack)
    request = raw.replace(b"\r\n\r\n", b"") + b"\r\n\r\n"

    async def check() -> None:
        before = await alerts_published(stack.url)
        status, _ = await http_post(port, request)
        assert 400 <= status <= 599
        assert await alerts_published(stack.url) == before

    anyio.run(check)


def test_alertmanager_refuses_oversized_bodies_and_still_answers(stack: FuzzStack) -> None:
    port = alertmanager_port(stack)
    # Refused from the header, before any body is read.
    too_big = b"POST /alertmanager HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"
    status, body = anyio.run(http_post, port, too_big)
    assert status == 413 and b"exceeds" in body
    valid = json.dumps(
        {
            "version": "4",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"confbus_namespace": "no-such-ns", "alertname": "x"},
                    "startsAt": "2024-05-01T00:00:00Z",
                }
            ],
        }
    ).encode()
    status, body = anyio.run(http_post, port, post("/alertmanager", valid))
    assert status == 422 and b"unknown namespace" in body, body
    assert stack.dead() == []


# -- last: it may take the version-store down ---------------------------------------------------


def test_a_deeply_nested_change_is_dead_lettered(stack: FuzzStack) -> None:
    """Last in this module: it may take the version-store down (restarted afterwards)."""
    store = stack.procs["version_store"]

    async def poison() -> None:
        bus = await connect(stack.url, name="fuzz-poison")
        try:
            before = (await bus.js.stream_info(CFG_DLQ.name)).state.messages
            await bus.js.publish(subjects.change("fuzz-deep"), DEEP)
            with anyio.fail_after(15):
                while (await bus.js.stream_info(CFG_DLQ.name)).state.messages == before:
                    assert store.alive(), "the version-store died on a deeply nested change"
                    await anyio.sleep(0.05)  # polling a stream's count
        finally:
            await bus.close()

    try:
        anyio.run(poison)
    finally:
        if not store.alive():
            store.start()
