"""``compose/alerts.yml``, confbus's alerting rules on its own health, checked by the real
``promtool`` (Debian's ``prometheus`` package): the file and the Prometheus config that loads it
are valid, and each alert fires — with its labels and words — on series that should fire it,
and not before its ``for``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
RULES = COMPOSE / "alerts.yml"

promtool = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    promtool is None,
    reason="needs promtool: apt-get install -y prometheus (make test does, as root)",
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    assert promtool is not None
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_the_rules_and_the_config_that_loads_them_are_valid() -> None:
    done = run("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 rules found" in done.stdout
    done = run("check", "config", str(COMPOSE / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert (
        "./alerts.yml:/etc/prometheus/alerts.yml:ro" in compose["services"]["prometheus"]["volumes"]
    )


def case(
    alert: str,
    series: dict[str, str],
    quiet_at: str,
    firing_at: str,
    labels: dict[str, str],
    annotations: dict[str, str],
) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            {"eval_time": quiet_at, "alertname": alert, "exp_alerts": []},
            {
                "eval_time": firing_at,
                "alertname": alert,
                "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
            },
        ],
    }


def annotations_of(alert: str) -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    rule = next(r for g in doc["groups"] for r in g["rules"] if r["alert"] == alert)
    return dict(rule["annotations"])


def test_each_alert_fires_on_the_series_it_is_about(tmp_path: Path) -> None:
    cases = [
        case(
            "ConfbusServiceDown",
            {'up{job="confbus-coordinator",instance="coordinator-1:9100"}': "1 0 0 0"},
            "1m",
            "3m",
            {"severity": "page", "job": "confbus-coordinator", "instance": "coordinator-1:9100"},
            {
                "summary": "coordinator-1:9100 (confbus-coordinator) has not answered a scrape "
                "for 1m"
            },
        ),
        case(
            "ConfbusTransactionInDoubt",
            {'confbus_coordinator_oldest_in_doubt_seconds{instance="c1"}': "0 30 90 150 210"},
            "2m",
            "4m",
            {"severity": "page"},
            {
                **annotations_of("ConfbusTransactionInDoubt"),
                "summary": "a transaction has been in doubt for 3m 30s",
            },
        ),
        case(
            "ConfbusRolloutStuck",
            {
                'confbus_distributor_waves_total{outcome="retrying"}': "0+1x20",
                'confbus_distributor_rollouts_total{outcome="completed"}': "5+0x20",
            },
            "3m",
            "12m",
            {"severity": "ticket"},
            annotations_of("ConfbusRolloutStuck"),
        ),
        case(
            "ConfbusRollbackStuck",
            {'confbus_rollbacker_rollbacks_total{outcome="stuck"}': "0 0 0 1 1"},
            "2m",
            "4m",
            {"severity": "page"},
            annotations_of("ConfbusRollbackStuck"),
        ),
        case(
            "ConfbusAgentsAway",
            {'confbus_distributor_nodes{liveness="gone",instance="d1"}': "0 1 1 1 1 1"},
            "2m",
            "4m",
            {"severity": "ticket"},
            {
                **annotations_of("ConfbusAgentsAway"),
                "summary": "1 agent(s) have not sent a heartbeat",
            },
        ),
        case(
            "ConfbusDeadLetters",
            {'confbus_version_store_changes_messages_total{outcome="dead_lettered"}': "0 0 0 2 2"},
            "2m",
            "4m",
            {"severity": "ticket"},
            annotations_of("ConfbusDeadLetters"),
        ),
        case(
            "ConfbusNotificationsFailing",
            {'confbus_rollbacker_webhook_deliveries_total{outcome="failed"}': "0 0 0 1 1"},
            "2m",
            "4m",
            {"severity": "ticket"},
            annotations_of("ConfbusNotificationsFailing"),
        ),
    ]
    fired = {c["alert_rule_test"][1]["alertname"] for c in cases}
    doc = yaml.safe_load(RULES.read_text())
    assert fired == {r["alert"] for g in doc["groups"] for r in g["rules"]}  # every alert
    spec = tmp_path / "alerts.test.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": cases})
    )
    done = run("test", "rules", str(spec))
    assert done.returncode == 0, done.stdout + done.stderr
