"""What the commands print reads as one voice: help without source markup, a duration's unit
said once, a paused rollout not "baking" past its bake, no "at +-" for a node not tried yet,
and one form for a service acting (``<service>@<instance>``)."""

from __future__ import annotations

import argparse
import os
import socket
from datetime import UTC, datetime, timedelta

from confbus.cli.commands.events import describe
from confbus.cli.commands.rollout import render_rollout
from confbus.cli.main import build_parser
from confbus.runtime.settings import Settings
from confbus.schemas.api.dist import RolloutInfo, WaveInfo
from confbus.schemas.api.health import RuleResult
from confbus.schemas.events import HealthVerdictEvent, NodeOutcome, RolloutCompleted

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def test_every_help_is_plain_text() -> None:
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert len(commands.choices) > 15
    for name, sub in {"confbus": parser, **commands.choices}.items():
        text = sub.format_help()
        for markup in ("``", "```", "**"):
            assert markup not in text, (name, markup, text)
    doctor = commands.choices["doctor"].format_help()
    assert "(warn lines do not fail it)" in doctor and "- nats — the server" in doctor


def test_a_duration_says_its_unit_once() -> None:
    ev = RolloutCompleted(
        namespace="web", rollout_id="r1", version=3, seconds=0.116598, actor="distributor@h-1"
    )
    line = describe(ev)
    assert "seconds=0.117" in line and "0.116598" not in line and "0.117s" not in line, line


def test_a_verdict_lists_its_rules_by_outcome_not_as_a_repr() -> None:
    ev = HealthVerdictEvent(
        namespace="web", version=1, nodes=["n1"], verdict="no_data", actor="health-watcher@h-1",
        rules=[
            RuleResult(rule="health-endpoint", value=None, threshold=500.0, ok=None),
            RuleResult(rule="error-rate", value=0.004405, threshold=0.2, ok=True),
        ],
    )  # fmt: skip
    line = describe(ev)
    assert "rules=health-endpoint:no-data,error-rate:0.004405(ok)" in line, line
    assert "RuleResult(" not in line


def _paused_in_a_bake(committed_ago: float, state: str = "paused") -> RolloutInfo:
    return RolloutInfo(
        rollout_id="r1",
        namespace="web",
        version=2,
        strategy="canary:1",
        state=state,  # type: ignore[arg-type]
        bake_s=3.0,
        current_wave=0,
        waves=[
            WaveInfo(
                index=0,
                nodes=["n1"],
                state="baking",
                committed_at=NOW - timedelta(seconds=committed_ago),
            ),
            WaveInfo(index=1, nodes=["n2"], state="pending"),
        ],
        report=[
            NodeOutcome(node="n1", outcome="applied", seconds=0.25, wave=0),
            NodeOutcome(node="n2", outcome="pending", wave=1),
        ],
    )


def test_a_paused_rollout_past_its_bake_is_not_baking() -> None:
    text = render_rollout(_paused_in_a_bake(6.0), now=NOW)
    assert "⏸ 0: baked, paused" in text and "confbus resume web to go on" in text, text
    assert "▶" not in text and "0: baking" not in text
    n2 = next(line for line in text.splitlines() if line.strip().startswith("n2"))
    assert "at +" not in n2 and "attempts" not in n2, n2
    n1 = next(line for line in text.splitlines() if line.strip().startswith("n1"))
    assert "at +0.25s" in n1, n1
    running = render_rollout(_paused_in_a_bake(1.2, "running"), now=NOW)
    assert "▶ 0: baking 1s of 3s" in running, running
    over = render_rollout(_paused_in_a_bake(4.0, "running"), now=NOW)
    assert "▶ 0: baked, awaiting the verdict" in over, over


def test_a_service_acts_as_service_at_instance() -> None:
    process = f"{socket.gethostname()}-{os.getpid()}"
    for service in ("coordinator", "distributor", "health-watcher", "rollbacker"):
        assert Settings(service=service).instance_id == f"{service}@{process}"
    # An explicit --instance (confbus up --ha: coordinator-1) is the name it acts under.
    assert Settings(service="coordinator", instance="coordinator-1").instance_id == (
        "coordinator-1"
    )
