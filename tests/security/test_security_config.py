"""The roster and the files ``services/cli/security.py`` writes: stable passwords, private
files, flags refused before anything starts."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest

from confbus.cli import security
from confbus.cli.commands.up import stack_config
from confbus.cli.exitcodes import USAGE, CliError
from confbus.cli.main import build_parser


def up_args(tmp_path: Path, *flags: str) -> argparse.Namespace:
    return build_parser().parse_args(
        ["up", "--data-dir", str(tmp_path / "data"), "--nats-port", "0", *flags]
    )


def test_first_run_makes_service_operator_and_ci(tmp_path: Path) -> None:
    config = stack_config(up_args(tmp_path, "--secure"))
    secrets_dir = tmp_path / "data" / "secrets"
    roster = security.load_roster(secrets_dir)
    assert {u.name: u.role for u in roster.users.values()} == {
        "service": "service",
        "operator": "operator",
        "ci": "ci",
    }
    # The stack runs as the service user; nats-server includes the users by a relative path.
    assert config.nats_user == "service"
    assert config.nats_password == roster.service.password
    assert 'include "../secrets/nats-auth.conf"' in config.nats_config
    assert f"secrets={secrets_dir}" in config.announce
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    for path in secrets_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_passwords_survive_a_restart_and_new_users_are_added(tmp_path: Path) -> None:
    stack_config(up_args(tmp_path, "--secure", "--agent", "n1"))
    secrets_dir = tmp_path / "data" / "secrets"
    first = security.load_roster(secrets_dir)
    stack_config(up_args(tmp_path, "--secure", "--agent", "n2", "--ci", "ci-pay=payments,web"))
    second = security.load_roster(secrets_dir)
    for name, user in first.users.items():
        assert second.users[name].password == user.password, name  # agents keep working
    assert second.users["agent-n2"].node == "n2"
    assert second.users["ci-pay"].namespaces == ("payments", "web")
    assert sorted(p.stem for p in secrets_dir.glob("*.env")) == sorted(second.users)


def test_the_include_pins_each_role(tmp_path: Path) -> None:
    roster = security.load_roster(tmp_path)
    roster.add_ci("ci-pay", ["payments"])
    roster.add_agent("n1")
    roster.add_operator("alice")
    text = security.render_authorization(roster)
    users = {
        line.split('user: "')[1].split('"')[0]: line
        for line in text.splitlines()
        if "user:" in line
    }
    assert '"cfg.api.store.propose.payments.ci-pay"' in users["ci-pay"]
    assert '"cfg.event.payments.>"' in users["ci-pay"]
    assert '"cfg.txn.*.*.vote.n1"' in users["agent-n1"]
    assert '"cfg.node.n1.heartbeat"' in users["agent-n1"]
    assert "allow_responses: true" in users["agent-n1"]
    assert '"cfg.api.store.approve.alice"' in users["alice"]
    # Nobody but services may write these, and the denies say so explicitly.
    for name in ("ci-pay", "agent-n1", "alice"):
        deny = users[name].split("deny: [")[1]
        for subject in ("cfg.txn.*.*.decision", "cfg.txn.*.*.prepare", "$KV.>", "cfg.change.*"):
            assert json.dumps(subject) in deny, (name, subject)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--secure", "--agent", "Bad.Node"), "node id"),
        (("--secure", "--ci", "ci=no.such"), "namespace"),
        (("--secure", "--operator", "Alice"), "operator name"),
        (("--tls-cert", "x.pem"), "go together"),
        (("--secure", "--tls-cert", "missing.pem", "--tls-key", "missing.key"), "no such file"),
        (("--secure", "--nats-url", "nats://127.0.0.1:4222"), "--nats-url"),
        (("--agent", "n1"), "needs --secure"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path: Path, flags: tuple[str, ...], needle: str) -> None:
    with pytest.raises(CliError, match=needle) as refused:
        stack_config(up_args(tmp_path, *flags))
    assert refused.value.code == USAGE


def test_a_role_cannot_change_under_a_name(tmp_path: Path) -> None:
    roster = security.load_roster(tmp_path)
    roster.add_operator("alice")
    with pytest.raises(ValueError, match="exists already as a operator"):
        roster.add_ci("alice")
    with pytest.raises(ValueError, match="cannot be removed"):
        roster.remove("service")


def test_the_module_adds_and_removes_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert security.main(["--data-dir", str(data), "--agent", "n7"]) == 0
    out = capsys.readouterr().out
    assert "agent-n7" in out and "no stack runs there" in out
    assert security.main(["--data-dir", str(data), "--remove", "agent-n7"]) == 0
    assert not (data / "secrets" / "agent-n7.env").exists()
    assert security.main(["--data-dir", str(data), "--remove", "nobody"]) == 1
    assert "no user 'nobody'" in capsys.readouterr().err


def test_the_module_renders_for_production(tmp_path: Path) -> None:
    out = tmp_path / "prod"
    assert security.main(["--secrets-dir", str(out), "--ci", "ci-pay=payments"]) == 0
    assert (out / "nats-auth.conf").exists()
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    # No stray temporary files (they are written beside the target, then renamed).
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
