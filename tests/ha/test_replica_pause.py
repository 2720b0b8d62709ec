"""One renewal per replica (``confbus.runtime.leases``), with real processes: a replica whose
renewals stop — paused with SIGSTOP, so its presence still answers and it is never "gone" —
loses every name it holds at once to another replica when its replica lease runs out, and
after SIGCONT acts on none of them: it stops before its first act (its trust ran out while it
was paused), and the new holder's epoch fences the records it wrote."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc, python_module
from confbus.runtime.bus import Bus
from confbus.schemas.state import decode_lease, lease_key
from confbus.schemas.streams import CFG_STATE
from tests.ha.lease_replica import ACTS, decode_act
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

NAMES = [f"ns{i}" for i in range(8)]
TTL_S = 2.0


def replica(nats_server: NatsServer, holder: str, log_dir: Path) -> Proc:
    argv = python_module("tests.ha.lease_replica", nats_server.url, holder, str(TTL_S), *NAMES)
    return Proc(holder, argv, log_dir).start(wait_ready=False)


def events(proc: Proc, what: str) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in proc.out.text().splitlines() if x.startswith("{")]
    return [e for e in lines if e["event"] == what]


async def test_a_paused_replica_loses_every_name_at_once_and_acts_on_none_after(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    await bus.js.create_key_value(bucket=ACTS)
    state = await bus.kv(CFG_STATE.name)
    acts = await bus.kv(ACTS)
    seen: list[tuple[str, dict[str, object]]] = []

    async def on_act(msg: object) -> None:
        seen.append((msg.subject, json.loads(msg.data)))  # type: ignore[attr-defined]

    await bus.nc.subscribe("test.act.*", cb=on_act)

    async def holders() -> dict[str, tuple[str, int]]:
        out = {}
        for name in NAMES:
            record = decode_lease((await state.get(lease_key("test", name))).value or b"")
            out[name] = (record.holder, record.epoch)
        return out

    a = replica(nats_server, "a", tmp_path)
    b: Proc | None = None
    try:
        a.wait_line('"ready"', timeout=30)

        async def a_acts_on_all() -> bool:
            acted = {e["name"] for s, e in seen if s == "test.act.a"}
            return acted == set(NAMES)

        await eventually(a_acts_on_all, timeout=30, what="a holds and acts on every name")
        before = await holders()
        assert {h for h, _ in before.values()} == {"a"}
        b = replica(nats_server, "b", tmp_path)
        b.wait_line('"ready"', timeout=30)
        assert not events(b, "taken")  # a answers its presence and renews: b takes nothing

        a.pause()
        paused_at = time.monotonic()

        async def b_took_all() -> bool:
            return len(events(b, "taken")) == len(NAMES)

        await eventually(b_took_all, timeout=3 * TTL_S + 10, what="b takes every name")
        taken = events(b, "taken")
        took = [float(e["at"]) - paused_at for e in taken]  # type: ignore[arg-type]
        # Not before a's replica lease ran out (TTL; its trust, 2/3 of it, ended sooner) ...
        assert min(took) >= TTL_S * 2 / 3, took
        # ... and every name in one go, not name by name.
        assert max(took) - min(took) < 1.0, took
        after = await holders()
        assert after == {n: ("b", before[n][1] + 1) for n in NAMES}, after

        async def b_acts_on_all() -> bool:
            acted = {e["name"] for s, e in seen if s == "test.act.b"}
            return acted == set(NAMES)

        await eventually(b_acts_on_all, timeout=10, what="b acts on every name")
        a.resume()
        resumed_at = time.monotonic()

        async def a_lost_all() -> bool:
            return {e["name"] for e in events(a, "lost")} == set(NAMES)

        await eventually(a_lost_all, timeout=10, what="a loses every name")
        # a sees its pause when it wakes: no act of a's after it — and none fenced, since it
        # never tried. Its acts' times are on the machine's monotonic clock, as ours.
        await bus.nc.flush()
        late = [e for s, e in seen if s == "test.act.a" and float(e["at"]) > paused_at]  # type: ignore[arg-type]
        assert not late, late
        assert not events(a, "fenced")
        # Nor does it take anything back: b renews and answers.
        # An observation window, not a synchronisation: a's pursue passes (every TTL/3) must
        # find b live and present and take nothing.
        await anyio.sleep(TTL_S)
        assert not [e for e in events(a, "taken") if float(e["at"]) > resumed_at]  # type: ignore[arg-type]
        assert await holders() == after
        for name in NAMES:
            record = decode_act((await acts.get(name)).value or b"")
            assert (record.holder, record.epoch) == after[name], (name, record)
    finally:
        a.kill()  # (SIGKILL ends a paused process too)
        if b is not None:
            b.kill()
