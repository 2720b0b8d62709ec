"""The fail-over figures' arithmetic (tests/ha/failover.py), on made-up times."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tests.ha import failover as F


def test_each_measure_counts_from_the_kill() -> None:
    wall = 1_000_000.0
    f = F.Fault("coordinator leading web", "coordinator", "coordinator-2", "", 100.0, wall, 7, 1.0)
    f.old_lease = datetime.fromtimestamp(wall + 3.0, UTC)
    f.new_lease = datetime.fromtimestamp(wall + 3.6, UTC)
    f.recovered_at = 104.0
    f.restarted_wall = wall + 1.2
    sends = [(99.0, 99.2), (99.9, 100.4), (100.7, 101.0)]  # the second was under way at the kill
    applies = [99.5, 103.8, 104.0]
    prepares = [datetime.fromtimestamp(wall - 1.0, UTC), datetime.fromtimestamp(wall + 3.7, UTC)]
    assert F.measure(f, sends, applies, prepares) == {
        F.RECOVERED: 4.0,
        F.PUBLISH: 0.4,
        F.STORED: 0.4,
        F.APPLY: 3.8,
        F.LEASE_FREE: 3.0 + F.SKEW_S,
        F.TAKEOVER: 3.6,
        F.PREPARE: 3.7,
        F.RESTARTED: 1.2,
    }
    f.new_holder = "coordinator-2"
    assert F.taken_back([f]) == {"coordinator_taken_back_by_restart": 1}
    # Nothing under way at the kill: nothing sent before it waits to be stored.
    assert F.measure(f, sends[:1], applies, [])[F.STORED] == 0.0


def test_logged_at_reads_the_stacks_json_log(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    lines = [
        {"ts": "2026-12-07T11:56:05.181Z", "msg": "coordinator-2 ready again (pid 1)"},
        "not json",
        {"ts": "2026-12-07T11:56:06.096Z", "msg": "coordinator-2 ready again (pid 2)"},
    ]
    log.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    after = datetime(2026, 12, 7, 11, 56, 5, 500000, UTC).timestamp()
    at = F.logged_at(log, "coordinator-2 ready again", after)
    assert at == datetime(2026, 12, 7, 11, 56, 6, 96000, UTC).timestamp()
    assert F.logged_at(log, "nats-1 ready again", after) is None
