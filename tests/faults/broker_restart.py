"""The broker dies under ``confbus up`` and comes back: how soon is the fleet switching again?

``confbus up`` (single server, or ``--ha``) with agents as real processes writing real files.
A scenario SIGKILLs a nats-server — the embedded one, which ``up`` restarts on the same port and
store, or in ``--ha`` the node most agents are connected to — and runs ``confbus publish --wait``
as CI would. What it measures is *kill → applied*: from the kill to the last agent's
``node.applied`` event of the new version (stream time, the machine's wall clock).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from confbus.cli.client import Client
from confbus.schemas.events import NodeApplied
from tests.cli.procs import Proc, arun_confbus, confbus_argv
from tests.ha.hastack import READY_TIMEOUT, HaStack

NS = "web"


def content(label: str) -> bytes:
    return json.dumps({"release": label}).encode()


def start_up(data_dir: Path, *args: str) -> HaStack:
    """``confbus up`` (``--ha`` among ``args`` for the cluster), ready."""
    argv = [*confbus_argv(), "up", "--data-dir", str(data_dir), "--nats-port", "0", *args]
    stack = HaStack(Proc(argv), data_dir.resolve())
    try:
        stack.line = stack.proc.out.wait_for("confbus ready", READY_TIMEOUT)
    except AssertionError as exc:
        stack.cleanup()
        raise AssertionError(f"{exc}\nstderr:\n{stack.proc.err.text()}") from None
    return stack


def start_agents(stack: HaStack, root: Path, n: int) -> list[str]:
    nodes = [f"n{i}" for i in range(1, n + 1)]
    for node in nodes:
        stack.start_agent(node, NS, root)
    return nodes


async def publish(stack: HaStack, root: Path, label: str, *, timeout: float = 90.0) -> str:
    """``confbus publish web FILE --wait``; returns its stdout, asserting exit 0."""
    path = root / f"{label}.json"
    path.write_bytes(content(label))
    done = await arun_confbus(
        "--nats-url", stack.url, "publish", NS, str(path), "--wait", "--timeout", str(timeout),
        timeout=timeout + 30,
    )  # fmt: skip
    assert done.returncode == 0, f"publish {label}: exit {done.returncode}\n{done.stderr}"
    return done.stdout


def on_every_node(stack: HaStack, nodes: Sequence[str], label: str) -> None:
    want = content(label)
    wrong = {n: stack.agents[n].read() for n in nodes if stack.agents[n].read() != want}
    assert not wrong, f"not on {label}: {wrong}"


async def applied_at(url: str, version: int, nodes: Sequence[str], since: datetime) -> datetime:
    """When the last of ``nodes`` announced ``version`` applied (the stream's time)."""
    seen: dict[str, datetime] = {}
    async with Client(url, name="test-applied") as client:
        async for item in client.events(f"cfg.event.{NS}.node.applied.>", since=since):
            ev = item.event
            if isinstance(ev, NodeApplied) and ev.version == version and item.time is not None:
                seen.setdefault(ev.node, item.time)
    missing = set(nodes) - set(seen)
    assert not missing, f"no node.applied for v{version} from {sorted(missing)}"
    return max(seen.values())


def version_of(stdout: str) -> int:
    """``web v7 sha256=… production on 3 node(s) …`` → 7."""
    first = stdout.split()
    assert len(first) > 1 and first[0] == NS and first[1].startswith("v"), stdout
    return int(first[1][1:])


# -- the faults --------------------------------------------------------------------------------


def kill_embedded(stack: HaStack) -> None:
    """SIGKILL the nats-server ``confbus up`` runs (it restarts it)."""
    os.kill(int(stack.state()["nats_pid"]), signal.SIGKILL)


def busiest_node(stack: HaStack, nodes: Sequence[str]) -> str:
    """The nats-server (``nats-1``..``nats-3``) that most of the agents are connected to."""
    counts: dict[str, int] = {}
    for i, monitor in enumerate(stack.state()["cluster"]["monitor"], start=1):
        with urllib.request.urlopen(f"{monitor}/connz?limit=1024", timeout=5) as r:
            conns = json.loads(r.read())["connections"]
        names = {c.get("name", "") for c in conns}
        counts[f"nats-{i}"] = sum(1 for n in nodes if f"confbus-agent-{n}" in names)
    return max(sorted(counts), key=lambda k: counts[k])


async def kill_then_publish(
    stack: HaStack,
    root: Path,
    nodes: Sequence[str],
    label: str,
    kill: str | None = None,
    after_s: float = 1.0,
) -> float:
    """Kill the broker (the embedded one, or the cluster node named by ``kill``), publish
    ``label`` with ``--wait`` ``after_s`` later; return kill → applied on every node."""
    kill_wall = datetime.now(UTC)
    kill_at = time.monotonic()
    if kill is None:
        kill_embedded(stack)
    else:
        os.kill(stack.pid(kill), signal.SIGKILL)
    # The scenario's schedule (a CI step that starts a second later), not a synchronisation.
    await anyio.sleep(max(0.0, kill_at + after_s - time.monotonic()))
    out = await publish(stack, root, label)
    on_every_node(stack, nodes, label)
    done = await applied_at(stack.url, version_of(out), nodes, kill_wall - timedelta(seconds=5))
    return (done - kill_wall).total_seconds()
