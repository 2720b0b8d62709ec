"""``confbus up``'s one ready line: a service's extra ``<name>_url`` is shown whole, and wins
over its bare ``<name>_port`` (the health-watcher announces both for its Alertmanager
receiver, and Alertmanager needs the path)."""

from __future__ import annotations

import io
from pathlib import Path

from confbus.cli.stack import Child, ServiceSpec, ready_line


def child(name: str, ready: dict[str, object]) -> Child:
    spec = ServiceSpec(name, f"confbus.{name.replace('-', '_')}")
    return Child(spec, Path("/dev/null"), io.BytesIO(), http_port=8000, ready=dict(ready))


def test_a_url_is_shown_whole_and_wins_over_its_port() -> None:
    watcher = child(
        "health-watcher",
        {
            "event": "ready",
            "http_port": 8000,
            "alertmanager_port": 9093,
            "alertmanager_url": "http://127.0.0.1:9093/alertmanager",
        },
    )
    other = child("console", {"event": "ready", "http_port": 8001, "ui_port": 8080})
    line = ready_line("nats://127.0.0.1:4222", Path("/data"), [watcher, other])
    assert line.endswith(
        "alertmanager=http://127.0.0.1:9093/alertmanager ui=http://127.0.0.1:8080"
    ), line
