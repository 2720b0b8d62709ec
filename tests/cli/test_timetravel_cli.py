"""``confbus status --at``, ``why`` and ``diff-fleet`` as real processes against a real
nats-server holding a generated audit log whose truth is known."""

from __future__ import annotations

import json
import re

import pytest

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from confbus.schemas.streams import CFG_EVENTS
from tests.cli.procs import arun_confbus, assert_unreachable, dead_nats_url
from tests.timetravel.support import Truth, publish_log

pytestmark = pytest.mark.anyio


async def confbus(server: NatsServer, *args: str) -> tuple[int, str, str]:
    done = await arun_confbus("--nats-url", server.url, *args)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
async def truth(bus: Bus) -> Truth:
    return await publish_log(bus, {"web": 600, "api": 200}, nodes=6)


async def test_status_at_a_sequence_and_at_a_time(
    bus: Bus, nats_server: NatsServer, truth: Truth
) -> None:
    code, out, err = await confbus(nats_server, "status", "web", "--at", "500", "--json")
    assert code == 0, err
    fleet = json.loads(out)
    assert fleet["seq"] == 500 and fleet["complete"] is True
    got = {n["node"]: (n["version"], n["sha256"]) for n in fleet["nodes"] if n["version"]}
    assert got == truth.applied("web", 500)

    stored = (await bus.js.get_msg(CFG_EVENTS.name, 500)).time
    assert stored is not None
    code, out, err = await confbus(nats_server, "status", "web", "--at", stored.isoformat())
    assert code == 0, err
    assert re.match(r"web at \S+ \(seq 500\), from \d+ event\(s\) from the stream's start", out)
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    for line in lines[header + 1 :]:
        node, _, applied = line.split()[:3]
        assert applied == f"v{truth.applied('web', 500)[node][0]}", line


async def test_why_and_diff_fleet(nats_server: NatsServer, truth: Truth) -> None:
    node = sorted(truth.applied("web", 800))[0]
    code, out, err = await confbus(nats_server, "why", "web", node)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"why {node} in web, at ")
    version = truth.applied("web", 800)[node][0]
    assert re.match(rf"\s+#\d+\s+apply\s+{node} applied v{version} ", lines[1]), lines[1]
    assert re.match(r"\s+#\d+\s+transaction\s+txn tx-\d+ committed", lines[2]), lines[2]
    assert any(re.match(rf"\s+#\d+\s+version\s+v{version} created by ci", x) for x in lines)

    code, out, err = await confbus(nats_server, "diff-fleet", "web", "--from", "100", "--to", "700")
    assert code == 0, err
    before, after = truth.applied("web", 100), truth.applied("web", 700)
    changed = {n for n in after if before.get(n) != after[n]}
    assert f"{len(changed)} node(s) changed" in out.splitlines()[0]
    for n in changed:
        assert re.search(rf"^  {n} .* → v{after[n][0]} .* via ", out, re.MULTILINE), (n, out)


async def test_bad_moments_and_what_the_stream_no_longer_holds(
    bus: Bus, nats_server: NatsServer, truth: Truth
) -> None:
    code, _, err = await confbus(nats_server, "status", "web", "--at", "yesterday")
    assert code == 2 and "expected a duration" in err
    code, _, err = await confbus(nats_server, "diff-fleet", "web", "--from", "700", "--to", "100")
    assert code == 1 and "is before --from" in err

    # Retention dropped the first 400 events.
    await bus.js.purge_stream(CFG_EVENTS.name, seq=401)
    code, _, err = await confbus(nats_server, "status", "web", "--at", "100")
    assert code == 1 and "before what CFG_EVENTS still holds: its oldest event is seq 401" in err
    code, out, err = await confbus(nats_server, "status", "web", "--at", "700", "--json")
    assert code == 0, err
    fleet = json.loads(out)
    assert fleet["complete"] is False and fleet["origin_at"]
    for n in fleet["nodes"]:
        if n["applied"] == "known":
            assert (n["version"], n["sha256"]) == tuple(truth.applied("web", 700)[n["node"]])
        else:  # no apply since seq 401: not a guess, unknown since the oldest event
            assert n["applied"] == "unknown" and n["unknown_since"] == fleet["origin_at"]


async def test_unreachable_is_exit_3() -> None:
    assert_unreachable(await arun_confbus("--nats-url", dead_nats_url(), "why", "web", "n1"))
