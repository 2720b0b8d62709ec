"""A CLI step and an agent load only what they run (the start-up time and the memory of
``benchmarks/results/results.md``): ``confbus publish --wait``, a CI step's whole process,
imports neither the serving side of the request/reply APIs (nats.micro, the catalog of every
service's operations) nor the reading of the past (``Client.status_at``, ``why``); an agent that
joined the bus and applied a version imports no prometheus_client (its figures are its events
and heartbeats), no serving side, nothing that signs or checks documents."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from confbus.procs.agent import agent_argv
from confbus.procs.proc import Proc
from tests.cli.test_startup import imported_by
from tests.distributor.e2e import NS, content, start_distributor
from tests.e2e.stack import Agent, Stack, start_stack

pytestmark = pytest.mark.anyio

# Runs `confbus agent ARGS`, then writes every module it imported to argv[1] as it exits.
AGENT_DRIVER = """
import sys
out = sys.argv[1]
from confbus.agent.main import main
try:
    sys.exit(main(sys.argv[2:]))
finally:
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
"""

SERVING_SIDE = {"nats.micro", "confbus.schemas.api.catalog"}
NEVER_IN_PUBLISH = SERVING_SIDE | {
    "confbus.client._reconstruct",
    "confbus.client._fleet",
    "confbus.schemas.fleet",
    "confbus.schemas.fold",
    "prometheus_client",
    "cryptography",
    "jsonschema",
    "yaml",
    "tomllib",
}
NEVER_IN_AGENT = SERVING_SIDE | {
    "prometheus_client",
    "confbus.agent.health",  # the app's health is forwarded with --health-url only
    "confbus.runtime.scrape",
    "shlex",  # --validate and --on-change commands only
    "http.server",
    "cryptography",
    "jsonschema",
    "yaml",
}


def start_listed_agent(stack: Stack, node: str, listing: Path) -> Agent:
    """A real agent process that writes the modules it imported to ``listing`` when it exits."""
    live = stack.root / "nodes" / node / "etc" / f"{NS}.conf"
    live.parent.mkdir(parents=True, exist_ok=True)
    state = stack.root / "nodes" / node / "state"
    driver = [sys.executable, "-c", AGENT_DRIVER, str(listing)]
    argv = agent_argv(stack.url, node, {NS: live}, state, heartbeat_interval=0.3, program=driver)
    agent = Agent(node, {NS: live}, Proc(f"agent-{node}", argv, stack.logs).start())
    stack.agents[node] = agent
    return agent


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("lean")
    s = start_stack(root, services=("version_store", "coordinator"))
    try:
        s.start_agent("n1", (NS,), "--heartbeat-interval", "0.3")
        start_listed_agent(s, "n2", root / "agent-modules.txt")
        start_distributor(s)
        yield s
    finally:
        s.stop()


async def test_publish_wait_imports_no_serving_side_and_no_past(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.live(2)
    f = tmp_path / "v1.json"
    f.write_bytes(content("v1"))
    args = ("--nats-url", stack.url, "publish", NS, str(f), "--wait", "--timeout", "60")

    def publish() -> tuple[subprocess.CompletedProcess[str], set[str]]:
        return imported_by(tmp_path, *args)

    done, modules = await anyio.to_thread.run_sync(publish)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "production on 2 node(s)" in done.stdout, done.stdout
    assert {"confbus.client._rollouts", "nats.js"} <= modules  # the probe sees what ran
    assert not modules & NEVER_IN_PUBLISH, sorted(modules & NEVER_IN_PUBLISH)


async def test_an_agent_that_applied_a_version_imports_no_metrics_library(stack: Stack) -> None:
    async with stack.client() as client:
        await stack.live(2)
        info = await client.publish(NS, content("v2"), change_id="lean-v2")
        rollout = await client.wait_rollout(NS, info.version, timeout=60)
    assert rollout.state == "completed", rollout
    agent = stack.agents["n2"]
    assert agent.read(NS) == content("v2")
    assert agent.proc.stop() == 0
    modules = set((stack.root / "agent-modules.txt").read_text().split())
    assert "confbus.agent.node" in modules  # the probe sees what ran
    assert not modules & NEVER_IN_AGENT, sorted(modules & NEVER_IN_AGENT)
