"""No command ends in a traceback: an error raised inside ``publish --wait``'s task group (it
follows the events and the rollout record at once) ends the command as the same error on its
own would — one line on stderr, exit 3 — against a real ``confbus up``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.procs import arun_confbus
from tests.ha.hastack import start_up

pytestmark = pytest.mark.anyio

FAILPOINT = "client.wait_rollout.poll"


@pytest.mark.parametrize(
    ("action", "says"),
    [
        ("unavailable", f"confbus: unreachable: failpoint {FAILPOINT}: the bus is not answering"),
        ("timeout", "confbus: unreachable: nats: timeout"),
    ],
)
async def test_an_error_inside_wait_is_one_line_and_exit_3(
    tmp_path: Path, action: str, says: str
) -> None:
    stack = start_up(tmp_path / "data")
    try:
        path = tmp_path / "v.json"
        path.write_bytes(b'{"release": 1}')
        done = await arun_confbus(
            "--nats-url", stack.url, "publish", "web", str(path), "--id", f"c-{action}",
            "--wait", "--timeout", "60",
            env={"CONFBUS_FAILPOINTS": f"{FAILPOINT}={action}"},
            timeout=90,
        )  # fmt: skip
    finally:
        stack.cleanup()
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 3, done.stderr
    # The first publish to a namespace says it creates it; then the failpoint fires, and the
    # command ends in one line.
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "confbus: namespace web does not exist yet: creating it", lines
    assert lines[1] == f'{{"failpoint": "{FAILPOINT}", "action": "{action}"}}', lines
    assert lines[2:] == [says]
