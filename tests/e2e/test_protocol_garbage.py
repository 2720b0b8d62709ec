"""Duplicate, out-of-order, forged-looking and garbage protocol messages change nothing:
agents keep their files, nobody crashes, nothing stays in doubt."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confbus.runtime.api import call
from confbus.runtime.bus import Bus, connect
from confbus.runtime.codec import encode
from confbus.schemas import subjects
from confbus.schemas.api import txn as txn_api
from confbus.schemas.streams import CFG_TXN
from confbus.schemas.txn import Decision, Prepare
from tests.e2e.helpers import agent_status, store_version, switch, txn_records
from tests.e2e.stack import Stack, start_stack
from tests.helpers import eventually

NS = "web"
NODES = ("n1", "n2")
GOOD = b'{"good": 1}\n'


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("garbage")
    s = start_stack(root, services=("version_store",))
    try:
        s.start_service("coordinator", "--vote-timeout", "1")
        s.start_agents(NODES)

        async def setup() -> None:
            bus = await connect(s.url, name="setup")
            try:
                v = await store_version(bus, NS, GOOD, "good")
                assert (await switch(bus, NS, v, NODES)).outcome == "commit"
            finally:
                await bus.close()

        anyio.run(setup)
        yield s
    finally:
        s.stop()


txids = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,20}\Z")
garbage = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda d: msgspec.json.encode(d),
        st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "txid",
                    "namespace",
                    "version",
                    "sha256",
                    "epoch",
                    "outcome",
                    "participants",
                    "content",
                    "node",
                    "vote",
                ]
            ),
            st.one_of(
                st.none(),
                st.integers(),
                st.text(max_size=20),
                st.lists(st.text(max_size=5), max_size=3),
            ),
            max_size=8,
        ),
    ),
)


async def _assault(stack: Stack, kind: str, txid: str, data: bytes) -> None:
    bus = await connect(stack.url, name="attacker")
    try:
        if kind == "prepare":
            await bus.js.publish(subjects.txn_prepare(NS, txid), data)
        elif kind == "decision":
            await bus.js.publish(subjects.txn_decision(NS, txid), data)
        elif kind == "vote":
            try:
                await bus.nc.request(subjects.txn_vote(NS, txid, "n1"), data, timeout=0.5)
            except Exception:
                pass
        elif kind == "api":
            for op in txn_api.OPERATIONS:
                if op.per_replica:
                    continue  # answered by one replica only, under a name of its own
                reply = await bus.nc.request(op.address, data, timeout=5)
                assert (
                    reply.headers is None
                    or "Nats-Service-Error-Code" in reply.headers
                    or reply.data
                )
        elif kind == "forged_prepare":
            # Well-formed, but no coordinator ever started it: agents stage it, hear no
            # decision, ask — and the answer is presumed abort.
            forged = forged_prepare(txid, 99, b'{"evil": 1}\n', timeout_s=0.5)
            await publish_prepare_heard_by_all(bus, forged)
        elif kind == "replay":
            # Duplicates of the real records, and a commit for a txid that has no prepare.
            # Only the original pair: copying every record each time would double the
            # stream per example.
            for rec in (await txn_records(bus, NS))[:2]:
                subj = (
                    subjects.txn_prepare if isinstance(rec, Prepare) else subjects.txn_decision
                )(NS, rec.txid)
                await bus.js.publish(subj, encode(rec))
                if isinstance(rec, Decision):
                    commit = msgspec.structs.replace(
                        rec, txid=txid, outcome="commit", version=rec.version + 100
                    )
                    await bus.js.publish(subjects.txn_decision(NS, txid), encode(commit))
    finally:
        await bus.close()


def forged_prepare(txid: str, version: int, content: bytes, *, timeout_s: float) -> Prepare:
    """A well-formed prepare for every node that no coordinator ever started."""
    return Prepare(
        txid=txid,
        namespace=NS,
        version=version,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        format="json",
        participants=list(NODES),
        epoch=1,
        timeout_s=timeout_s,
    )


async def publish_prepare_heard_by_all(bus: Bus, prepare: Prepare) -> None:
    """Publish ``prepare`` and return once every agent has voted on it (each vote answered at
    once, with bytes that are no ack). Without this wait the check that follows could see an
    agent settled before it had even read the prepare, and the next example (or test) would
    meet that agent holding it: busy, it refuses the next prepare."""
    votes = await bus.nc.subscribe(subjects.txn_votes(NS, prepare.txid))
    try:
        await bus.js.publish(subjects.txn_prepare(NS, prepare.txid), encode(prepare))
        voters: set[str] = set()
        with anyio.fail_after(20):
            while voters != set(NODES):
                msg = await votes.next_msg(timeout=None)
                voters.add(msg.subject.rsplit(".", 1)[1])
                await msg.respond(b"")
    finally:
        await votes.unsubscribe()


async def _unchanged(stack: Stack) -> None:
    bus = await connect(stack.url, name="checker")
    try:
        for n in NODES:
            agent = stack.agents[n]
            assert agent.proc.alive(), agent.proc.log_tail()
            assert agent.read(NS) == GOOD

            async def not_in_doubt(
                port: int = agent.proc.ready["http_port"],  # type: ignore[index]
            ) -> bool:
                ns = (await agent_status(port))["namespaces"]
                assert isinstance(ns, dict)
                return ns[NS]["in_doubt"] is None and ns[NS]["applied_version"] == 1

            await eventually(not_in_doubt, timeout=20, what=f"{n} settled")
        reply = await call(bus, txn_api.IN_DOUBT, txn_api.InDoubtRequest())
        assert reply.txns == []
    finally:
        await bus.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["prepare", "decision", "vote", "api", "replay", "forged_prepare"]),
    txid=txids,
    data=garbage,
)
def test_protocol_garbage_changes_nothing(stack: Stack, kind: str, txid: str, data: bytes) -> None:
    anyio.run(_assault, stack, kind, txid, data)
    anyio.run(_unchanged, stack)
    assert all(p.alive() for p in stack.services.values())


def test_stream_still_readable_after_the_assault(stack: Stack) -> None:
    async def check() -> None:
        bus = await connect(stack.url, name="reader")
        try:
            info = await bus.js.stream_info(CFG_TXN.name)
            assert info.state.messages > 0
        finally:
            await bus.close()

    anyio.run(check)


def test_forged_prepare_is_held_in_doubt_then_presumed_aborted(stack: Stack) -> None:
    async def run() -> None:
        bus = await connect(stack.url, name="forger")
        try:
            forged = forged_prepare("forged-1", 50, b'{"evil": 2}\n', timeout_s=3.0)
            await publish_prepare_heard_by_all(bus, forged)
            port = stack.agents["n1"].proc.ready["http_port"]  # type: ignore[index]

            async def in_doubt(want: str | None) -> bool:
                ns = (await agent_status(port))["namespaces"]
                assert isinstance(ns, dict)
                return bool(ns[NS]["in_doubt"] == want)

            await eventually(lambda: in_doubt("forged-1"), what="n1 holds the forged prepare")
            assert stack.agents["n1"].read(NS) == GOOD  # in doubt, it serves the old file
            await eventually(lambda: in_doubt(None), timeout=20, what="presumed abort")
            assert stack.agents["n1"].read(NS) == GOOD
        finally:
            await bus.close()

    anyio.run(run)
