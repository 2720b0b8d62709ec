"""The coordinator's protocol against a real nats-server, with voters on plain subscriptions
(the real agent is tested end to end in tests/e2e). The version-store's ``get`` is served by a
small real micro endpoint holding one version."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Literal

import anyio
import pytest
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from confbus.coordinator.head import Heads
from confbus.coordinator.metrics import CoordinatorMetrics
from confbus.coordinator.twophase import Coordinator
from confbus.runtime.api import Endpoint, serve_api, stop_api
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import Conflict
from confbus.schemas import subjects
from confbus.schemas.api.store import GET, GetRequest, VersionReply
from confbus.schemas.streams import CFG_TXN
from confbus.schemas.txn import Decision, Prepare, Vote, decode_txn, decode_vote_ack
from tests.helpers import eventually
from tests.versions import version_info

pytestmark = pytest.mark.anyio

CONTENT = b'{"pool": 10}\n'
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
async def store(bus: Bus) -> AsyncIterator[None]:
    async def get(req: GetRequest) -> VersionReply:
        info = version_info(req.namespace, int(req.ref), CONTENT, change_id="c1", author="ci")
        return VersionReply(info=info, content=CONTENT)

    svc = await serve_api(bus, [Endpoint(GET, get)], partial=True)
    yield
    await stop_api(svc)


async def coordinator(bus: Bus, name: str) -> Coordinator:
    return Coordinator(
        bus, await Heads.open(bus), name, CoordinatorMetrics.create(CollectorRegistry())
    )


async def voters(
    bus: Bus, ns: str, votes: dict[str, Literal["yes", "no", "silent"]]
) -> list[Prepare]:
    """Core subscribers that answer each prepare as told: 'yes', 'no' or 'silent'."""
    seen: list[Prepare] = []

    async def on_prepare(msg: Msg) -> None:
        p = decode_txn(msg.data)
        assert isinstance(p, Prepare)
        seen.append(p)
        for node, how in votes.items():
            if how == "silent" or node not in p.participants:
                continue
            vote = Vote(
                txid=p.txid,
                namespace=ns,
                node=node,
                epoch=p.epoch,
                vote=how,
                reason="" if how == "yes" else "validate failed",
            )
            ack = await bus.nc.request(subjects.txn_vote(ns, p.txid, node), encode(vote), 2)
            assert decode_vote_ack(ack.data).accepted

    await bus.nc.subscribe(f"cfg.txn.{ns}.*.prepare", cb=on_prepare)
    return seen


async def decision(bus: Bus, ns: str, txid: str) -> Decision:
    msg = await bus.js.get_last_msg(CFG_TXN.name, subjects.txn_decision(ns, txid))
    assert msg.data is not None
    d = decode_txn(msg.data)
    assert isinstance(d, Decision)
    return d


async def test_all_yes_commits_and_records_the_decision_once(bus: Bus, store: None) -> None:
    seen = await voters(bus, "web", {"n1": "yes", "n2": "yes", "n3": "yes"})
    coord = await coordinator(bus, "c1")
    reply = await coord.switch("web", 1, ["n1", "n2", "n3"], 5.0)
    assert reply.outcome == "commit"
    assert [v.vote for v in reply.votes] == ["yes", "yes", "yes"]
    assert seen[0].sha256 == SHA and seen[0].content == CONTENT
    d = await decision(bus, "web", reply.txid)
    assert d.outcome == "commit" and d.epoch == 1
    head = (await Heads(await bus.kv("CFG_TXN_HEAD")).get("web")).value
    assert head.state == "committed" and head.txid == reply.txid


async def test_a_no_vote_aborts_at_once_with_the_reason(bus: Bus, store: None) -> None:
    await voters(bus, "web", {"n1": "yes", "n2": "no"})
    coord = await coordinator(bus, "c1")
    with anyio.fail_after(3):  # no waiting for the 30 s deadline: a no decides
        reply = await coord.switch("web", 1, ["n1", "n2"], 30.0)
    assert reply.outcome == "abort"
    d = await decision(bus, "web", reply.txid)
    assert d.outcome == "abort" and "n2: validate failed" in d.reason


async def test_a_missing_vote_aborts_after_the_deadline(bus: Bus, store: None) -> None:
    await voters(bus, "web", {"n1": "yes", "n2": "silent"})
    coord = await coordinator(bus, "c1")
    reply = await coord.switch("web", 1, ["n1", "n2"], 0.5)
    assert reply.outcome == "abort"
    assert {v.node: v.vote for v in reply.votes} == {"n1": "yes", "n2": "missing"}


async def test_a_zombie_cannot_decide_once_a_newer_epoch_exists(bus: Bus, store: None) -> None:
    await voters(bus, "web", {"n1": "yes", "n2": "silent"})
    zombie = await coordinator(bus, "old")
    successor = await coordinator(bus, "new")
    async with anyio.create_task_group() as tg:
        result: list[str] = []

        async def run_zombie() -> None:
            reply = await zombie.switch("web", 1, ["n1", "n2"], 2.0)
            result.append(reply.outcome)

        tg.start_soon(run_zombie)
        heads = Heads(await bus.kv("CFG_TXN_HEAD"))

        async def preparing() -> bool:
            return (await heads.get("web")).value.state == "preparing"

        await eventually(preparing, timeout=5, what="the zombie's prepare")
        zombie_txid = (await heads.get("web")).value.txid
        # The successor takes over: bumps the epoch and aborts the zombie's transaction.
        await successor.lead("web")
    assert result == ["abort"]
    assert zombie_txid is not None
    d = await decision(bus, "web", zombie_txid)
    assert d.outcome == "abort" and d.epoch == 2
    head = (await heads.get("web")).value
    assert head.epoch == 2 and head.leader == "new"


async def test_resolve_aborts_an_expired_undecided_transaction(bus: Bus, store: None) -> None:
    heads = Heads(await bus.kv("CFG_TXN_HEAD"))
    first = await coordinator(bus, "c1")
    await first.lead("web")
    head = await heads.get("web")
    from confbus.schemas.txn import TxnHead

    old = datetime(2020, 1, 1, tzinfo=UTC)
    await heads.cas(
        head,
        TxnHead(
            namespace="web",
            epoch=1,
            leader="c1",
            txid="e1-dead",
            state="preparing",
            version=1,
            sha256=SHA,
            participants=["n1"],
            started_at=old,
            timeout_s=1.0,
        ),
    )
    other = await coordinator(bus, "c2")
    reply = await other.resolve("web", "e1-dead")
    assert reply.state == "aborted"
    assert (await decision(bus, "web", "e1-dead")).outcome == "abort"
    # Asking again reads the same decision back; an unknown txid is presumed aborted.
    assert (await other.resolve("web", "e1-dead")).state == "aborted"
    assert (await other.resolve("web", "e9-unknown")).state == "aborted"


async def test_garbage_on_a_decision_subject_neither_hides_the_decision_nor_fails_resolve(
    bus: Bus, store: None
) -> None:
    await voters(bus, "web", {"n1": "yes"})
    coord = await coordinator(bus, "c1")
    reply = await coord.switch("web", 1, ["n1"], 5.0)
    assert reply.outcome == "commit"
    # Written after the decision (an empty body, bytes that are no record): the commit stands.
    for junk in (b"", b"\x00not a record"):
        await bus.js.publish(subjects.txn_decision("web", reply.txid), junk)
    resolved = await coord.resolve("web", reply.txid)
    assert resolved.decision is not None and resolved.decision.outcome == "commit"
    # Garbage alone, for a txid never started: presumed abort (it used to fail every resolve).
    await bus.js.publish(subjects.txn_decision("web", "0"), b"")
    assert (await coord.resolve("web", "0")).state == "aborted"


async def test_leading_a_namespace_its_head_is_written_without_reading_it(
    bus: Bus, store: None
) -> None:
    # The head as our last compare-and-set left it is the guess for the next one: a
    # coordinator that leads the namespace starts and decides a transaction without a read.
    await voters(bus, "web", {"n1": "yes", "n2": "yes"})
    coord = await coordinator(bus, "c1")
    assert (await coord.switch("web", 1, ["n1", "n2"], 5.0)).outcome == "commit"
    reads: list[str] = []

    async def on_read(msg: Msg) -> None:
        reads.append(msg.subject)

    subs = [
        await bus.nc.subscribe("$JS.API.STREAM.MSG.GET.KV_CFG_TXN_HEAD", cb=on_read),
        await bus.nc.subscribe("$JS.API.DIRECT.GET.KV_CFG_TXN_HEAD.>", cb=on_read),
    ]
    reply = await coord.switch("web", 2, ["n1", "n2"], 5.0)
    await bus.nc.flush()
    for sub in subs:
        await sub.unsubscribe()
    assert reply.outcome == "commit"
    assert reads == []
    d = await decision(bus, "web", reply.txid)
    assert d.outcome == "commit" and d.version == 2 and d.epoch == 1


async def test_a_stale_guess_of_the_head_costs_a_read_not_the_switch(bus: Bus, store: None) -> None:
    # "a" remembers the head it wrote; "b" takes the namespace over meanwhile. a's next
    # compare-and-set on its stale guess fails: it reads the head, takes the lead back at a
    # newer epoch and switches — never writing over b's epoch.
    await voters(bus, "web", {"n1": "yes"})
    a = await coordinator(bus, "a")
    b = await coordinator(bus, "b")
    replies = [
        await a.switch("web", 1, ["n1"], 5.0),
        await b.switch("web", 2, ["n1"], 5.0),
        await a.switch("web", 3, ["n1"], 5.0),
    ]
    assert [r.outcome for r in replies] == ["commit", "commit", "commit"]
    epochs = [(await decision(bus, "web", r.txid)).epoch for r in replies]
    assert epochs == [1, 2, 3]
    head = (await Heads(await bus.kv("CFG_TXN_HEAD")).get("web")).value
    assert head.epoch == 3 and head.leader == "a" and head.txid == replies[2].txid


async def test_a_switch_that_names_the_sha256_starts_while_fetching_and_checks_it(
    bus: Bus, store: None
) -> None:
    # The distributor names the version's sha256: the head is written while the bytes are
    # fetched. Bytes that are not the named ones abort the transaction before any prepare.
    seen = await voters(bus, "web", {"n1": "yes"})
    coord = await coordinator(bus, "c1")
    reply = await coord.switch("web", 1, ["n1"], 5.0, sha256=SHA)
    assert reply.outcome == "commit" and seen[-1].content == CONTENT
    other = "0" * 64
    with pytest.raises(Conflict, match=f"is sha256 {SHA}, not {other} as asked"):
        await coord.switch("web", 2, ["n1"], 5.0, sha256=other)
    head = (await Heads(await bus.kv("CFG_TXN_HEAD")).get("web")).value
    assert head.state == "aborted" and head.version == 2 and head.txid is not None
    d = await decision(bus, "web", head.txid)
    assert d.outcome == "abort" and f"not {other} as asked" in d.reason
    assert [p.version for p in seen] == [1]  # v2 was never prepared
