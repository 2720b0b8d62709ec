"""``confbus up --ha`` as a real process: 3 NATS (one cluster), 3 etcd members, 2 replicas of each
service, the ready line, ``confbus doctor`` on it, and a clean stop. Also the refusals, and
``confbus doctor`` on a broken or unreachable confbus."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from confbus.cli.commands import up
from confbus.cli.exitcodes import FAILED, USAGE, CliError
from confbus.cli.main import build_parser
from confbus.procs.nats import NatsServer
from confbus.procs.ports import free_port_run
from tests.cli.procs import assert_unreachable, dead_nats_url, run_confbus, wait_gone
from tests.ha.hastack import READY, READY_TIMEOUT, needs_etcd, start_ha, start_ha_in_background


@needs_etcd
def test_up_ha_serves_passes_doctor_and_stops_cleanly(tmp_path: Path) -> None:
    stack = start_ha(tmp_path / "data")
    try:
        m = READY.match(stack.line)
        assert m, stack.line
        assert len(stack.urls) == 3 and all(u.startswith("nats://127.0.0.1:") for u in stack.urls)
        listed = [s.split(":")[0] for s in m.group("services").split(",")]
        expected = [spec.name for spec in up.SERVICES if spec.runnable()]
        assert listed == [f"{name}-{i}" for name in expected for i in (1, 2)]
        assert len(stack.line.split(" console=")[1].split()[0].split(",")) == 2  # both replicas
        state = stack.state()
        assert sorted(state["cluster"]["pids"]) == [
            "etcd-e1", "etcd-e2", "etcd-e3", "nats-1", "nats-2", "nats-3",
        ]  # fmt: skip
        for i in (1, 2, 3):
            conf = (stack.data_dir / f"nats-{i}" / "nats-server.conf").read_text()
            assert "sync_interval: always" in conf and 'name: "confbus"' in conf
        ready = {name: s["ready"] for name, s in state["services"].items()}
        assert ready["version-store-1"]["store"] == ready["version-store-2"]["store"] == "etcd"
        assert ready["coordinator-1"]["instance"] == "coordinator-1"
        assert ready["coordinator-2"]["instance"] == "coordinator-2"

        doctor = run_confbus(
            "--nats-url", stack.url, "doctor", "--store", stack.store_url, "--agents-wait", "0.2"
        )  # fmt: skip
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "all checks passed" in doctor.stdout
        for stream in (
            "CFG_CHANGES",
            "CFG_CHANGES_ALT",
            "CFG_TXN",
            "KV_CFG_TXN_HEAD",
            "KV_CFG_STATE",
        ):
            assert f"{stream}: R3, leader nats-" in doctor.stdout, doctor.stdout
        assert "etcd: 3/3 members answer, leader e" in doctor.stdout
        assert "store ×2, txn ×2, dist ×2" in doctor.stdout

        started = stack.all_pids()
        assert len(started) == 6 + len(listed)
        assert stack.proc.stop(signal.SIGTERM, timeout=60) == 0, stack.proc.describe()
        stack.assert_all_gone(started)
        assert "nats cluster and etcd stopped" in stack.proc.err.text()
    finally:
        stack.cleanup()


@needs_etcd
def test_a_killed_up_ha_takes_every_server_and_service_with_it(tmp_path: Path) -> None:
    """SIGKILL leaves none of the 6 servers and 10 services behind, and ``up --ha`` on the
    same directory, started at once, serves again (etcd on the same ports: its members know
    each other by them)."""
    data = tmp_path / "data"
    etcd = ("--etcd-port", str(free_port_run(6)))
    stack = start_ha(data, *etcd)
    again = None
    try:
        started = stack.all_pids()
        assert len(started) == 6 + 2 * len([s for s in up.SERVICES if s.runnable()])

        os.kill(stack.proc.pid, signal.SIGKILL)
        again = start_ha_in_background(data, *etcd)

        assert wait_gone(started, timeout=2.0) == [], "outlived confbus up --ha by 2 s"
        again.line = again.proc.wait_line("confbus ready", READY_TIMEOUT)
        assert again.proc.stop(signal.SIGTERM, timeout=60) == 0, again.proc.describe()
    finally:
        stack.cleanup()
        if again is not None:
            again.cleanup()


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["up", *argv])


def test_ha_without_etcd_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(up, "etcd_binary", lambda: None)
    with pytest.raises(CliError) as refused:
        up.stack_config(_args("--ha", "--data-dir", str(tmp_path)))
    assert refused.value.code == FAILED
    assert "install etcd-server (apt-get install -y etcd-server)" in str(refused.value)


WITHOUT_AETCD = (
    "import sys; sys.modules['aetcd'] = None; sys.argv[0] = 'confbus';"  # as if not installed
    "from confbus.cli.main import main; main()"
)


@needs_etcd
@pytest.mark.parametrize("how", [["--ha"], ["--store", "etcd://127.0.0.1:2379"]])
def test_an_etcd_store_without_its_client_names_the_extra_in_one_line(
    tmp_path: Path, how: list[str]
) -> None:
    """``pip install confbus`` has no aetcd (it is the ``etcd`` extra): ``up --ha`` says which
    extra to install, in one line, and starts nothing."""
    data = tmp_path / "data"
    argv = ["up", *how, "--data-dir", str(data), "--nats-port", "0"]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_AETCD, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == FAILED, done
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert "pip install 'confbus[etcd]'" in done.stderr
    assert not data.exists()


@needs_etcd
def test_ha_ports_derive_from_the_nats_port(tmp_path: Path) -> None:
    config = up.stack_config(_args("--ha", "--nats-port", "5222", "--data-dir", str(tmp_path)))
    assert config.ha is not None
    assert config.ha.nats == (5222, 5223, 5224)
    assert config.ha.cluster == (7222, 7223, 7224)
    assert config.ha.etcd_client == (2379, 2381, 2383)
    assert config.options.store == "etcd://127.0.0.1:2379,127.0.0.1:2381,127.0.0.1:2383"
    names = [s.name for s in config.services]
    assert names[:2] == ["version-store-1", "version-store-2"]
    assert config.services[1].after == "version-store-1"
    args = config.services[1].args(tmp_path, config.options)
    assert args[-4:] == ["--instance", "version-store-2", "--replicas", "3"]
    assert "--store" in args


def test_ha_with_an_external_nats_is_a_usage_error(tmp_path: Path) -> None:
    done = run_confbus("up", "--ha", "--nats-url", "nats://127.0.0.1:4222", "--data-dir",
                       str(tmp_path))  # fmt: skip
    assert done.returncode == USAGE, done
    assert "--ha starts its own NATS cluster" in done.stderr


def test_doctor_on_an_unreachable_nats_exits_3() -> None:
    assert_unreachable(run_confbus("--nats-url", dead_nats_url(), "doctor"))


def test_doctor_says_what_is_missing_and_exits_1(nats_server: NatsServer) -> None:
    # A bare nats-server: no streams, no services.
    done = run_confbus("--nats-url", nats_server.url, "doctor", "--agents-wait", "0.1")
    assert done.returncode == 1, done
    assert "FAIL  stream      CFG_TXN: missing" in done.stdout
    assert "nobody answers for store, txn, dist" in done.stdout
    assert "problem(s) found" in done.stdout
