"""``compose/`` without Docker: every file parsed and checked against the real thing — each
service's command against its CLI (``--help``), ports, volumes (every secret one that the
README's ``python -m confbus.cli.security`` command makes), Prometheus targets, the NATS configs
through ``nats-server -t`` with the files mounted where the compose file mounts them, the etcd
flags against ``etcd --help``, the dashboard's metrics against what the services really expose,
and ``docker compose config`` where the compose plugin exists."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from confbus.cli import security
from confbus.cli.commands.up import SERVICES
from confbus.procs.etcd import PEER_CN, etcd_binary
from confbus.procs.nats import nats_server_binary
from confbus.runtime.http import http_get
from confbus.schemas.streams import MAX_PAYLOAD
from tests.e2e.stack import Stack, start_stack

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose"
NATS = ("nats-1", "nats-2", "nats-3")
ETCD = ("etcd-1", "etcd-2", "etcd-3")
# The services of the stack: ``confbus up``'s table is the list of record.
PACKAGES = {spec.name: spec.module.removeprefix("confbus.") for spec in SERVICES}


def load(path: str) -> Any:
    return yaml.safe_load((COMPOSE / path).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load("docker-compose.yml")
    return doc


def readme_command() -> list[str]:
    """The README's ``python -m confbus.cli.security --secrets-dir compose/secrets …``, as argv
    after the module name."""
    text = (COMPOSE / "README.md").read_text().replace("\\\n", " ")
    m = re.search(
        r"^python -m confbus\.cli\.security (--secrets-dir compose/secrets .*)$", text, re.M
    )
    assert m, "compose/README.md lost its command that makes the secrets"
    return shlex.split(m.group(1))


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``compose/secrets/`` as the README's command makes it (into a temporary directory)."""
    out = tmp_path_factory.mktemp("compose") / "secrets"
    argv = readme_command()
    argv[argv.index("--secrets-dir") + 1] = str(out)
    assert security.main(argv) == 0
    return out


def mounts(compose: dict[str, Any], service: str, secrets: Path) -> dict[str, Path]:
    """Where ``service`` finds each file mounted from ``compose/``: target → the file."""
    out = {}
    for volume in compose["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./secrets/"):
            out[target] = secrets / source.removeprefix("./secrets/")
        elif source.startswith("."):
            out[target] = COMPOSE / source
    return out


def confbus_services(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Service name → its command as argv, for the services running confbus code."""
    out = {}
    for name, svc in compose["services"].items():
        command = svc.get("command")
        argv = shlex.split(command) if isinstance(command, str) else list(command or [])
        if argv[:2] == ["python", "-m"]:
            out[name] = argv
    return out


def flag(argv: list[str], name: str) -> str:
    i = argv.index(name)
    return argv[i + 1]


@functools.cache
def cli_help(module: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_service_runs_twice_and_each_command_matches_its_cli(
    compose: dict[str, Any],
) -> None:
    services = confbus_services(compose)
    assert sorted(services) == sorted(f"{n}-{i}" for n in PACKAGES for i in (1, 2))
    for name, argv in services.items():
        module = argv[2]
        base = name.rsplit("-", 1)[0]
        assert module == f"confbus.{PACKAGES[base]}", name
        helptext = cli_help(module)
        for token in argv[3:]:
            if token.startswith("--"):
                assert re.search(rf"(^|\s){re.escape(token)}\b", helptext), (
                    f"{name}: {module} has no {token} flag"
                )
        assert flag(argv, "--instance") == name
        assert flag(argv, "--replicas") == "3"
        urls = flag(argv, "--nats-url").split(",")
        assert urls == [f"nats://{n}:{nats_client_port(n)}" for n in NATS]
        if base == "version-store":
            store = flag(argv, "--store").removeprefix("etcd://").split(",")
            assert store == [f"{e}:{etcd_client_port(compose, e)}" for e in ETCD]
        # The second replica waits for the first (they share a durable consumer).
        if name.endswith("-2"):
            assert compose["services"][name]["depends_on"][f"{base}-1"] == {
                "condition": "service_healthy"
            }


def test_healthchecks_and_scrape_targets_use_each_services_http_port(
    compose: dict[str, Any],
) -> None:
    services = confbus_services(compose)
    prometheus = load("prometheus.yml")
    targets = {
        t
        for job in prometheus["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    for job in prometheus["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
    for name, argv in services.items():
        port = flag(argv, "--http-port")
        assert flag(argv, "--http-host") == "0.0.0.0"  # reachable from prometheus
        assert f"{name}:{port}" in targets, f"prometheus does not scrape {name}"
        probe = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in probe
    for member in ETCD:
        assert f"{member}:{etcd_metrics_port(compose, member)}" in targets
    scraped_hosts = {t.split(":")[0] for t in targets}
    assert scraped_hosts <= set(compose["services"]), scraped_hosts - set(compose["services"])


def test_published_ports_are_unique_and_match_what_listens(compose: dict[str, Any]) -> None:
    host_ports: list[str] = []
    for name, svc in compose["services"].items():
        for mapping in svc.get("ports", []):
            host, container = str(mapping).split(":")
            host_ports.append(host)
            if name in NATS:
                assert int(container) == nats_client_port(name)
            elif name == "prometheus":
                assert container == "9090"
            elif name == "grafana":
                assert container == "3000"
            elif name == "console-1":
                assert container == flag(shlex.split(svc["command"]), "--http-port")
            else:
                pytest.fail(
                    f"{name} publishes {mapping}: only NATS, the console, prometheus, grafana do"
                )
    assert len(host_ports) == len(set(host_ports)), host_ports
    assert sorted(host_ports) == ["3000", "4222", "4223", "4224", "8080", "9090"]


def test_volumes_exist_and_are_declared(compose: dict[str, Any], secrets: Path) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), (name, volume)
            if source.startswith("./secrets/"):  # made by the README's command, not in git
                made = secrets / source.removeprefix("./secrets/")
                assert made.is_file(), f"{name}: the README's command makes no {source}"
            elif source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    build = compose["x-confbus-service"]["build"]
    assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == COMPOSE / "Dockerfile"


def test_dockerfile_installs_the_project_from_python_slim() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^RUN pip install \"?\.(\[etcd\])?\"?$", text, re.M)
    for line in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for source in line.split():
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


# -- NATS ---------------------------------------------------------------------------------------


def nats_conf(name: str) -> str:
    return (COMPOSE / "nats" / f"{name}.conf").read_text()


def nats_client_port(name: str) -> int:
    m = re.search(r"^listen: [\d.]+:(\d+)$", nats_conf(name), re.M)
    assert m, name
    return int(m.group(1))


@pytest.mark.parametrize("name", NATS)
def test_nats_configs_parse_and_form_one_cluster(
    compose: dict[str, Any], secrets: Path, tmp_path: Path, name: str
) -> None:
    # The container's /etc/nats, from the compose file's mounts: every path the config names
    # must be mounted there, or nats-server -t fails.
    root = tmp_path / "container"
    for target, source in mounts(compose, name, secrets).items():
        (root / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / target.lstrip("/"))
    conf = root / "etc/nats/nats.conf"
    conf.write_text(conf.read_text().replace("/etc/nats/", f"{root}/etc/nats/"))
    done = subprocess.run(
        [nats_server_binary(), "-c", str(conf), "-t"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = nats_conf(name)
    assert f"server_name: {name}\n" in text
    assert "sync_interval: always" in text
    assert f"max_payload: {MAX_PAYLOAD}\n" in text
    cluster = re.search(r"^cluster \{.*?^\}", text, re.S | re.M)
    assert cluster, "no cluster block"
    assert re.search(r"^  tls \{[^}]*verify: true", cluster.group(0), re.M), "routes unverified"
    assert 'include "secrets/nats-route.conf"' in cluster.group(0)
    assert re.search(r"^tls \{", text, re.M) and re.search(r"^https: ", text, re.M)
    assert 'include "secrets/nats-auth.conf"' in text
    cluster_port = re.search(r"listen: [\d.]+:(\d+)", cluster.group(0))
    assert cluster_port
    routes = re.findall(
        r"nats-route://route:[^@]+@([\w-]+):(\d+)", (secrets / "nats-route.conf").read_text()
    )
    assert sorted(routes) == [(n, cluster_port.group(1)) for n in NATS]
    volumes = compose["services"][name]["volumes"]
    assert f"./nats/{name}.conf:/etc/nats/nats.conf:ro" in volumes
    assert f"./secrets/tls/{name}.pem:/etc/nats/tls/server.pem:ro" in volumes
    store = re.search(r"store_dir: (\S+)", text)
    assert store and any(m.endswith(f":{store.group(1)}") for m in volumes)


def test_the_three_nats_configs_differ_only_in_server_name() -> None:
    texts = {n: nats_conf(n).replace(n, "nats-N") for n in NATS}
    assert len(set(texts.values())) == 1


def test_every_confbus_service_logs_in_over_tls_and_the_store_reaches_etcd_so(
    compose: dict[str, Any], secrets: Path
) -> None:
    for name in confbus_services(compose):
        svc = compose["services"][name]
        assert svc["env_file"] == "./secrets/service.env"
        env = svc["environment"]
        files = mounts(compose, name, secrets)
        assert files[env["CONFBUS_TLS_CA"]] == secrets / "tls/ca.pem", name
        if name.startswith("version-store"):
            for key, made in (
                ("CA", "ca.pem"),
                ("CERT", "etcd-client.pem"),
                ("KEY", "etcd-client.key"),
            ):
                assert files[env[f"CONFBUS_ETCD_{key}"]] == secrets / "tls" / made, (name, key)
    creds = (secrets / "service.env").read_text()
    assert "CONFBUS_NATS_USER='service'" in creds and "CONFBUS_NATS_PASSWORD=" in creds


# -- etcd ---------------------------------------------------------------------------------------


def etcd_flags(compose: dict[str, Any], member: str) -> dict[str, str]:
    argv = compose["services"][member]["command"]
    return dict(a.removeprefix("--").split("=", 1) for a in argv[1:])


def etcd_client_port(compose: dict[str, Any], member: str) -> int:
    url = etcd_flags(compose, member)["listen-client-urls"]
    return int(url.rsplit(":", 1)[1])


def etcd_metrics_port(compose: dict[str, Any], member: str) -> int:
    url = etcd_flags(compose, member)["listen-metrics-urls"]
    assert url.startswith("http://")  # Prometheus scrapes it without a client certificate
    return int(url.rsplit(":", 1)[1])


def test_etcd_members_form_one_cluster_over_tls(compose: dict[str, Any], secrets: Path) -> None:
    clusters = set()
    for member in ETCD:
        flags = etcd_flags(compose, member)
        assert flags["name"] == member
        peer_port = flags["listen-peer-urls"].rsplit(":", 1)[1]
        assert flags["initial-advertise-peer-urls"] == f"https://{member}:{peer_port}"
        assert flags["advertise-client-urls"] == (
            f"https://{member}:{etcd_client_port(compose, member)}"
        )
        clusters.add(flags["initial-cluster"])
        volumes = compose["services"][member]["volumes"]
        assert volumes[-1].endswith(":" + flags["data-dir"])
        # Client and peer ports: TLS, a certificate wanted, a peer only with a member's.
        assert flags["client-cert-auth"] == flags["peer-client-cert-auth"] == "true"
        assert flags["peer-cert-allowed-cn"] == PEER_CN
        files = mounts(compose, member, secrets)
        for flag_name, made in (("cert-file", f"{member}.pem"), ("key-file", f"{member}.key"),
                                ("trusted-ca-file", "ca.pem")):  # fmt: skip
            assert files[flags[flag_name]] == secrets / "tls" / made
            assert files[flags[f"peer-{flag_name}"]] == secrets / "tls" / made
    (cluster,) = clusters
    assert cluster == ",".join(f"{m}=https://{m}:2380" for m in ETCD)


@pytest.mark.skipif(etcd_binary() is None, reason="etcd is not installed")
def test_etcd_flags_exist(compose: dict[str, Any]) -> None:
    binary = etcd_binary()
    assert binary is not None
    helptext = subprocess.run([binary, "--help"], capture_output=True, text=True)
    text = helptext.stdout + helptext.stderr
    for member in ETCD:
        for name in etcd_flags(compose, member):
            assert f"--{name}" in text, f"etcd has no --{name}"


# -- Grafana --------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((COMPOSE / "grafana/dashboards/confbus.json").read_text())
    return doc


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose: dict[str, Any]) -> None:
    sources = load("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    (source,) = sources
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = load("grafana/provisioning/dashboards/confbus.yml")["providers"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{providers[0]['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    board = dashboard()
    assert board["uid"] == "confbus" and board["panels"]
    for panel in board["panels"]:
        if panel["type"] == "row":  # a heading: no query of its own
            continue
        assert panel["datasource"]["uid"] == source["uid"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])


def dashboard_metrics() -> set[str]:
    names = set()
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            for metric in re.findall(r"\b(confbus_[a-z_]+)", target["expr"]):
                names.add(re.sub(r"_(total|bucket|sum|count)$", "", metric))
    return names


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("stack"), services=tuple(PACKAGES.values()))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.mark.anyio
async def test_the_dashboard_queries_metrics_the_services_expose(running: Stack) -> None:
    families = set()
    for proc in running.services.values():
        assert proc.ready is not None
        status, body = await http_get("127.0.0.1", proc.ready["http_port"], "/metrics")
        assert status == 200
        for family in re.findall(r"^# TYPE (\S+) ", body.decode(), re.M):
            families.add(re.sub(r"_total$", "", family))
    missing = dashboard_metrics() - families
    assert not missing, f"the dashboard queries metrics nobody exposes: {sorted(missing)}"


# -- Docker itself, where it is -------------------------------------------------------------------


def _compose_plugin() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    done = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    return done.returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="the docker compose plugin is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
