"""Revoking a signer, end to end, through the CLI a security officer runs: ``confbus keys
revoke`` in the namespace's policy (the store's check) and ``keys revoke-roots`` in an agent's
trust roots (the agent's own). The revoked key's signatures are refused from the stated
version on; versions it signed before stay valid; the revocation is in the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.client import ChangeRejected, Client
from confbus.runtime.bus import connect
from confbus.runtime.signing import SigningKey
from confbus.schemas.events import PolicyChanged
from confbus.schemas.policy import Policy
from tests.cli.procs import arun_confbus
from tests.e2e.helpers import events, switch
from tests.e2e.stack import Stack, stack_fixture
from tests.helpers import eventually
from tests.trust.support import make_keys, rule, write_roots

pytestmark = pytest.mark.anyio

NS = "web"
NODES = ("n1", "n2")
V1 = b'{"pool": 16}\n'
V2 = b'{"pool": 24}\n'


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, SigningKey]:
    return make_keys(tmp_path / "keys", "alice", "bob", "carol")


@pytest.fixture
def roots(tmp_path: Path, keys: dict[str, SigningKey]) -> Path:
    return write_roots(tmp_path / "roots.json", {NS: rule(keys, ("alice", "bob", "carol"), 2)})


@pytest.fixture
def stack(tmp_path: Path, roots: Path) -> Iterator[Stack]:
    services = ("version_store", "coordinator")
    trusting = ("--trust", str(roots))
    yield from stack_fixture(
        tmp_path, services, agents=NODES, namespaces=(NS,), agent_args=trusting
    )


async def test_a_revoked_signer_is_refused_from_its_version_on_and_its_past_stays_valid(
    stack: Stack, keys: dict[str, SigningKey], roots: Path, tmp_path: Path
) -> None:
    async with Client(stack.url) as client:
        await client.set_policy(
            Policy(namespace=NS, signing=rule(keys, ("alice", "bob", "carol"), 2))
        )
        v1 = await client.publish(
            NS, V1, format="json", change_id="v1", signing_keys=[keys["alice"], keys["bob"]]
        )
        assert v1.version == 1

        done = await arun_confbus(
            "--nats-url", stack.url, "keys", "revoke", NS, "bob", "--as", "sec"
        )
        assert done.returncode == 0, done.stderr
        assert "bob's signatures refused from v2 on" in done.stdout
        done = await arun_confbus(
            "keys", "revoke-roots", str(roots), NS, "bob", "--from-version", "2"
        )
        assert done.returncode == 0, done.stderr

        with pytest.raises(ChangeRejected) as refused:
            await client.publish(
                NS, V2, format="json", change_id="v2-bob", signing_keys=[keys["alice"], keys["bob"]]
            )
        assert "bob is revoked from v2 on" in refused.value.reason
        v2 = await client.publish(
            NS, V2, format="json", change_id="v2", signing_keys=[keys["alice"], keys["carol"]]
        )
        assert v2.version == 2

    bus = await connect(stack.url, name="test")
    try:
        # The audit log says who revoked whom, from which version.
        changed = [e for e in await events(bus, NS) if isinstance(e, PolicyChanged)]
        revocation = changed[-1]
        assert revocation.actor == "sec", revocation
        assert any(
            c.field == "signing.keys[bob].until_version" and c.after == "2"
            for c in revocation.changes
        ), revocation.changes

        # Agents restarted on the revoked roots: v1, signed by bob before, still switches.
        for n in NODES:
            stack.restart_agent(n)

        async def switched(version: int) -> bool:
            # An abort changes no file: a node still subscribing just misses the vote.
            return (await switch(bus, NS, version, NODES)).outcome == "commit"

        async def holding(content: bytes) -> bool:
            return all(stack.agents[n].read(NS) == content for n in NODES)

        await eventually(lambda: switched(1), what="v1, signed by bob before, committed")
        await eventually(lambda: holding(V1), what="v1 on every node")
        assert await switched(2)
        await eventually(lambda: holding(V2), what="v2 on every node")
    finally:
        await bus.close()
