"""``confbus why`` after a rollback an Alertmanager alert asked for names the alert and the
rollback's batch, each step with the sequence of its event; ``status --at`` and ``diff-fleet``
show the fleet before and after. Every service real (with the historian), three agents writing
real files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.client import Client
from confbus.runtime.http import http_post
from confbus.schemas import subjects
from confbus.schemas.events import NodeApplied, RollbackBatch, RollbackCompleted, RollbackStarted
from confbus.schemas.policy import Policy, RollbackPolicy
from confbus.schemas.streams import CFG_EVENTS
from tests.cli.procs import arun_confbus
from tests.distributor.e2e import stack_of
from tests.e2e.stack import Stack
from tests.e2e.test_rollback_alertmanager import webhook
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NS = "web"
NODES = ("n1", "n2", "n3")
GOOD = b'{"pool": 10}\n'
BAD = b'{"pool": 0}\n'


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    services = ("version_store", "coordinator", "health_watcher", "rollbacker")
    historian = ("historian", "--every", "5", "--idle", "0.2")
    yield from stack_of(tmp_path, NODES, services=services, last=[historian])


async def seqs_of(client: Client, kind: type) -> dict[int, object]:
    out: dict[int, object] = {}
    async for item in client.events(subjects.events_of(NS)):
        if isinstance(item.event, kind):
            out[item.seq] = item.event
    return out


async def test_why_a_rolled_back_node_names_the_alert_and_the_batch(stack: Stack) -> None:
    watcher = stack.services["health_watcher"].ready
    assert watcher is not None
    url = stack.url
    async with Client(url) as client:
        await client.set_policy(
            Policy(namespace=NS, rollback=RollbackPolicy(cooldown_s=0.0, strategy="batches:2")),
            actor="test",
        )
        v1 = await client.publish(NS, GOOD, change_id="good", author="alice", message="pool 10")
        assert (await client.wait_rollout(NS, v1.version, timeout=60)).state == "completed"
        await client.mark_good(NS, v1.version, actor="operator", reason="checked by hand")
        v2 = await client.publish(NS, BAD, change_id="bad", author="bob", message="pool 0")
        assert (await client.wait_rollout(NS, v2.version, timeout=60)).state == "completed"
        before = (await client.bus.js.stream_info(CFG_EVENTS.name)).state.last_seq

        status, reply = await http_post(
            "127.0.0.1", int(watcher["alertmanager_port"]), "/alertmanager", webhook("firing")
        )
        assert status == 200, reply

        async def rolled_back() -> bool:
            return bool(await seqs_of(client, RollbackCompleted))

        await eventually(rolled_back, timeout=60, what="rollback.completed")
        started = next(iter((await seqs_of(client, RollbackStarted)).items()))
        rb_seq, rb = started
        assert isinstance(rb, RollbackStarted) and rb.alert_id
        v3 = rb.new_version
        applied = {
            e.node: seq
            for seq, e in (await seqs_of(client, NodeApplied)).items()
            if isinstance(e, NodeApplied) and e.version == v3
        }
        batches = {
            n: (e.batch, seq)
            for seq, e in (await seqs_of(client, RollbackBatch)).items()
            if isinstance(e, RollbackBatch)
            for n in e.nodes
        }
        # Each batch names its transactions, so why traces an apply to its batch exactly.
        for e in (await seqs_of(client, RollbackBatch)).values():
            assert isinstance(e, RollbackBatch) and e.txids, e
        answer = await client.why(NS, "n3")

    for node in NODES:
        done = await arun_confbus("--nats-url", url, "why", NS, node)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        batch, batch_seq = batches[node]
        expected = [
            rf"#{applied[node]}\s+apply\s+{node} applied v{v3} ",
            rf"#\d+\s+transaction\s+txn \S+ committed v{v3} at epoch \d+",
            rf"#{batch_seq}\s+batch\s+batch {batch + 1}/2 of rollback {rb.rollback_id}",
            rf"#{rb_seq}\s+rollback\s+rollback {rb.rollback_id} from v{v2.version} to the bytes "
            rf"of v{v1.version} as v{v3}",
            rf"#\d+\s+version\s+v{v3} created .*with the bytes of v{v1.version} \(a rollback\)",
            rf"#{rb_seq}\s+alert\s+alert {re.escape(rb.alert_id or '')} ",
        ]
        assert len(lines) > len(expected), done.stdout
        for pattern, line in zip(expected, lines[1:], strict=False):
            assert re.search(pattern, line), (pattern, done.stdout)

    # The Python client gives the same chain.
    assert [s.kind for s in answer.steps[:6]] == [
        "apply", "transaction", "batch", "rollback", "version", "alert",
    ]  # fmt: skip

    # Before the alert every node ran the bad version; now the rollback's, with the good bytes.
    done = await arun_confbus("--nats-url", url, "status", NS, "--at", str(before), "--json")
    assert done.returncode == 0, done.stderr
    then = json.loads(done.stdout)
    assert {n["node"]: n["version"] for n in then["nodes"]} == dict.fromkeys(NODES, v2.version)
    for node in NODES:
        assert stack.agents[node].read(NS) == GOOD

    done = await arun_confbus("--nats-url", url, "diff-fleet", NS, "--from", str(before))
    assert done.returncode == 0, done.stderr
    assert "3 node(s) changed, 0 unchanged" in done.stdout
    for node in NODES:
        assert re.search(
            rf"^  {node}\s+v{v2.version} → v{v3}\s.*via batch \d/2 of rollback", done.stdout, re.M
        ), done.stdout
    assert f"rollback {rb.rollback_id}: v{v2.version} → bytes of v{v1.version}" in done.stdout
