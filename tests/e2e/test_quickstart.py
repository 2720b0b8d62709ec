"""The README's quick start, run as written (its commands, read from README.md) against a real
``confbus up``, then the demo it ends with: every file a step names is there, every step
succeeds, and afterwards the quick start's namespace holds only its own node while the demo
has stopped and forgotten everything it started."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.procs import REPO
from tests.cli.test_up import Stacks, Up

QUICK_START = re.compile(r"in a second terminal[^\n]*\n\n```sh\n(?P<steps>.*?)```", re.DOTALL)


def quick_start() -> str:
    found = QUICK_START.search((REPO / "README.md").read_text())
    assert found, "README.md: no quick start block after 'in a second terminal'"
    return found.group("steps")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    stacks = Stacks()
    try:
        yield stacks.start(tmp_path / "confbus")
    finally:
        stacks.cleanup()


def test_the_readme_quick_start_runs_as_written(up: Up, tmp_path: Path) -> None:
    steps = quick_start()
    assert "python examples/flaky_app/demo.py" in steps
    # Its /tmp paths go to this test's own directory; nothing else is changed.
    sandbox = tmp_path / "tmp"
    sandbox.mkdir()
    script = steps.replace("/tmp/", f"{sandbox}/")
    # Each step must succeed; then a last look at the quick start's namespace.
    script = f"set -e\n{script}\nconfbus status web\n"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",  # `. .venv/bin/activate`
        "CONFBUS_NATS_URL": up.url,
    }
    out_file, err_file = tmp_path / "out", tmp_path / "err"
    with out_file.open("w") as stdout, err_file.open("w") as stderr:
        # Its own process group: the agent it started in the background goes with it.
        shell = subprocess.Popen(
            ["bash", "-c", script], cwd=REPO, env=env, stdout=stdout, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
        try:
            code = shell.wait(timeout=240)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
    out, err = out_file.read_text(), err_file.read_text()
    assert code == 0, (out[-3000:], err[-3000:])
    assert (sandbox / "web-1" / "app.json").read_text() == '{"pool": 16}\n'
    assert re.search(r"web v1 sha256=\w+ production on 1 node\(s\)", out), out[-3000:]
    assert "rollback.completed" in out and "stopped and forgot flaky1, flaky2" in out, out[-3000:]
    # The last status of web: its one node, on v1; none of the demo's nodes.
    last_status = out[out.rindex("web: production") :]
    assert "web-1" in last_status and "flaky" not in last_status, last_status
    assert not (REPO / "app.json").exists()  # nothing written into the checkout
    flaky = subprocess.run(
        ["confbus", "status", "flaky"], env=env, capture_output=True, text=True, check=False
    )
    assert "no node follows this namespace" in flaky.stdout, flaky
