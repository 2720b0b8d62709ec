"""Signed versions end to end: a real nats-server, version-store, coordinator and three agents
that hold their own trust roots (web: 2 of alice, bob, carol). Whatever the store holds or the
coordinator prepares, bytes not signed as the agents' roots require change no file."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from confbus.client import ChangeRejected, Client
from confbus.runtime.bus import Bus, connect
from confbus.runtime.signing import SigningKey
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.policy import Policy
from confbus.schemas.signing import Signature, Statement
from confbus.schemas.txn import Vote, decode_vote
from tests.e2e.helpers import switch
from tests.e2e.stack import Stack, stack_fixture
from tests.helpers import eventually
from tests.trust.support import make_keys, propose, rule, write_roots

pytestmark = pytest.mark.anyio

NS = "web"
NODES = ("n1", "n2", "n3")
GOOD = b'{"pool": 16}\n'


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, SigningKey]:
    return make_keys(tmp_path / "keys", "alice", "bob", "carol", "mallory", "rb")


@pytest.fixture
def stack(tmp_path: Path, keys: dict[str, SigningKey]) -> Iterator[Stack]:
    roots = write_roots(
        tmp_path / "roots.json", {NS: rule(keys, ("alice", "bob", "carol"), 2, ("rb",))}
    )
    services = ("version_store", "coordinator")
    trusting = ("--trust", str(roots))
    yield from stack_fixture(
        tmp_path, services, agents=NODES, namespaces=(NS,), agent_args=trusting
    )


def sign(keys: dict[str, SigningKey], names: tuple[str, ...], ns: str, version: int,
         content: bytes, change_id: str) -> list[Signature]:  # fmt: skip
    sha = hashlib.sha256(content).hexdigest()
    return [keys[n].sign(Statement(ns, version, sha, "json", change_id)) for n in names]


async def files_hold(stack: Stack, content: bytes) -> bool:
    return all(stack.agents[n].read(NS) == content for n in NODES)


async def signed_and_applied(bus: Bus, stack: Stack, keys: dict[str, SigningKey]) -> int:
    """Version 1, signed by alice and bob, on every node."""
    change = ChangeProposed(
        namespace=NS,
        change_id="good-1",
        content=GOOD,
        format="json",
        base=0,
        signatures=sign(keys, ("alice", "bob"), NS, 1, GOOD, "good-1"),
    )
    assert await propose(bus, change) == 1
    reply = await switch(bus, NS, 1, NODES)
    assert reply.outcome == "commit", reply
    await eventually(lambda: files_hold(stack, GOOD), what="v1 on every node")
    return 1


async def refused_everywhere(
    bus: Bus, stack: Stack, version: int, why: str, holding: bytes = GOOD
) -> None:
    """Every agent votes no naming ``why``, the switch aborts, and no file changes. (The
    coordinator decides at the first no, so the others' votes are heard on the bus.)"""
    votes: dict[str, Vote] = {}

    async def heard(msg: Msg) -> None:
        vote = decode_vote(msg.data)
        votes.setdefault(vote.node, vote)

    sub = await bus.nc.subscribe(f"cfg.txn.{NS}.*.vote.*", cb=heard)
    try:
        reply = await switch(bus, NS, version, NODES)
        assert reply.outcome == "abort", reply
        assert not [v for v in reply.votes if v.vote == "yes"], reply

        async def all_voted() -> bool:
            return len(votes) == len(NODES)

        await eventually(all_voted, what="every agent's vote")
    finally:
        await sub.unsubscribe()
    for vote in votes.values():
        assert vote.vote == "no" and vote.txid == reply.txid, vote
        assert why in vote.reason, vote
    assert await files_hold(stack, holding)


async def test_two_of_three_one_signature_is_refused_at_publish_two_pass(
    stack: Stack, keys: dict[str, SigningKey]
) -> None:
    async with Client(stack.url) as client:
        await client.set_policy(
            Policy(namespace=NS, signing=rule(keys, ("alice", "bob", "carol"), 2))
        )
        with pytest.raises(ChangeRejected) as refused:
            await client.publish(
                NS, GOOD, format="json", change_id="one", signing_keys=[keys["alice"]]
            )
        assert "1 of the 2 required signatures for v1" in refused.value.reason
        assert (await client.history(NS)) == []
        # A new change id: the refused one keeps its answer (idempotent retries).
        info = await client.publish(
            NS, GOOD, format="json", change_id="two", signing_keys=[keys["alice"], keys["carol"]]
        )
        assert info.version == 1
        stored = await client.get(NS, 1)
        assert sorted(s.signer for s in stored.signatures) == ["alice", "carol"]
        bus = await connect(stack.url, name="test")
        try:
            reply = await switch(bus, NS, info.version, NODES)
        finally:
            await bus.close()
        assert reply.outcome == "commit", reply
        await eventually(lambda: files_hold(stack, GOOD), what="v1 on every node")


async def test_unsigned_foreign_and_replayed_versions_change_no_file(
    stack: Stack, keys: dict[str, SigningKey]
) -> None:
    # The store's policy here has no signing rule — a compromised store, or an operator who
    # dropped the rule: it stores anything, and the coordinator prepares what it stores.
    bus = await connect(stack.url, name="test")
    try:
        await signed_and_applied(bus, stack, keys)
        evil = b'{"pool": 0, "backdoor": true}\n'

        v = await propose(bus, ChangeProposed(namespace=NS, change_id="unsigned", content=evil))
        assert isinstance(v, int)
        await refused_everywhere(bus, stack, v, "0 of the 2 required signatures")

        sigs = sign(keys, ("mallory", "alice"), NS, v + 1, evil, "mallory")
        change = ChangeProposed(namespace=NS, change_id="mallory", content=evil, signatures=sigs)
        v = await propose(bus, change)
        assert isinstance(v, int)
        await refused_everywhere(bus, stack, v, "mallory is not a trusted key")

        # Real signatures of alice and bob, made for these bytes in another namespace.
        sigs = sign(keys, ("alice", "bob"), "billing", v + 1, evil, "other-ns")
        change = ChangeProposed(namespace=NS, change_id="other-ns", content=evil, signatures=sigs)
        v = await propose(bus, change)
        assert isinstance(v, int)
        await refused_everywhere(bus, stack, v, "does not cover these bytes in web")

        # An old signed version replayed as new: v1's bytes and v1's own signatures. First the
        # nodes move on to a newer signed version, then the old one comes back as the newest.
        newer = b'{"pool": 24}\n'
        nv = v + 1
        change = ChangeProposed(
            namespace=NS,
            change_id="good-2",
            content=newer,
            signatures=sign(keys, ("bob", "carol"), NS, nv, newer, "good-2"),
        )
        assert await propose(bus, change) == nv
        assert (await switch(bus, NS, nv, NODES)).outcome == "commit"
        await eventually(lambda: files_hold(stack, newer), what="the newer version everywhere")
        old = sign(keys, ("alice", "bob"), NS, 1, GOOD, "good-1")
        replay = ChangeProposed(namespace=NS, change_id="replay", content=GOOD, signatures=old)
        v = await propose(bus, replay)
        assert isinstance(v, int)
        await refused_everywhere(bus, stack, v, f"signed as v1, not as v{v}", holding=newer)
    finally:
        await bus.close()


async def test_a_tampered_store_row_is_refused_by_every_agent(
    stack: Stack, keys: dict[str, SigningKey], tmp_path: Path
) -> None:
    bus = await connect(stack.url, name="test")
    try:
        await signed_and_applied(bus, stack, keys)
        change = ChangeProposed(
            namespace=NS,
            change_id="good-2",
            content=b'{"pool": 20}\n',
            base=1,
            signatures=sign(keys, ("alice", "carol"), NS, 2, b'{"pool": 20}\n', "good-2"),
        )
        assert await propose(bus, change) == 2
        # Someone with the store's disk rewrites version 2: other bytes, and a sha256 and size
        # that match them, so the store and the coordinator see a consistent row.
        evil = b'{"pool": 0, "backdoor": true}\n'
        sha = hashlib.sha256(evil).hexdigest()
        db = sqlite3.connect(tmp_path / "store.db", timeout=10)
        with db:
            db.execute("INSERT INTO blobs VALUES (?, ?)", (sha, evil))
            db.execute(
                "UPDATE versions SET sha256 = ?, size = ? WHERE namespace = ? AND version = 2",
                (sha, len(evil), NS),
            )
        db.close()
        await refused_everywhere(bus, stack, 2, "does not cover these bytes in web")
    finally:
        await bus.close()
