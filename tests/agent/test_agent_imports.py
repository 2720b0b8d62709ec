"""An agent process holds only what it runs: every module it imports stays in its memory for
as long as the node lives (issue 23: ≤ 30 MB per single-namespace agent). Not timing-based:
the modules a real ``confbus agent`` has imported once it serves, read from inside it."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from confbus.procs.proc import Proc
from tests.cli.procs import REPO

# Runs the agent's entry point as ``python -m confbus.agent`` does; on SIGUSR1 it writes every
# module imported to argv[1] and stops as on SIGTERM.
DRIVER = """
import os, runpy, signal, sys
out, sys.argv = sys.argv[1], ["confbus.agent", *sys.argv[2:]]

def dump(*_):
    with open(out + ".tmp", "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
    os.replace(out + ".tmp", out)
    os.kill(os.getpid(), signal.SIGTERM)

signal.signal(signal.SIGUSR1, dump)
runpy.run_module("confbus.agent", run_name="__main__")
"""

# Not an agent's: a numeric status address resolved in a worker thread (asyncio's executor
# thread stays, with its memory) or through the idna codec (``unicodedata``); nats-py reading
# its version with ``importlib.metadata`` (~1.5 MB with ``zipfile``, ``csv``…:
# ``confbus.runtime.natspy``).
NOT_FOR_AN_AGENT = (
    "concurrent.futures.thread",
    "encodings.idna",
    "unicodedata",
    "importlib.metadata",
    "zipfile",
    "csv",
)


def test_a_serving_agent_imports_no_worker_pool_for_its_status_address(tmp_path: Path) -> None:
    listing = tmp_path / "modules.txt"
    live = tmp_path / "etc" / "app.conf"
    live.parent.mkdir()
    argv = [sys.executable, "-c", DRIVER, str(listing), "--node", "n1"]
    argv += ["--namespace", "app", "--path", str(live), "--state-dir", str(tmp_path / "state")]
    # No bus: the agent serves its status endpoint and says ready before it joins one.
    argv += ["--nats-url", "nats://127.0.0.1:1", "--http-port", "0"]
    agent = Proc("agent", argv, tmp_path, cwd=REPO).start(wait_ready=False)
    try:
        ready = agent.wait_ready(timeout=60.0)
        assert ready["service"] == "agent" and ready["http_port"] > 0
    finally:
        agent.stop(signal.SIGUSR1)  # the listing, then the agent's own SIGTERM stop
    modules = set(listing.read_text().split())
    assert {"confbus.agent.node", "confbus.runtime.tcp"} <= modules  # the probe sees imports
    assert not modules & set(NOT_FOR_AN_AGENT), sorted(modules & set(NOT_FOR_AN_AGENT))
