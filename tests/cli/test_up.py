"""``confbus up`` as a real process: nats-server, provisioning, every service, clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from confbus.cli.stack import SERVED_S
from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc
from confbus.procs.spawn import alive
from confbus.procs.watch import RESTART_MIN_S
from confbus.runtime.bus import connect
from confbus.schemas import subjects
from confbus.schemas.events import VersionApproved
from confbus.schemas.streams import BUCKETS, STREAMS
from tests.cli.procs import (
    assert_unreachable,
    dead_nats_url,
    lock_is_free,
    run_confbus,
    start_confbus,
    wait_gone,
)

READY = re.compile(
    r"^confbus ready nats=(?P<nats>\S+) data=(?P<data>\S+) services=(?P<services>\S+)(?P<rest>.*)$"
)
READY_TIMEOUT = 90.0  # every service starts at once; a loaded 2-core CI box is slow


@dataclass
class Up:
    proc: Proc
    data_dir: Path
    line: str

    @property
    def url(self) -> str:
        m = READY.match(self.line)
        assert m, self.line
        return m.group("nats")

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.data_dir / "stack.json").read_text())
        return state


class Stacks:
    """Starts ``confbus up`` processes and makes sure none outlives its test."""

    def __init__(self) -> None:
        self.started: list[Up] = []

    def start(self, data_dir: Path, *args: str) -> Up:
        up = self.start_in_background(data_dir, *args)
        up.line = up.proc.wait_line("confbus ready", READY_TIMEOUT)
        return up

    def start_in_background(self, data_dir: Path, *args: str) -> Up:
        proc = start_confbus("up", "--data-dir", str(data_dir), "--nats-port", "0", *args)
        up = Up(proc, data_dir.resolve(), "")
        self.started.append(up)
        return up

    def cleanup(self) -> None:
        for up in self.started:
            up.proc.stop()  # SIGKILL after 30 s; what it started dies with it


def _started_pids(data_dir: Path) -> list[int]:
    state = json.loads((data_dir / "stack.json").read_text())
    pids = [state.get("nats_pid")] + [s.get("pid") for s in state["services"].values()]
    return [p for p in pids if isinstance(p, int)]


@pytest.fixture
def stacks() -> Iterator[Stacks]:
    s = Stacks()
    try:
        yield s
    finally:
        s.cleanup()


async def _provisioned(url: str) -> tuple[set[str], set[str]]:
    bus = await connect(url, name="test-probe", max_reconnect_attempts=0)
    try:
        streams = {(await bus.js.stream_info(s.name)).config.name or "" for s in STREAMS}
        buckets = set()
        for b in BUCKETS:
            await bus.kv(b.name)  # raises BucketNotFoundError if it is not there
            buckets.add(b.name)
    finally:
        await bus.close()
    return streams, buckets


def provisioned(url: str) -> tuple[set[str], set[str]]:
    return anyio.run(_provisioned, url, backend="asyncio")


async def _publish(url: str, event: VersionApproved) -> None:
    bus = await connect(url, name="test-publisher", max_reconnect_attempts=0)
    try:
        await bus.publish(subjects.event(event.namespace, "version.approved"), event)
    finally:
        await bus.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_provisions_serves_and_stops_cleanly(
    stacks: Stacks, tmp_path: Path, sig: signal.Signals
) -> None:
    data = tmp_path / "data"
    up = stacks.start(data)

    m = READY.match(up.line)
    assert m, up.line
    assert m.group("data") == str(data.resolve())
    streams, buckets = provisioned(up.url)
    assert streams == {s.name for s in STREAMS}
    assert buckets == {b.name for b in BUCKETS}

    state = up.state()
    assert state["nats_url"] == up.url and state["pid"] == up.proc.pid
    listed = [] if m.group("services") == "none" else m.group("services").split(",")
    assert listed == [f"{n}:{s['ready']['http_port']}" for n, s in state["services"].items()]
    assert (data / "confbus.lock").read_text().strip() == str(up.proc.pid)
    assert (data / "logs" / "nats-server.log").stat().st_size > 0
    for name in state["services"]:
        assert (data / "logs" / f"{name}.log").exists()
    started = [state["nats_pid"], *(s["pid"] for s in state["services"].values())]

    assert up.proc.stop(sig) == 0, up.proc.describe()
    assert not any(alive(pid) for pid in started)
    assert lock_is_free(data / "confbus.lock")  # nothing that inherited it is left
    assert not (data / "stack.json").exists()
    assert "nats-server stopped" in up.proc.err.text()


def test_second_up_on_the_same_data_dir_is_refused(stacks: Stacks, tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = stacks.start(data)
    files = [data / "confbus.lock", data / "stack.json", data / "logs" / "nats-server.log"]
    before = [f.read_bytes() for f in files]

    second = run_confbus("up", "--data-dir", str(data), "--nats-port", "0")

    assert second.returncode == 1, second
    assert f"another confbus up is running on {data.resolve()} (pid {up.proc.pid})" in (
        second.stderr
    )
    assert "ready" not in second.stdout
    assert [f.read_bytes() for f in files] == before
    assert up.proc.alive()
    assert provisioned(up.url)[0] == {s.name for s in STREAMS}


def test_data_is_kept_across_a_restart(stacks: Stacks, tmp_path: Path) -> None:
    data = tmp_path / "data"
    up = stacks.start(data)
    event = VersionApproved(namespace="payments", version=3, actor="alice")
    anyio.run(_publish, up.url, event, backend="asyncio")
    assert up.proc.stop() == 0, up.proc.describe()

    again = stacks.start(data)
    replay = run_confbus("--nats-url", again.url, "replay", "payments")

    assert replay.returncode == 0, replay
    assert re.search(r"^\d+ \S+Z version\.approved payments v3 by alice$", replay.stdout, re.M), (
        replay.stdout
    )


def test_a_killed_up_takes_everything_it_started_with_it(stacks: Stacks, tmp_path: Path) -> None:
    """SIGKILL (the OOM killer) leaves no nats-server or service serving unsupervised, and a
    new ``confbus up`` on the directory, started at once, serves with the data."""
    data = tmp_path / "data"
    up = stacks.start(data, "--add-service", "sample=tests.cli.sample_service")
    anyio.run(_publish, up.url, VersionApproved(namespace="payments", version=1), backend="asyncio")
    started = _started_pids(data)
    assert len(started) == 1 + len(up.state()["services"])

    os.kill(up.proc.pid, signal.SIGKILL)
    again = stacks.start_in_background(data)  # while they are still on their way out

    assert wait_gone(started, timeout=2.0) == [], "outlived confbus up by 2 s"
    again.line = again.proc.wait_line("confbus ready", READY_TIMEOUT)
    replay = run_confbus("--nats-url", again.url, "replay", "payments")
    assert "version.approved payments v1" in replay.stdout, replay
    assert again.proc.stop() == 0, again.proc.describe()


def test_a_crashed_service_is_restarted_and_the_stack_keeps_serving(
    stacks: Stacks, tmp_path: Path
) -> None:
    up = stacks.start(tmp_path / "data", "--add-service", "sample=tests.cli.sample_service")
    first = up.state()["services"]
    sample = first["sample"]
    port = sample["ready"]["http_port"]
    assert f"sample:{port}" in up.line
    assert f"sample=http://127.0.0.1:{port}" in up.line  # the extra sample_port key

    os.kill(sample["pid"], signal.SIGKILL)
    up.proc.err.wait_for("sample was killed by SIGKILL")
    up.proc.err.wait_for("sample ready again")

    now = up.state()["services"]
    assert now["sample"]["pid"] != sample["pid"]
    assert now["sample"]["restarts"] == 1
    assert now["sample"]["ready"]["http_port"] == port  # same scrape target as before
    for name, service in first.items():
        if name != "sample":
            assert now[name]["pid"] == service["pid"] and alive(service["pid"])
    assert up.proc.stop() == 0, up.proc.describe()


def test_the_restart_backoff_doubles_only_for_a_service_that_dies_soon_after_ready(
    stacks: Stacks, tmp_path: Path
) -> None:
    """Killed right after its ready line, again and again, a service waits longer each time (a
    crash loop); one that served ``SERVED_S`` and then died restarts after the minimum."""
    up = stacks.start(tmp_path / "data", "--add-service", "sample=tests.cli.sample_service")

    def kill_and_restart(restart: int) -> str:
        mark = len(up.proc.err.lines)
        os.kill(up.state()["services"]["sample"]["pid"], signal.SIGKILL)
        line = up.proc.err.wait_for(f"(restart {restart})", 30.0, mark)
        up.proc.err.wait_for("sample ready again", 30.0, mark)
        return line

    assert f"restarting in {RESTART_MIN_S:g}s" in kill_and_restart(1)
    assert f"restarting in {2 * RESTART_MIN_S:g}s" in kill_and_restart(2)  # soon after ready
    # What the next kill tests is a service that served a while: that is the wait.
    time.sleep(SERVED_S + 0.5)
    assert f"restarting in {RESTART_MIN_S:g}s" in kill_and_restart(3)
    assert up.proc.stop() == 0, up.proc.describe()


def test_a_service_failing_before_ready_stops_everything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = run_confbus(
        "up", "--data-dir", str(data), "--nats-port", "0",
        "--add-service", "broken=tests.cli.broken_service",
    )  # fmt: skip

    assert done.returncode == 1, done
    assert "broken exited with code 1 before it was ready" in done.stderr
    assert "boom: the store is unreadable" in done.stderr  # its last log lines
    assert "confbus ready" not in done.stdout
    assert lock_is_free(data / "confbus.lock")  # nats-server and the other services are gone


def test_a_taken_nats_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_confbus("up", "--data-dir", str(tmp_path / "d"), "--nats-port", str(port))

    assert done.returncode == 1, done
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert lock_is_free(tmp_path / "d" / "confbus.lock")


def test_up_on_an_existing_nats(stacks: Stacks, tmp_path: Path, nats_server: NatsServer) -> None:
    up = stacks.start(tmp_path / "data", "--nats-url", nats_server.url)

    assert up.url == nats_server.url
    assert provisioned(up.url)[0] == {s.name for s in STREAMS}
    assert up.proc.stop() == 0, up.proc.describe()
    assert nats_server.proc is not None and nats_server.proc.poll() is None  # not ours to stop
    assert not (tmp_path / "data" / "nats").exists()


def test_up_on_an_unreachable_nats_exits_3(tmp_path: Path) -> None:
    url = dead_nats_url()
    assert_unreachable(run_confbus("up", "--data-dir", str(tmp_path / "d"), "--nats-url", url))


@pytest.mark.parametrize(
    "args",
    [
        ["up", "--without", "no-such-service"],
        ["up", "--add-service", "no-equals-sign"],
        ["up", "--add-service", "x=tests.cli.no_such_module"],
        ["up", "--nats-port", "many"],
    ],
)
def test_up_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    done = run_confbus(*args, "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2, done
    assert done.stderr.strip()


def test_a_crashed_nats_server_is_restarted_with_its_data(stacks: Stacks, tmp_path: Path) -> None:
    up = stacks.start(tmp_path / "data")
    anyio.run(_publish, up.url, VersionApproved(namespace="payments", version=1), backend="asyncio")
    old = up.state()["nats_pid"]

    os.kill(old, signal.SIGKILL)
    up.proc.err.wait_for("nats-server was killed by SIGKILL")
    up.proc.err.wait_for("nats-server ready again")

    assert up.state()["nats_pid"] != old
    replay = run_confbus("--nats-url", up.url, "replay", "payments")  # same URL, same store
    assert "version.approved payments v1" in replay.stdout, replay
    assert up.proc.stop() == 0, up.proc.describe()
