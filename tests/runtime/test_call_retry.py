"""The one retry policy of request/reply calls (``confbus.runtime.api.call``), against a real
nats-server: what is sent again, what is not and why, and for how long."""

from __future__ import annotations

import time

import pytest
from nats.aio.msg import Msg

from confbus.runtime.api import Endpoint, call, serve_api, stop_api
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import Unavailable
from confbus.runtime.retry import budget
from confbus.schemas.api import store, txn
from confbus.schemas.changes import ChangeProposed
from tests.versions import version_info

pytestmark = pytest.mark.anyio

INFO = version_info("ns", 1, b"{}", change_id="c1", author="t")


class Flaky:
    """A handler that answers 503 (``Unavailable``) the first ``failures`` times."""

    def __init__(self, failures: int, reply: object) -> None:
        self.failures = failures
        self.reply = reply
        self.calls = 0

    async def __call__(self, request: object) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise Unavailable("electing a leader")
        return self.reply


async def test_a_read_answered_503_is_asked_again_until_it_answers(bus: Bus) -> None:
    handler = Flaky(2, store.NamespacesReply(namespaces=["a"]))
    svc = await serve_api(bus, [Endpoint(store.NAMESPACES, handler)], partial=True)
    try:
        reply = await call(bus, store.NAMESPACES, store.NamespacesRequest())
    finally:
        await stop_api(svc)
    assert reply.namespaces == ["a"]
    assert handler.calls == 3


async def test_an_act_answered_503_is_not_sent_again_and_says_why(bus: Bus) -> None:
    handler = Flaky(1, store.VersionReply(info=INFO))
    svc = await serve_api(bus, [Endpoint(store.PROMOTE, handler)], partial=True)
    request = store.PromoteRequest(namespace="ns", version=1, actor="t")
    try:
        with pytest.raises(Unavailable) as caught:
            await call(bus, store.PROMOTE, request)
    finally:
        await stop_api(svc)
    assert handler.calls == 1
    assert "not retried: store.promote acts and may have been carried out already" in str(
        caught.value
    )


async def test_an_idempotent_act_answered_503_is_sent_again(bus: Bus) -> None:
    reply = store.ProposeReply(stream="CFG_CHANGES", seq=1)
    handler = Flaky(2, reply)
    op = store.PROPOSE.as_user("alice", "ns")
    svc = await serve_api(bus, [Endpoint(op.declaration, handler)], partial=True)
    change = ChangeProposed(namespace="ns", change_id="c1", content=b"{}")
    try:
        got = await call(bus, op, change)
    finally:
        await stop_api(svc)
    assert got == reply
    assert handler.calls == 3


async def test_an_act_nobody_received_is_sent_again_until_the_budget_says_stop(bus: Bus) -> None:
    # No coordinator is subscribed: the request reaches nobody, so repeating it is harmless.
    request = txn.SwitchRequest(namespace="ns", version=1, nodes=["n1"], timeout_s=1.0)
    started = time.monotonic()
    with budget(1.5), pytest.raises(Unavailable) as caught:
        await call(bus, txn.SWITCH, request)
    took = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith("txn.switch (cfg.api.txn.switch): tried ")
    tries = int(message.split("tried ")[1].split(" ")[0])
    assert tries > 2, message
    assert "no txn service is answering" in message
    assert 0.5 < took < 1.5 + 0.5, took  # within the budget (a try's wait may overlap its end)


async def test_one_try_when_the_caller_has_something_better_to_do(bus: Bus) -> None:
    with budget(30), pytest.raises(Unavailable) as caught:
        await call(bus, store.NAMESPACES, store.NamespacesRequest(), retry_for=0)
    assert str(caught.value) == "no store service is answering on cfg.api.store.namespaces"


async def test_a_read_that_times_out_is_asked_again_within_the_budget(bus: Bus) -> None:
    # Its first request goes unanswered (a reply lost in a reconnect); the second is answered.
    asked: list[Msg] = []
    reply = store.NamespacesReply(namespaces=["b"])

    async def first_lost(msg: Msg) -> None:
        asked.append(msg)
        if len(asked) > 1:
            await msg.respond(encode(reply))

    sub = await bus.nc.subscribe(store.NAMESPACES.address, cb=first_lost)
    try:
        with budget(5.0):
            got = await call(bus, store.NAMESPACES, store.NamespacesRequest(), timeout=0.5)
    finally:
        await sub.unsubscribe()
    assert got == reply
    assert len(asked) == 2


async def test_a_lost_request_of_an_idempotent_act_is_sent_again_beside_it(bus: Bus) -> None:
    # The first request is lost (as one through a nats-server killed under it): never answered.
    reply = store.ProposeReply(stream="CFG_CHANGES", seq=1)
    op = store.PROPOSE.as_user("alice", "ns")
    seen: list[Msg] = []

    async def lose_the_first(msg: Msg) -> None:
        seen.append(msg)
        if len(seen) > 1:
            await msg.respond(encode(reply))

    sub = await bus.nc.subscribe(op.address, cb=lose_the_first)
    change = ChangeProposed(namespace="ns", change_id="c1", content=b"{}")
    started = time.monotonic()
    try:
        got = await call(bus, op, change, retry_for=0, again_after=0.3)
    finally:
        await sub.unsubscribe()
    assert got == reply and len(seen) == 2
    assert time.monotonic() - started < op.deadline_s(change) / 2  # not the deadline (10 s)


async def test_only_an_operation_safe_to_repeat_is_sent_twice(bus: Bus) -> None:
    request = store.PromoteRequest(namespace="ns", version=1, actor="t")
    with pytest.raises(ValueError, match="not safe to send twice"):
        await call(bus, store.PROMOTE, request, again_after=1.0)
