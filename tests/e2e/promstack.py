"""Real Prometheus (Debian's ``prometheus`` 2.42) and Alertmanager (``prometheus-alertmanager``
0.25) for end-to-end tests: started once per test module on free ports in a temp dir.

Prometheus scrapes what the tests put in its file_sd directory (``targets/*.json``, re-read
every second) every second, evaluates ``rules.yml`` every second and sends alerts to the
Alertmanager; the Alertmanager routes every alert to the confbus health-watcher's receiver URL
with short group timings (re-sends every 2 s while an alert fires).

``make test`` installs both with apt-get when root; elsewhere the tests skip with the reason.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from confbus.procs.ports import free_port
from confbus.procs.proc import Proc
from tests.helpers import stopped_after

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"


def binaries_or_skip() -> tuple[str, str]:
    prom, am = shutil.which(PROMETHEUS), shutil.which(ALERTMANAGER)
    if prom is None or am is None:
        pytest.skip(
            "needs Prometheus and Alertmanager: apt-get install -y prometheus "
            "prometheus-alertmanager (make test does, as root)"
        )
    return prom, am


def http_json(url: str, body: bytes | None = None, timeout: float = 2.0) -> Any:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def wait_ready(url: str, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)  # polling a process's readiness, with a deadline
    raise TimeoutError(f"{proc.name} not ready in {timeout}s:\n{proc.log_tail()}")


@dataclass
class PromStack:
    root: Path
    prometheus: Proc
    alertmanager: Proc
    prom_port: int
    am_port: int
    receiver_port: int  # the health-watcher's --alertmanager-port, the same for every test

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    @property
    def am_url(self) -> str:
        return f"http://127.0.0.1:{self.am_port}"

    def scrape(self, name: str, port: int, targets: Mapping[str, Mapping[str, str]]) -> None:
        """Scrape ``http://127.0.0.1:port/<node>/metrics`` for each node, with the node's
        labels (``confbus_node`` added). ``name`` keeps one test's targets apart."""
        groups = [
            {
                "targets": [f"127.0.0.1:{port}"],
                "labels": {"confbus_node": node, "__metrics_path__": f"/{node}/metrics", **labels},
            }
            for node, labels in targets.items()
        ]
        path = self.root / "targets" / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.rename(path)  # file_sd reads whole files only

    def unscrape(self, name: str) -> None:
        (self.root / "targets" / f"{name}.json").unlink(missing_ok=True)

    def targets_up(self, nodes: Sequence[str]) -> bool:
        active = http_json(f"{self.prom_url}/api/v1/targets")["data"]["activeTargets"]
        up = {t["labels"].get("confbus_node") for t in active if t["health"] == "up"}
        return set(nodes) <= up

    def query(self, promql: str) -> list[Any]:
        q = urllib.parse.quote(promql)
        result: list[Any] = http_json(f"{self.prom_url}/api/v1/query?query={q}")["data"]["result"]
        return result

    def fire(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> None:
        """Post one firing alert to Alertmanager, as a Prometheus would."""
        body = json.dumps([{"labels": dict(labels), "annotations": dict(annotations)}]).encode()
        http_json(f"{self.am_url}/api/v2/alerts", body)

    def stop(self) -> None:
        self.prometheus.stop()
        self.alertmanager.stop()


def prometheus_config(am_port: int, rules: Path, targets: Path) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(rules)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": "app",
                "file_sd_configs": [{"files": [str(targets / "*.json")], "refresh_interval": "1s"}],
            }
        ],
    }


def alertmanager_config(receiver_port: int) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "confbus",
            "group_by": ["alertname", "confbus_namespace"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "2s",
        },
        "receivers": [
            {
                "name": "confbus",
                "webhook_configs": [
                    {
                        "url": f"http://127.0.0.1:{receiver_port}/alertmanager",
                        "send_resolved": True,
                    }
                ],
            }
        ],
    }


def start_promstack(root: Path, rules: Mapping[str, Any]) -> PromStack:
    prom_bin, am_bin = binaries_or_skip()
    root.mkdir(parents=True, exist_ok=True)
    (root / "targets").mkdir(exist_ok=True)
    prom_port, am_port, receiver_port = free_port(), free_port(), free_port()
    rules_file = root / "rules.yml"
    rules_file.write_text(yaml.safe_dump(dict(rules)))
    prom_cfg, am_cfg = root / "prometheus.yml", root / "alertmanager.yml"
    prom_cfg.write_text(yaml.safe_dump(prometheus_config(am_port, rules_file, root / "targets")))
    am_cfg.write_text(yaml.safe_dump(alertmanager_config(receiver_port)))
    am = Proc(
        "alertmanager",
        [
            am_bin,
            f"--config.file={am_cfg}",
            f"--storage.path={root / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        root,
    ).start(wait_ready=False)
    prom = Proc(
        "prometheus",
        [
            prom_bin,
            f"--config.file={prom_cfg}",
            f"--storage.tsdb.path={root / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        root,
    ).start(wait_ready=False)
    stack = PromStack(root, prom, am, prom_port, am_port, receiver_port)
    try:
        wait_ready(f"{stack.am_url}/-/ready", am)
        wait_ready(f"{stack.prom_url}/-/ready", prom)
    except BaseException:
        stack.stop()
        raise
    return stack


def promstack_fixture(root: Path, rules: Mapping[str, Any]) -> Iterator[PromStack]:
    yield from stopped_after(start_promstack(root, rules), PromStack.stop)
