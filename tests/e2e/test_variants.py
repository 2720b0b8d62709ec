"""Variants end to end (docs/design.md §2.6): six agent processes in two datacenters and two
tiers, real nats-server, version-store, coordinator, distributor and rollbacker, and the real
CLI. One version, different bytes per node label, switched all or nothing."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from confbus.runtime.kv import StateKV
from confbus.schemas.events import (
    AnyEvent,
    NodeApplied,
    NodeCatchUp,
    NodeDrift,
    RolloutFailed,
    TxnAborted,
    TxnCommitted,
)
from confbus.schemas.state import decode_node, node_key
from confbus.schemas.streams import CFG_STATE
from confbus.schemas.txn import Prepare, decode_txn
from tests.cli.procs import arun_confbus_bytes
from tests.distributor.e2e import NS, events, of, read_all, set_policy, stack_of
from tests.e2e.stack import Stack
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

LABELS = {
    "n1": "dc=eu1,tier=web",
    "n2": "dc=eu1,tier=web",
    "n3": "dc=eu1,tier=db",
    "n4": "dc=us1,tier=web",
    "n5": "dc=us1,tier=db",
    "n6": "dc=us1,tier=db",
}
SCHEMA = {"type": "object", "properties": {"workers": {"type": "integer", "maximum": 32}}}
# Refuses bytes that point at the eu1 database: only the dc=eu1 variants do.
SERVICES = ("version_store", "coordinator", "rollbacker")
REFUSE_EU1 = (
    "sh -c 'if grep -q db.eu1 \"$CONFBUS_STAGED\"; then echo eu1 db refused >&2; exit 1; fi'"
)


def agent_args(refusing: str | None = None) -> dict[str, list[str]]:
    """Each node's labels, and for ``refusing`` a validate command that refuses eu1's db."""
    args = {
        n: [a for pair in labels.split(",") for a in ("--label", pair)]
        for n, labels in LABELS.items()
    }
    if refusing:
        args[refusing] += ["--validate", REFUSE_EU1]
    return args


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield from stack_of(
        tmp_path / "stack", tuple(LABELS), services=SERVICES, agent_args=agent_args()
    )


@pytest.fixture
def refusing_stack(tmp_path: Path) -> Iterator[Stack]:
    args = agent_args(refusing="n3")
    yield from stack_of(tmp_path / "stack", tuple(LABELS), services=SERVICES, agent_args=args)


async def confbus(stack: Stack, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The output as bytes: ``show`` must print a node's variant byte for byte."""
    return await arun_confbus_bytes("--nats-url", stack.url, *args, timeout=120)


def files(tmp_path: Path, tag: str, **docs: object) -> dict[str, Path]:
    out = {}
    for name, doc in docs.items():
        path = tmp_path / f"{tag}-{name}.json"
        path.write_text(json.dumps(doc))
        out[name] = path
    return out


async def ready(stack: Stack) -> None:
    """Every agent live, and its labels recorded (what the coordinator renders from)."""
    async with stack.client() as client:
        await set_policy(client, json_schema=SCHEMA, max_excluded=0.0)
        await stack.live(len(LABELS))
        kv = await StateKV.open(client.bus, CFG_STATE)

        async def recorded() -> bool:
            for node, labels in LABELS.items():
                rec = (await kv.read(node_key(node), decode_node)).value
                if rec is None or ",".join(f"{k}={v}" for k, v in rec.labels.items()) != labels:
                    return False
            return True

        await eventually(recorded, what="the agents' labels in CFG_STATE")


OVERLAYS = {"eu1": "dc=eu1", "web": "tier=web"}  # file key -> selector, in precedence order
# A base, eu1's own database (what REFUSE_EU1 refuses) and more workers on the web tier.
EU1_DB_WEB: dict[str, object] = {
    "base": {"db": {"host": "db.local"}, "workers": 4},
    "eu1": {"db": {"host": "db.eu1"}},
    "web": {"workers": 8},
}


async def publish(
    stack: Stack, f: dict[str, Path], *extra: str
) -> subprocess.CompletedProcess[bytes]:
    overlays = [a for k, sel in OVERLAYS.items() if k in f for a in ("--overlay", f"{sel}={f[k]}")]
    return await confbus(stack, "publish", NS, str(f["base"]), *overlays, *extra)


async def publish_eu1_db_web(stack: Stack, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    """Once every agent is ready, v1 (``EU1_DB_WEB``) published with ``--wait``."""
    await ready(stack)
    return await publish(stack, files(tmp_path, "v1", **EU1_DB_WEB), "--wait", "--timeout", "60")


async def test_six_nodes_get_their_own_bytes_in_one_switch_and_roll_back_to_their_own(
    stack: Stack, tmp_path: Path
) -> None:
    await ready(stack)
    v1 = files(
        tmp_path,
        "v1",
        base={"db": {"host": "db.local", "port": 5432}, "workers": 4},
        eu1={"db": {"host": "db.eu1"}},
        web={"workers": 8},
    )
    r = await publish(stack, v1, "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    v2 = files(
        tmp_path,
        "v2",
        base={"db": {"host": "db.local", "port": 6432}, "workers": 4, "log": "info"},
        eu1={"db": {"host": "db.eu1"}, "log": None},
        web={"workers": 16},
    )
    # The dry run shows every variant the members would run, and stores nothing.
    dry = await publish(stack, v2, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    text = dry.stdout.decode()
    for name in ("dc=eu1+tier=web (n1, n2)", "dc=eu1 (n3)", "tier=web (n4)", "base (n5, n6)"):
        assert f"# variant {name}" in text, text
    assert '+  "workers": 16' in text

    r = await publish(stack, v2, "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert f"{NS} v2 " in r.stdout.decode()

    # Each node's bytes on disk are exactly what `show --for` renders for its labels.
    own: dict[str, dict[int, bytes]] = {}
    for node, labels in LABELS.items():
        own[node] = {}
        for version in (1, 2):
            shown = await confbus(stack, "show", NS, str(version), "--for", labels)
            assert shown.returncode == 0, shown.stderr
            own[node][version] = shown.stdout
        assert stack.agents[node].read(NS) == own[node][2], node
    assert len({own[n][2] for n in LABELS}) == 4  # four variants
    # diff --for: what changed from v1 to v2 on a node with n1's labels (the store renders both).
    d = await confbus(stack, "diff", NS, "1", "2", "--for", LABELS["n1"])
    assert d.returncode == 0, d.stderr
    diffed = d.stdout.decode()
    assert diffed.startswith(f"--- {NS} v1 for dc=eu1,tier=web\n+++ {NS} v2 for dc=eu1,tier=web\n")
    assert '-  "workers": 8' in diffed and '+  "workers": 16' in diffed, diffed
    assert json.loads(own["n1"][2]) == {"db": {"host": "db.eu1", "port": 6432}, "workers": 16}
    assert json.loads(own["n5"][2])["log"] == "info"
    # `why` names the variant a node's bytes are, as `status --at` does.
    for node, variant in (("n1", "dc=eu1+tier=web"), ("n5", "base")):
        w = await confbus(stack, "why", NS, node)
        assert w.returncode == 0, w.stderr
        head = w.stdout.decode().splitlines()[0]
        assert head.startswith(f"why {node} in {NS}, at ") and head.endswith(
            f", on variant {variant}:"
        ), head

    async with stack.client() as client:
        evs = await events(client.bus)
        # One atomic switch of all six, whose prepare carried each variant once.
        commits = [e for e in of(evs, TxnCommitted) if e.version == 2]
        assert len(commits) == 1 and sorted(commits[0].participants) == sorted(LABELS)
        prepares = [
            p
            for _, data in await read_all(client.bus, "CFG_TXN", f"cfg.txn.{NS}.*.prepare")
            if isinstance(p := decode_txn(data), Prepare) and p.version == 2
        ]
        assert len(prepares) == 1 and prepares[0].content == b""
        carried = {v.name: sorted(v.nodes) for v in prepares[0].variants}
        assert carried == {
            "base": ["n5", "n6"],
            "dc=eu1": ["n3"],
            "dc=eu1+tier=web": ["n1", "n2"],
            "tier=web": ["n4"],
        }
        # Each node announced its own bytes' sha256.
        applied = {e.node: e.sha256 for e in of(evs, NodeApplied) if e.version == 2}
        assert applied == {n: hashlib.sha256(own[n][2]).hexdigest() for n in LABELS}

    # An overlay that breaks the JSON Schema is refused at publish, naming the variant.
    bad = files(tmp_path, "bad", base={"workers": 4}, web={"workers": 64})
    r = await publish(stack, bad)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "variant tier=web" in err and "64" in err and "$.workers" in err, err

    # Rollback to v1: a new version, each node back on its own v1 bytes.
    r = await confbus(stack, "rollback", NS, "--to", "1", "--wait", "--reason", "test")
    assert r.returncode == 0, r.stderr
    for node in LABELS:
        assert stack.agents[node].read(NS) == own[node][1], node
    async with stack.client() as client:
        assert not of(await events(client.bus), NodeDrift)  # own bytes are not drift


async def test_a_validator_refusing_one_variant_on_one_node_aborts_for_all_six(
    refusing_stack: Stack, tmp_path: Path
) -> None:
    r = await publish_eu1_db_web(refusing_stack, tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = r.stderr.decode()
    assert "n3" in err and "eu1 db refused" in err, err
    for node in LABELS:  # n1 and n2 would have taken their eu1 variant: nobody changed
        assert refusing_stack.agents[node].read(NS) is None, node


async def test_a_node_whose_labels_change_moves_to_its_new_variant_by_a_switch(
    stack: Stack, tmp_path: Path
) -> None:
    r = await publish_eu1_db_web(stack, tmp_path)
    assert r.returncode == 0, r.stderr
    shown = await confbus(stack, "show", NS, "1", "--for", "dc=eu1,tier=db")
    assert shown.returncode == 0, shown.stderr
    eu1_db = shown.stdout
    n5 = stack.agents["n5"]
    before = {node: stack.agents[node].read(NS) for node in LABELS}
    assert before["n5"] != eu1_db

    # n5 moves from us1 to eu1: the same agent, restarted with its new labels.
    n5.proc.stop()
    n5.proc.argv = [("dc=eu1" if a == "dc=us1" else a) for a in n5.proc.argv]
    n5.proc.start()

    async def moved() -> bool:
        return n5.read(NS) == eu1_db

    await eventually(moved, timeout=60, what="n5 on its eu1 variant")
    for node in LABELS.keys() - {"n5"}:
        assert stack.agents[node].read(NS) == before[node], node
    new_sha256 = hashlib.sha256(eu1_db).hexdigest()
    async with stack.client() as client:

        async def announced() -> list[AnyEvent] | None:
            evs = await events(client.bus)
            applied = [(e.version, e.sha256) for e in of(evs, NodeApplied) if e.node == "n5"]
            return evs if (1, new_sha256) in applied else None

        evs = await eventually(announced, timeout=30, what="n5's node.applied of its new bytes")
        # Through a normal switch: one transaction of version 1 for n5 alone, committed, and
        # n5 announced its new bytes — not a re-sync, not drift.
        moves = [e for e in of(evs, TxnCommitted) if e.participants == ["n5"]]
        assert [e.version for e in moves] == [1]
        catchups = [e for e in of(evs, NodeCatchUp) if e.node == "n5" and e.outcome == "applied"]
        assert [(e.kind, e.version, e.txid) for e in catchups] == [("switch", 1, moves[0].txid)]
        assert not of(evs, NodeDrift)


# Each overlay alone keeps `pool` to one key; together (a node in eu1 and the cache tier) they
# make two, which this schema refuses.
POOL_SCHEMA = {
    "type": "object",
    "properties": {"pool": {"type": "object", "maxProperties": 1}},
}


async def test_a_variant_the_store_never_validated_breaks_the_schema_and_its_node_votes_no(
    stack: Stack, tmp_path: Path
) -> None:
    await ready(stack)
    async with stack.client() as client:
        await set_policy(client, json_schema=POOL_SCHEMA, max_excluded=0.0)
    v1 = files(
        tmp_path, "v1", base={"workers": 4}, eu1={"pool": {"eu": 1}}, cache={"pool": {"c": 1}}
    )
    overlays = ["--overlay", f"dc=eu1={v1['eu1']}", "--overlay", f"tier=cache={v1['cache']}"]
    # Valid for every member at publish: no member is in the cache tier yet.
    r = await confbus(stack, "publish", NS, str(v1["base"]), *overlays, "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    before = {node: stack.agents[node].read(NS) for node in LABELS}
    assert all(before.values()), before

    # n3 (dc=eu1,tier=db) moves to the cache tier: its variant of version 1 now has both pool
    # keys, a variant nobody validated. The distributor switches it to its own bytes; n3 checks
    # them against the schema the prepare carries and votes no, naming the path.
    n3 = stack.agents["n3"]
    n3.proc.stop()
    n3.proc.argv = [("tier=cache" if a == "tier=db" else a) for a in n3.proc.argv]
    n3.proc.start()
    async with stack.client() as client:

        async def refused() -> TxnAborted | None:
            for e in of(await events(client.bus), TxnAborted):
                if e.participants == ["n3"]:
                    return e
            return None

        aborted = await eventually(refused, timeout=60, what="n3's switch aborted")
        [vote] = aborted.votes
        assert (vote.node, vote.vote) == ("n3", "no"), aborted
        assert "$.pool" in vote.reason and "JSON Schema" in vote.reason, vote.reason
        commits = of(await events(client.bus), TxnCommitted)
        assert [e.participants for e in commits] == [sorted(LABELS)]  # the publish's switch only
    for node in LABELS:  # no file changed, n3's included
        assert stack.agents[node].read(NS) == before[node], node


async def test_variants_too_large_together_for_one_prepare_are_refused_with_the_reason(
    stack: Stack, tmp_path: Path
) -> None:
    """Each variant is within the namespace's limit, but the wave's prepare carries all four:
    more than the bus's max payload. The coordinator refuses the switch before any prepare is
    sent, saying why, and the CLI shows it promptly (not a publish error retried until the
    switch gives up)."""
    await ready(stack)
    async with stack.client() as client:
        await set_policy(client, max_bytes=1_000_000, max_excluded=0.0)
    # ~0.9 MB per rendered variant, four of them (base64 in the prepare: ~4.8 MB > 4 MiB).
    big = files(
        tmp_path, "big", base={"blob": "x" * 900_000, "workers": 4}, eu1={"workers": 5},
        web={"workers": 6},
    )  # fmt: skip
    r = await publish(stack, big, "--wait", "--timeout", "60")
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = r.stderr.decode()
    assert "more than the bus carries" in err and "4 distinct variants" in err, err
    async with stack.client() as client:
        evs = await events(client.bus)
        [aborted] = of(evs, TxnAborted)
        assert "more than the bus carries" in aborted.reason and not aborted.votes, aborted
        [failed] = of(evs, RolloutFailed)
        assert "more than the bus carries" in failed.reason, failed
        assert not of(evs, TxnCommitted)
        prepares = await read_all(client.bus, "CFG_TXN", f"cfg.txn.{NS}.*.prepare")
        assert prepares == []  # nothing was sent
    for node in LABELS:
        assert stack.agents[node].read(NS) is None, node
