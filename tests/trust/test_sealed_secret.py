"""A sealed secret namespace end to end: the publisher encrypts, the store, CFG_TXN, a backup
and the dead letters hold only ciphertext, the agents holding the KEK write the plaintext."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.client import ChangeRejected, Client
from confbus.runtime.bus import connect
from confbus.runtime.sealing import new_data_key
from confbus.schemas import subjects
from confbus.schemas.changes import ChangeProposed, msg_id
from confbus.schemas.policy import Policy
from confbus.schemas.streams import CFG_DLQ
from tests.cli.procs import run_confbus
from tests.e2e.helpers import switch
from tests.e2e.stack import Stack, stack_fixture
from tests.helpers import eventually
from tests.security.support import leaks
from tests.trust.support import make_kek

pytestmark = pytest.mark.anyio

NS = "vault"
NODES = ("n1", "n2")
MARKER = "MARKER-sealed-5ec7e7c0ffee"
CONTENT = b'{"db_password": "' + MARKER.encode() + b'"}\n'


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    kek_path, _ = make_kek(tmp_path / "keys")
    services = ("version_store", "coordinator")
    sealed = ("--kek", str(kek_path))
    yield from stack_fixture(tmp_path, services, agents=NODES, namespaces=(NS,), agent_args=sealed)


def haystacks(root: Path) -> dict[str, bytes]:
    """Every file the stack wrote, but the nodes' own (the live file and its history hold the
    plaintext by design: the app reads it)."""
    nodes = root / "nodes"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and nodes not in p.parents and p.suffix != ".kek"
    }


async def test_only_ciphertext_leaves_the_publisher(stack: Stack, tmp_path: Path) -> None:
    kek_path, kek = make_kek(tmp_path / "keys2", "ops")
    keks = {kek.id: kek}
    async with Client(stack.url) as client:
        await client.set_policy(Policy(namespace=NS, secret=True, data_keys=[new_data_key(kek)]))
        # Plaintext is refused: it would sit in the store and CFG_TXN.
        with pytest.raises(ChangeRejected) as refused:
            await client.publish(NS, CONTENT, format="json", change_id="plain")
        assert "must be encrypted before it leaves the publisher" in refused.value.reason
        info = await client.publish(NS, CONTENT, format="json", change_id="c1", keks=keks)
        assert info.version == 1
        stored = await client.get(NS, 1)
        assert stored.content is not None and MARKER.encode() not in stored.content
        # The agents were started with another KEK: they cannot open it, and say so.
        bus = await connect(stack.url, name="test")
        try:
            reply = await switch(bus, NS, 1, NODES)
            assert reply.outcome == "abort", reply
            assert any("cannot open the sealed content" in v.reason for v in reply.votes), reply
            for n in NODES:
                stack.agents[n].proc.stop()
                stack.agents[n].proc.argv[-1] = str(kek_path)
                stack.agents[n].proc.start()
            reply = await switch(bus, NS, 1, NODES)
            assert reply.outcome == "commit", reply

            async def applied() -> bool:
                return all(stack.agents[n].read(NS) == CONTENT for n in NODES)

            await eventually(applied, what="the plaintext on every node")
            # A sealed change that cannot succeed (its body names another namespace than its
            # subject) is dead-lettered: with no content at all.
            before = (await bus.js.stream_info(CFG_DLQ.name)).state.messages
            bad = ChangeProposed(namespace="other", change_id="dlq", content=stored.content)
            await bus.publish(subjects.change(NS), bad, msg_id=msg_id(NS, "dlq"))

            async def dead_lettered() -> bool:
                return (await bus.js.stream_info(CFG_DLQ.name)).state.messages > before

            await eventually(dead_lettered, timeout=20, what="the bad change dead-lettered")
        finally:
            await bus.close()
    backup = tmp_path / "vault.backup"
    done = run_confbus("--nats-url", stack.url, "backup", NS, "--out", str(backup))
    assert done.returncode == 0, done.stderr
    assert backup.stat().st_size > 0
    # `confbus show` opens it with the KEK only.
    shown = run_confbus("--nats-url", stack.url, "show", NS, "1")
    assert shown.returncode != 0 and "give --kek" in shown.stderr
    shown = run_confbus("--nats-url", stack.url, "show", NS, "1", "--kek", str(kek_path))
    assert shown.returncode == 0 and shown.stdout.encode() == CONTENT
    files = haystacks(tmp_path)
    assert any(name.startswith("nats/") for name in files)
    assert "store.db" in files and "vault.backup" in files
    assert leaks(files, [MARKER]) == []
    # ...and the search would see it: the nodes' live files hold it.
    assert leaks({"n1": stack.agents["n1"].read(NS) or b""}, [MARKER])
