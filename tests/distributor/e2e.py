"""Support for the rollout end-to-end tests (tests/e2e/test_rollout*.py): a whole confbus of
real processes (tests/e2e/stack.py) with the distributor tuned for short tests, and readers
of what happened (events, decisions) that wait with deadlines, never with sleeps."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

from confbus.client import Client
from confbus.procs.proc import start_together
from confbus.runtime.bus import Bus
from confbus.schemas.api.dist import RolloutInfo
from confbus.schemas.events import AnyEvent, NodeApplied
from confbus.schemas.policy import Policy
from confbus.schemas.streams import CFG_TXN
from confbus.schemas.txn import Decision, decode_txn
from tests.e2e import helpers
from tests.e2e.stack import Stack, start_stack
from tests.helpers import eventually

T = TypeVar("T")

NS = "web"
HEARTBEAT_S = 0.3
# Fast enough for tests on a 2-core machine, slow enough not to call a busy agent dead.
DIST_ARGS = (
    "--lease-ttl",
    "1.5",
    "--catchup-base",
    "0.3",
    "--catchup-cap",
    "2",
    "--status-event-gap",
    "1",
    "--verdict-timeout",
    "3",
)


def content(version_tag: str) -> bytes:
    return f'{{"release": "{version_tag}", "pool": 16}}\n'.encode()


def start_distributor(stack: Stack, *extra: str, env: dict[str, str] | None = None) -> None:
    stack.start_service("distributor", *DIST_ARGS, *extra, env=env)


class StackOptions(TypedDict, total=False):
    """What ``rollout_stack`` starts besides the agents: ``services`` in order (default the
    version-store and the coordinator), the distributor after the agents (default yes), then
    the services of ``last``, each a package and its arguments; and each node's own agent
    arguments."""

    services: Sequence[str]
    distributor: bool
    last: Sequence[Sequence[str]]
    agent_args: Mapping[str, Sequence[str]]


def rollout_stack(root: Path, nodes: Sequence[str], **options: Unpack[StackOptions]) -> Stack:
    """The services, an agent on each of ``nodes`` (``HEARTBEAT_S``), the distributor, the
    ``last`` services."""
    stack = start_stack(root, services=options.get("services", ("version_store", "coordinator")))
    try:
        agent_args = options.get("agent_args", {})
        beats = ("--heartbeat-interval", str(HEARTBEAT_S))
        start_together([stack.agent(n, (NS,), *beats, *agent_args.get(n, ())).proc for n in nodes])
        if options.get("distributor", True):
            start_distributor(stack)
        for pkg, *args in options.get("last", ()):
            stack.start_service(pkg, *args)
    except BaseException:
        stack.stop()
        raise
    return stack


def stack_of(root: Path, nodes: Sequence[str], **options: Unpack[StackOptions]) -> Iterator[Stack]:
    """``rollout_stack`` as a fixture's body: stopped when the test is done."""
    stack = rollout_stack(root, nodes, **options)
    try:
        yield stack
    finally:
        stack.stop()


def config_file(directory: Path, tag: str) -> Path:
    """A config file holding ``content(tag)``."""
    path = directory / f"{tag}.json"
    path.write_bytes(content(tag))
    return path


async def publish_all(stack: Stack, directory: Path, *tags: str) -> None:
    """``confbus publish --wait`` of ``config_file(directory, tag)`` for each of ``tags`` in
    turn, each exiting 0."""
    for tag in tags:
        r = await stack.confbus("publish", NS, str(config_file(directory, tag)), "--wait")
        assert r.returncode == 0, (r.stdout, r.stderr)


async def set_policy(client: Client, **fields: Any) -> Policy:
    return await client.set_policy(Policy(namespace=NS, **fields), actor="test")


async def live_under_policy(stack: Stack, nodes: int, **fields: Any) -> None:
    """The namespace's policy set (``set_policy``), then ``nodes`` agents live: where a test
    that publishes through the CLI starts."""
    async with stack.client() as client:
        await set_policy(client, **fields)
        await stack.live(nodes)


async def read_all(bus: Bus, stream: str, subject: str) -> list[tuple[Any, bytes]]:
    """Every message of ``stream`` matching ``subject`` (with its metadata), in order."""
    return [(m.metadata, m.data) for m in await helpers.read_messages(bus, stream, subject)]


async def events(bus: Bus, ns: str = NS) -> list[AnyEvent]:
    return await helpers.events(bus, ns)


def of(evs: list[AnyEvent], kind: type[T]) -> list[T]:
    return [e for e in evs if isinstance(e, kind)]


async def decisions(bus: Bus, ns: str = NS) -> list[Decision]:
    out = []
    for _, data in await read_all(bus, CFG_TXN.name, f"cfg.txn.{ns}.*.decision"):
        d = decode_txn(data)
        if isinstance(d, Decision):
            out.append(d)
    return out


async def wait_event(
    bus: Bus, event_type: type[T], /, timeout: float = 30.0, ns: str = NS, **match: Any
) -> T:
    """The first event of ``event_type`` whose fields equal ``match``, once it is stored."""

    async def probe() -> T | None:
        for e in of(await events(bus, ns), event_type):
            if all(getattr(e, k) == v for k, v in match.items()):
                return e
        return None

    what = f"{event_type.__name__} {match}"
    return await eventually(probe, timeout=timeout, every=0.2, what=what)


async def wait_rollout(
    client: Client, version: int, timeout: float = 60.0, ns: str = NS
) -> RolloutInfo:
    return await client.wait_rollout(ns, version, timeout=timeout)


async def all_applied(
    bus: Bus, version: int, nodes: Sequence[str], timeout: float = 20.0
) -> list[NodeApplied]:
    """The ``node.applied`` events of ``version``, once every node of ``nodes`` has one (an
    agent writes its file, then announces it: a test reading files must wait for these)."""

    async def probe() -> list[NodeApplied] | None:
        found = [e for e in of(await events(bus), NodeApplied) if e.version == version]
        return found if {e.node for e in found} >= set(nodes) else None

    return await eventually(probe, timeout=timeout, every=0.2, what=f"v{version} applied")
