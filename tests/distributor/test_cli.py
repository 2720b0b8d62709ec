"""``confbus rollout``, ``status``, ``pause``, ``resume``, ``abort`` as a user runs them: the real
CLI process against the in-process harness (real nats-server, coordinator, distributor,
agents)."""

from __future__ import annotations

import json

import pytest

from confbus.schemas.policy import Policy
from tests.cli.procs import arun_confbus
from tests.distributor.harness import NS, Harness
from tests.helpers import eventually

pytestmark = pytest.mark.anyio


async def confbus(h: Harness, *args: str) -> tuple[int, str, str]:
    done = await arun_confbus("--nats-url", h.url, *args)
    return done.returncode, done.stdout, done.stderr


async def test_rollout_status_and_controls(h: Harness) -> None:
    code, _, err = await confbus(h, "rollout", NS)
    assert code == 1 and "no rollout yet" in err

    h.store.policies[NS] = Policy(namespace=NS, bake_s=30.0)
    for n in ("a1", "a2"):
        await h.start_agent(n, labels={"dc": "eu1"})
    v1 = await h.store.publish(NS, strategy="canary:1")

    async def baking() -> bool:
        rec = await h.rollout()
        return rec is not None and bool(rec.waves) and rec.waves[0].state == "baking"

    await eventually(baking, what="canary baking")

    code, out, _ = await confbus(h, "rollout", NS)
    assert code == 0
    assert f"{NS} v{v1}" in out and "canary:1" in out and "running" in out
    assert "0: baking" in out and "1: pending" in out and "a1" in out

    code, out, _ = await confbus(h, "rollout", NS, "--json")
    doc = json.loads(out)
    assert doc["version"] == v1 and doc["state"] == "running" and doc["outbox"] == []
    assert [w["state"] for w in doc["waves"]] == ["baking", "pending"]

    code, out, _ = await confbus(h, "pause", NS, "--reason", "checking", "--as", "ops")
    assert code == 0 and "paused" in out
    code, _, err = await confbus(h, "pause", NS)
    assert code == 1 and "is paused" in err
    code, out, _ = await confbus(h, "resume", NS)
    assert code == 0 and "running" in out
    code, out, _ = await confbus(h, "abort", NS, "--reason", "wrong file", "--as", "ops")
    assert code == 0 and "failed" in out
    code, out, _ = await confbus(h, "rollout", NS)
    assert "aborted by ops: wrong file" in out and "skipped" in out

    code, out, _ = await confbus(h, "status", NS)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{NS}: production none")
    assert any(line.startswith("a1 ") and "live" in line and f"v{v1}" in line for line in lines)
    assert any(line.startswith("a2 ") and "live" in line for line in lines)

    code, out, _ = await confbus(h, "status", NS, "--json")
    doc = json.loads(out)
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert nodes["a1"]["applied_version"] == v1 and nodes["a1"]["target_version"] == v1
    assert nodes["a2"]["applied_version"] is None and nodes["a2"]["labels"] == {"dc": "eu1"}
    assert doc["rollout"]["state"] == "failed"
