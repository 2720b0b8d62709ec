"""``agent_argv`` builds a command line the agent itself reads as meant: what every harness
that starts an agent process relies on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from confbus.agent.main import add_agent_args
from confbus.procs.agent import agent_argv
from confbus.runtime.settings import add_common_args


def parsed(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="confbus agent")
    add_common_args(parser)
    add_agent_args(parser)
    return parser.parse_args(argv)


def test_the_agent_reads_each_namespace_with_its_file_and_the_options_given(
    tmp_path: Path,
) -> None:
    files = {"web": tmp_path / "web.conf", "db": tmp_path / "db.conf"}
    argv = agent_argv(
        "nats://127.0.0.1:4999",
        "n1",
        files,
        tmp_path / "state",
        "--keep",
        "3",
        heartbeat_interval=0.5,
        labels={"dc": "eu1", "tier": "web"},
    )
    assert argv[:3] == [sys.executable, "-m", "confbus.agent"]
    args = parsed(argv[3:])
    assert args.nats_url == "nats://127.0.0.1:4999" and args.node == "n1"
    assert args.namespaces == ["web", "db"]
    assert args.paths == [str(files["web"]), str(files["db"])]
    assert args.state_dir == str(tmp_path / "state")
    assert args.heartbeat_interval_s == 0.5 and args.keep == 3
    assert args.label == ["dc=eu1", "tier=web"]


def test_options_not_given_keep_the_agents_defaults_and_another_program_can_run(
    tmp_path: Path,
) -> None:
    program = [sys.executable, "-m", "tests.faults.shims.agent"]
    argv = agent_argv("nats://h:1", "n2", {"web": tmp_path / "w"}, tmp_path, program=program)
    assert argv[:3] == program
    args = parsed(argv[3:])
    assert args.heartbeat_interval_s == 2.0 and args.label == []
    assert args.namespaces == ["web"] and args.node == "n2"
