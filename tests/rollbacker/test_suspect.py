"""A version that passed its bake (the last known good) stays suspect for the policy's
``rollback.window_s`` after it became production: an alert about it in that window rolls back to
the last known good before it, and it loses its mark with the reason; past the window the alert
is ignored, and the ``alert.ignored`` event says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus
from confbus.schemas.events import AlertActed, AlertIgnored, RollbackStarted
from tests.rollbacker.test_rollbacker import outcome_of
from tests.rollbacker.world import GOOD, NS, policy, world

pytestmark = pytest.mark.anyio


async def test_an_alert_about_the_last_known_good_rolls_back_to_the_one_before_it(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    async with world(nats_server, bus, tmp_path, pol=policy(window_s=0.001)) as w:
        v1, v2 = await w.seed()
        await w.store.mark_good(NS, v2, reason="final bake passed with data")
        await w.alert("late", v2, rule="p99")
        assert await outcome_of(w, "late") == "ignored"
        ignored = (await w.tap.wait_type("alert.ignored"))[0]
        assert isinstance(ignored, AlertIgnored) and ignored.alert_id == "late"
        assert "suspect window" in ignored.reason and ignored.version == v2, ignored

        w.store.set_policy(policy(window_s=3600.0))
        await w.alert("peak", v2, rule="p99", summary="p99 at the evening peak")
        assert await outcome_of(w, "peak") == "started"
        acted = (await w.tap.wait_type("alert.acted"))[0]
        assert isinstance(acted, AlertActed) and f"v{v2} loses its" in acted.reason, acted
        started = (await w.tap.wait_type("rollback.started"))[0]
        assert isinstance(started, RollbackStarted)
        assert (started.from_version, started.to_version) == (v2, v1)
        await w.tap.wait_type("rollback.completed")
        assert all(w.read(n) == GOOD for n in w.nodes)
        revoked = [m for m in w.store.marks if m[1] == v1 and f"v{v2} lost its" in m[2]]
        assert revoked and "p99 at the evening peak" in revoked[0][2], w.store.marks
        # A re-send of the same alert is a duplicate, and says so.
        await w.alert("peak", v2, rule="p99")
        dup = (await w.tap.wait_type("alert.duplicate"))[0]
        assert "already judged: started" in dup.reason, dup
