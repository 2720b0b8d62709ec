"""The generated permissions, enforced by a real nats-server: every forbidden publish is refused
by the server (its ``-ERR 'Permissions Violation …'`` reaches the client) and never lands where
it was aimed — and the same publish as the ``service`` user does land, so each check can fail.

Runs against nats-server with ``services/cli/security.py``'s include, the version-store and the
coordinator as real processes connected as ``service``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec
import nats.errors
import pytest
from nats.aio.msg import Msg

from confbus.procs.proc import Proc
from confbus.runtime.api import call
from confbus.runtime.codec import encode
from confbus.runtime.errors import Forbidden
from confbus.schemas import subjects
from confbus.schemas.api import decode_api_error
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import store as store_api
from confbus.schemas.api.operation import Operation
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.policy import Policy
from confbus.schemas.streams import CFG_ALERTS, CFG_CHANGES, CFG_EVENTS, CFG_HEALTH, CFG_TXN
from tests.security.support import Conn, SecuredNats, connect_as, make_roster

NS = "payments"
OTHER_NS = "web"
TX = "t1"
Req = TypeVar("Req")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNats]:
    root: Path = tmp_path_factory.mktemp("perms")
    s = SecuredNats(root, make_roster()).start()
    procs: list[Proc] = []
    try:
        anyio.run(s.provision)
        logs = root / "logs"
        logs.mkdir()
        env = s.env("service")
        store = ["--store", f"sqlite:///{root / 'store.db'}"]
        for pkg, args in (("version_store", store), ("coordinator", [])):
            procs.append(Proc.service(pkg, s.url, logs, *args, env=env).start())
        yield s
    finally:
        for p in procs:
            p.stop()
        s.stop()


async def last_seq(secured: SecuredNats, stream: str) -> int:
    bus = await secured.service_bus()
    try:
        return int((await bus.js.stream_info(stream)).state.last_seq)
    finally:
        await bus.close()


async def publish_once(conn: Conn, subject: str, data: bytes = b"{}") -> None:
    await conn.nc.publish(subject, data)
    await conn.nc.flush()


# -- stream writes: refused, and the stream did not get the message ---------------------------

STREAM_WRITES = [
    ("ci", subjects.txn_decision(NS, TX), CFG_TXN.name),
    ("ci", subjects.txn_prepare(NS, TX), CFG_TXN.name),
    ("ci", "$KV.CFG_TXN_HEAD." + NS, "KV_CFG_TXN_HEAD"),
    ("ci", "$KV.CFG_STATE.rollout." + NS, "KV_CFG_STATE"),
    ("ci", subjects.event(NS, "version.created"), CFG_EVENTS.name),
    ("ci", subjects.alert(NS), CFG_ALERTS.name),
    # The self-declared author path: with authentication on, changes go through propose.
    ("ci", subjects.change(NS), CFG_CHANGES.name),
    ("agent-n1", subjects.txn_decision(NS, TX), CFG_TXN.name),
    ("agent-n1", "$KV.CFG_TXN_HEAD." + NS, "KV_CFG_TXN_HEAD"),
    ("agent-n1", "$KV.CFG_STATE.node.n2", "KV_CFG_STATE"),
    ("agent-n1", subjects.event(NS, "version.approved"), CFG_EVENTS.name),
    ("agent-n1", subjects.health(NS, "n2"), CFG_HEALTH.name),
    ("agent-n1", subjects.change(NS), CFG_CHANGES.name),
    ("alice", subjects.txn_decision(NS, TX), CFG_TXN.name),
    ("alice", "$KV.CFG_TXN_HEAD." + NS, "KV_CFG_TXN_HEAD"),
    ("alice", subjects.change(NS), CFG_CHANGES.name),
    ("alice", subjects.event(NS, "version.promoted"), CFG_EVENTS.name),
]


@pytest.mark.parametrize(("user", "subject", "stream"), STREAM_WRITES)
async def test_forbidden_stream_write_is_refused(
    secured: SecuredNats, user: str, subject: str, stream: str
) -> None:
    before = await last_seq(secured, stream)
    async with connect_as(secured, user) as conn:
        await publish_once(conn, subject)
        err = await conn.refused(subject)
    assert "for publish" in err.lower()
    assert await last_seq(secured, stream) == before, f"{stream} got {subject} from {user}"


async def test_the_same_write_as_a_service_lands(secured: SecuredNats) -> None:
    """The control: the check above is not vacuous (the subjects do reach their streams)."""
    subject = subjects.alert("control")
    before = await last_seq(secured, CFG_ALERTS.name)
    async with connect_as(secured, "service") as svc:
        await publish_once(svc, subject)
        assert svc.violations() == []
    # A core publish is not acknowledged: the stream's count is polled, with a deadline.
    with anyio.fail_after(5):
        while await last_seq(secured, CFG_ALERTS.name) == before:  # noqa: ASYNC110
            await anyio.sleep(0.02)


# -- core subjects: refused, and the observer never sees it -------------------------------------

CORE_WRITES = [
    # (user, forbidden subject, an allowed sentinel it sends right after)
    ("agent-n1", subjects.txn_vote(NS, TX, "n2"), subjects.txn_vote(NS, TX, "n1")),
    ("agent-n1", subjects.heartbeat("n2"), subjects.heartbeat("n1")),
    ("agent-n1", subjects.node_resync("n2"), subjects.heartbeat("n1")),
    ("ci", subjects.txn_vote(NS, TX, "n1"), dist_api.STATUS.address),
    ("ci", subjects.heartbeat("n1"), dist_api.STATUS.address),
    ("alice", subjects.txn_vote(NS, TX, "n1"), "$SRV.PING"),
    ("alice", subjects.heartbeat("n1"), "$SRV.PING"),
    ("service", subjects.txn_vote(NS, TX, "n1"), dist_api.STATUS.address),
    ("service", subjects.heartbeat("n1"), dist_api.STATUS.address),
]


@pytest.mark.parametrize(("user", "subject", "sentinel"), CORE_WRITES)
async def test_nobody_speaks_for_a_node(
    secured: SecuredNats, user: str, subject: str, sentinel: str
) -> None:
    """Votes and heartbeats carry the node id in the subject: only that node's agent may send
    them. The observer (a service, subscribed to everything) sees the sentinel the sender sent
    after the forbidden message — and never the forbidden one (one publisher's messages reach a
    subscriber in order)."""
    seen: list[str] = []
    got_sentinel = anyio.Event()

    async def observe(msg: Msg) -> None:
        if msg.subject in (subject, sentinel):
            seen.append(msg.subject)
        if msg.subject == sentinel:
            got_sentinel.set()

    async with connect_as(secured, "service") as svc, connect_as(secured, user) as conn:
        await svc.nc.subscribe(">", cb=observe)
        await svc.nc.flush()
        await publish_once(conn, subject)
        await conn.refused(subject)
        await publish_once(conn, sentinel)
        with anyio.fail_after(5):
            await got_sentinel.wait()
    assert seen == [sentinel]


async def test_an_agent_may_vote_and_heartbeat_for_itself(secured: SecuredNats) -> None:
    got: list[str] = []
    done = anyio.Event()

    async def observe(msg: Msg) -> None:
        got.append(msg.subject)
        if len(got) == 2:
            done.set()

    async with connect_as(secured, "service") as svc, connect_as(secured, "agent-n1") as n1:
        await svc.nc.subscribe("cfg.>", cb=observe)
        await svc.nc.flush()
        await publish_once(n1, subjects.txn_vote(NS, TX, "n1"))
        await publish_once(n1, subjects.heartbeat("n1"))
        with anyio.fail_after(5):
            await done.wait()
        assert n1.violations() == []
    assert got == [subjects.txn_vote(NS, TX, "n1"), subjects.heartbeat("n1")]


# -- subscriptions and JetStream administration -------------------------------------------------

SUBSCRIPTIONS = [
    ("agent-n1", subjects.node_resync("n2")),
    ("agent-n1", "cfg.>"),
    ("ci", "cfg.txn.>"),
    ("ci", subjects.HEARTBEATS_ALL),
    ("ci-pay", f"cfg.event.{OTHER_NS}.>"),
    ("ci", "$KV.>"),
]


@pytest.mark.parametrize(("user", "subject"), SUBSCRIPTIONS)
async def test_forbidden_subscription_is_refused(
    secured: SecuredNats, user: str, subject: str
) -> None:
    async with connect_as(secured, user) as conn:
        await conn.nc.subscribe(subject)
        await conn.nc.flush()
        err = await conn.refused(subject)
    assert "for subscription" in err.lower()


JS_ADMIN = [
    ("agent-n1", "$JS.API.STREAM.DELETE." + CFG_TXN.name),
    ("agent-n1", "$JS.API.STREAM.PURGE." + CFG_TXN.name),
    ("agent-n1", "$JS.API.CONSUMER.DELETE." + CFG_TXN.name + ".x"),
    ("ci", "$JS.API.CONSUMER.CREATE." + CFG_CHANGES.name),  # would compete for changes
    ("ci", "$JS.API.CONSUMER.DURABLE.CREATE." + CFG_CHANGES.name + ".version-store"),
    ("ci", "$JS.API.STREAM.MSG.DELETE." + CFG_EVENTS.name),
    ("ci", "$JS.API.STREAM.UPDATE." + CFG_EVENTS.name),
    ("alice", "$JS.API.STREAM.PURGE." + CFG_EVENTS.name),
]


@pytest.mark.parametrize(("user", "subject"), JS_ADMIN)
async def test_jetstream_administration_is_refused(
    secured: SecuredNats, user: str, subject: str
) -> None:
    async with connect_as(secured, user) as conn:
        with pytest.raises(nats.errors.TimeoutError):  # the request never reached JetStream
            await conn.nc.request(subject, b"{}", timeout=0.5)
        await conn.refused(subject)


# -- identity: pinned by the subject ------------------------------------------------------------


async def sent_nowhere(conn: Conn, op: Operation[Req, Any], request: Req) -> None:
    """``conn``'s request to ``op`` is refused by the server: no reply, a violation."""
    with pytest.raises(nats.errors.TimeoutError):  # the request never left the server
        await conn.nc.request(op.address, encode(request), timeout=0.5)
    await conn.refused(op.address)


async def version_info(secured: SecuredNats, version: int) -> store_api.VersionReply:
    bus = await secured.service_bus()
    try:
        req = store_api.GetRequest(namespace=NS, ref=str(version), content=False)
        return await call(bus, store_api.GET, req)
    finally:
        await bus.close()


async def draft_by(secured: SecuredNats, conn: Conn, change_id: str) -> int:
    """Propose a change of NS as ``conn``'s user (pinned) and wait until it is stored."""
    change = ChangeProposed(namespace=NS, change_id=change_id, content=b'{"v": 1}\n')
    await call(conn.bus, store_api.PROPOSE.as_user(conn.user, NS), change)
    req = store_api.ChangeStatusRequest(namespace=NS, change_id=change_id)
    with anyio.fail_after(10):
        while True:
            st = await call(conn.bus, store_api.CHANGE_STATUS, req)
            if st.status == "stored" and st.version is not None:
                return st.version
            assert st.status != "rejected", st
            await anyio.sleep(0.05)


@pytest.fixture(scope="module")
def approvals(secured: SecuredNats) -> SecuredNats:
    async def setup() -> None:
        bus = await secured.service_bus()
        try:
            req = store_api.PolicySetRequest(
                policy=Policy(namespace=NS, require_approval=True), actor="test"
            )
            await call(bus, store_api.POLICY_SET, req)
        finally:
            await bus.close()

    anyio.run(setup)
    return secured


async def test_authorship_and_approval_come_from_the_nats_user(approvals: SecuredNats) -> None:
    s = approvals
    async with (
        connect_as(s, "ci") as ci,
        connect_as(s, "alice") as alice,
        connect_as(s, "bob") as bob,
    ):
        version = await draft_by(s, ci, "c-approve")
        info = (await version_info(s, version)).info
        assert (info.author, info.status) == ("ci", "draft")

        # CI approving, as anyone, by any subject: the server refuses it.
        approve = store_api.ApproveRequest(namespace=NS, version=version, approver="alice")
        pinned = store_api.APPROVE_AS
        for op in (store_api.APPROVE, pinned.as_user("alice"), pinned.as_user("ci")):
            await sent_nowhere(ci, op, approve)

        # An operator on the self-declared subject: refused by the server too.
        await sent_nowhere(bob, store_api.APPROVE, approve)

        # Bob on his own pinned subject, claiming to be Alice: the store says no (403).
        with pytest.raises(Forbidden, match="not the caller") as refused:
            await call(bob.bus, pinned.as_user("bob"), approve)
        assert "bob" in str(refused.value)
        assert (await version_info(s, version)).info.status == "draft"

        # Alice as herself: approved, and the record says so.
        mine = store_api.ApproveRequest(namespace=NS, version=version, approver="")
        reply = await call(alice.bus, pinned.as_user("alice"), mine)
        assert (reply.info.status, reply.info.approved_by) == ("approved", "alice")


async def test_a_change_is_authored_by_whoever_proposes_it(approvals: SecuredNats) -> None:
    s = approvals
    async with connect_as(s, "ci-pay") as ci_pay, connect_as(s, "ci") as ci:
        # Claiming someone else in the body, on one's own subject: 403, nothing queued.
        before = await last_seq(s, CFG_CHANGES.name)
        forged = ChangeProposed(namespace=NS, change_id="c-forged", content=b"{}", author="alice")
        with pytest.raises(Forbidden, match="not the caller"):
            await call(ci.bus, store_api.PROPOSE.as_user("ci", NS), forged)
        # A body for another namespace than the subject's: 403 too.
        elsewhere = ChangeProposed(namespace=OTHER_NS, change_id="c-else", content=b"{}")
        with pytest.raises(Forbidden, match="proposed on the subject"):
            await call(ci.bus, store_api.PROPOSE.as_user("ci", NS), elsewhere)
        assert await last_seq(s, CFG_CHANGES.name) == before

        # Another user's subject, or a namespace outside ci-pay's: refused by the server.
        change = ChangeProposed(namespace=NS, change_id="c-x", content=b"{}")
        for user, ns in (("ci", NS), ("ci-pay", OTHER_NS)):
            await sent_nowhere(ci_pay, store_api.PROPOSE.as_user(user, ns), change)
        assert await last_seq(s, CFG_CHANGES.name) == before

        # Its own namespace, as itself: stored, authored by ci-pay.
        version = await draft_by(s, ci_pay, "c-pay")
        assert (await version_info(s, version)).info.author == "ci-pay"


async def test_pinned_endpoints_need_the_identity_token(secured: SecuredNats) -> None:
    """A service (which may publish anywhere) calling a pinned op with a token that is not a
    name gets a 403 from the store, not an identity made of garbage."""
    async with connect_as(secured, "service") as svc:
        req = store_api.ApproveRequest(namespace=NS, version=1, approver="")
        # The client refuses such a name (as_user checks it), so the subject is made by hand.
        subject = store_api.APPROVE_AS.pattern.removesuffix("*") + "Not_A-Name"
        reply = await svc.nc.request(subject, encode(req), timeout=5.0)
        assert (reply.headers or {}).get("Nats-Service-Error-Code") == "403"
        assert "identity" in decode_api_error(reply.data).error


async def test_an_operator_backs_up_and_restores_page_by_page(secured: SecuredNats) -> None:
    """The pages after the first go to the replica holding the session, on a subject of its own
    (``export_<replica>``): the operator's permissions must reach it, though a NATS wildcard
    only stands for whole tokens."""
    ns, copy = "backups", "restored"
    async with connect_as(secured, "alice") as alice:
        for i in (1, 2):
            change = ChangeProposed(namespace=ns, change_id=f"b{i}", content=b'{"v": %d}' % i)
            await call(alice.bus, store_api.PROPOSE.as_user("alice", ns), change)
        status = store_api.ChangeStatusRequest(namespace=ns, change_id="b2")
        with anyio.fail_after(10):
            while (await call(alice.bus, store_api.CHANGE_STATUS, status)).status != "stored":  # noqa: ASYNC110
                await anyio.sleep(0.05)
        # One version a page: two pages, the second from the replica's own operation.
        page = await call(
            alice.bus, store_api.EXPORT, store_api.ExportRequest(namespace=ns, max_bytes=1)
        )
        assert not page.done and page.replica
        rest = await call(
            alice.bus,
            store_api.EXPORT_AT.at(page.replica),
            store_api.ExportRequest(namespace=ns, session=page.session, offset=1, max_bytes=1),
            timeout=5.0,
        )
        assert rest.done and [v.info.version for v in page.versions + rest.versions] == [1, 2]
        # Restored as another namespace, in two pages the same way.
        versions = [
            msgspec.structs.replace(v, info=msgspec.structs.replace(v.info, namespace=copy))
            for v in page.versions + rest.versions
        ]
        started = await call(
            alice.bus,
            store_api.IMPORT,
            store_api.ImportRequest(namespace=copy, versions=versions[:1]),
        )
        done = await call(
            alice.bus,
            store_api.IMPORT_AT.at(started.replica),
            store_api.ImportRequest(
                namespace=copy, session=started.session, versions=versions[1:], done=True
            ),
        )
        assert done.imported == 2
        assert alice.violations() == []


# -- known gaps: written as the property we want, marked until it holds --------------------------


async def test_an_agent_cannot_announce_an_apply_for_another_node(secured: SecuredNats) -> None:
    before = await last_seq(secured, CFG_EVENTS.name)
    async with connect_as(secured, "agent-n1") as n1:
        for subject in (subjects.node_applied(NS, "n2"), subjects.event(NS, "node.applied")):
            await publish_once(n1, subject, b'{"node": "n2"}')
            await n1.refused(subject, timeout=1.0)
    assert await last_seq(secured, CFG_EVENTS.name) == before


async def test_nobody_reads_replies_meant_for_others(secured: SecuredNats) -> None:
    async with connect_as(secured, "agent-n1") as n1:
        await n1.nc.subscribe("_INBOX.>")
        await n1.nc.flush()
        await n1.refused("_INBOX.>", timeout=1.0)


async def test_private_inboxes_close_the_reply_snooping(tmp_path: Path) -> None:
    """With ``private_inboxes`` a user subscribes only to ``_INBOX.<user>.>``; a client that
    connects with that inbox prefix still makes requests and reads streams."""
    s = SecuredNats(tmp_path, make_roster(), private_inboxes=True).start()
    try:
        await s.provision()
        async with connect_as(s, "ci") as snoop:
            await snoop.nc.subscribe("_INBOX.>")
            await snoop.nc.flush()
            await snoop.refused("_INBOX.>")
        async with connect_as(s, "ci", inbox_prefix="_INBOX.ci") as ci:
            info = await ci.nc.jetstream().stream_info(CFG_EVENTS.name)
            assert info.config.name == CFG_EVENTS.name
            assert ci.violations() == []
    finally:
        s.stop()


async def test_refusals_are_in_the_server_log_without_secrets(secured: SecuredNats) -> None:
    async with connect_as(secured, "ci") as ci:
        await publish_once(ci, subjects.txn_decision(NS, "logged"))
        await ci.refused(subjects.txn_decision(NS, "logged"))
    log = secured.log_text()
    assert "Publish Violation" in log
    for user in secured.roster.users.values():
        assert user.password not in log
