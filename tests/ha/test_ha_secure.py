"""``confbus up --ha --secure`` as a real process: it serves, with its secrets where they belong
and in no log; every NATS node refuses an unauthenticated client and a client without the CA on
its client port *and* its route port; every etcd member does the same on its client and its peer
port, and takes as a peer only another member. Each refusal is shown beside the same probe made
with everything a legitimate party holds, which gets through.

The HA fault test runs on this shape too (``test_ha_faults.py``, ``[secure]``).
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import stat
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import nats.errors
import pytest

from confbus.cli import security
from confbus.cli.security import pki
from confbus.procs.etcd import PEER_CN
from confbus.procs.ports import free_port_run
from confbus.procs.tls import TlsFiles
from confbus.runtime.bus import connect
from confbus.runtime.errors import Unavailable
from confbus.runtime.etcd_tls import EtcdTls
from confbus.version_store.errors import StoreUnavailable
from confbus.version_store.storage.etcd_conn import EtcdConnection
from tests.cli.procs import run_confbus
from tests.ha import probes
from tests.ha.hastack import HaStack, needs_etcd, start_ha
from tests.ha.probes import PONG, Holding
from tests.helpers import eventually

pytestmark = needs_etcd

AUTHORIZATION_VIOLATION = "-ERR 'Authorization Violation'"
NOT_TRUSTED = "this side does not trust the server"
TLS_REFUSED = "tls refused"


@dataclass
class Secured:
    stack: HaStack
    etcd_port: int  # members: clients on E, E+2, E+4; peers on E+1, E+3, E+5
    rogue: TlsFiles  # a certificate from another CA, with a member's common name

    def outsiders(self, holding: Holding) -> dict[str, Holding]:
        """What someone without ``holding`` may present instead: no TLS, no CA to check the
        server by, no certificate, or one from another CA."""
        return {
            "no TLS": replace(holding, plaintext=True),
            "no CA": replace(holding, ca=None),
            "no certificate": replace(holding, cert=None),
            "another CA's certificate": replace(holding, cert=self.rogue),
        }

    @property
    def tls(self) -> Path:
        return self.stack.data_dir / "secrets" / "tls"

    @property
    def ca(self) -> Path:
        return self.tls / "ca.pem"

    def files(self, name: str) -> TlsFiles:
        return TlsFiles(self.ca, self.tls / f"{name}.pem", self.tls / f"{name}.key")

    def user(self, name: str) -> tuple[str, str]:
        env = self.stack.env(name)
        return env["CONFBUS_NATS_USER"], env["CONFBUS_NATS_PASSWORD"]

    @property
    def route_password(self) -> str:
        return (self.stack.data_dir / "secrets" / "nats-route.password").read_text().strip()

    def route_port(self, monitor_url: str) -> int:
        """The route port as the server itself reports it (its ``/varz``, over HTTPS)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        with urllib.request.urlopen(f"{monitor_url}/varz", timeout=5, context=context) as r:
            return int(json.loads(r.read())["cluster"]["cluster_port"])


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("ha-secure")
    etcd_port = free_port_run(6)
    stack = start_ha(root / "data", "--secure", "--etcd-port", str(etcd_port))
    try:
        intruder = pki.Leaf("intruder", common_name=PEER_CN)
        rogue = pki.ensure(root / "rogue-ca", [intruder])["intruder"]
        yield Secured(stack, etcd_port, rogue)
    finally:
        stack.cleanup()


def test_it_serves_with_its_secrets_kept_private_and_out_of_every_log(secured: Secured) -> None:
    stack = secured.stack
    assert f" secrets={stack.data_dir / 'secrets'}" in stack.line
    assert stack.tls_ca == str(secured.ca)
    assert stat.S_IMODE(secured.tls.stat().st_mode) == 0o700
    for path in secured.tls.iterdir():
        mode = 0o600 if path.suffix == ".key" else 0o644  # certificates are public
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    for i in (1, 2, 3):  # their routes carry the route password
        conf = stack.data_dir / f"nats-{i}" / "nats-server.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    state = stack.state()["cluster"]
    assert all(url.startswith("https://") for url in state["monitor"])
    secrets = [secured.route_password, *(secured.user(u)[1] for u in ("service", "ci"))]
    secrets += [
        "".join(path.read_text().splitlines()[1:-1])[:40]  # the body of every private key
        for path in secured.tls.glob("*.key")
    ]
    logs = {p.name: p.read_text(errors="replace") for p in (stack.data_dir / "logs").iterdir()}
    logs["stderr of confbus up"] = stack.proc.err.text()
    leaked = [f"{where}" for where, text in logs.items() for s in secrets if s in text]
    assert not leaked, f"a secret in {leaked}"


@pytest.mark.parametrize("server", [1, 2, 3])
def test_every_nats_node_refuses_outsiders_on_its_client_port(
    secured: Secured, server: int
) -> None:
    port = int(secured.stack.urls[server - 1].rsplit(":", 1)[1])
    user, password = secured.user("service")
    client = Holding(ca=secured.ca, user=user, password=password)
    cases = {
        "everything": client,
        "no TLS": replace(client, ca=None, plaintext=True),
        "no CA": replace(client, ca=None),
        "no user": replace(client, user=None, password=None),
        "a wrong password": replace(client, password=password + "x"),
    }
    answers = {case: probes.nats(port, holding) for case, holding in cases.items()}
    assert answers["everything"] == PONG, answers
    assert answers["no TLS"] in ("closed", "-ERR 'Secure Connection - TLS Required'"), answers
    assert answers["no CA"].startswith(NOT_TRUSTED), answers
    assert answers["no user"] == answers["a wrong password"] == AUTHORIZATION_VIOLATION, answers


@pytest.mark.anyio
@pytest.mark.parametrize("server", [1, 2, 3])
async def test_every_nats_node_refuses_the_real_client_without_a_user_or_the_ca(
    secured: Secured, server: int
) -> None:
    url = secured.stack.urls[server - 1]
    user, password = secured.user("ci")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect(url, name="no-user", tls_ca=str(secured.ca), allow_reconnect=False)
    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await connect(url, name="no-ca", user=user, password=password, allow_reconnect=False)
    bus = await connect(
        url, name="ci", user=user, password=password, tls_ca=str(secured.ca), allow_reconnect=False
    )
    await bus.close()


@pytest.mark.parametrize("server", [1, 2, 3])
def test_every_nats_node_refuses_outsiders_on_its_route_port(secured: Secured, server: int) -> None:
    monitor = secured.stack.state()["cluster"]["monitor"][server - 1]
    port = secured.route_port(monitor)
    # Another server's certificate and the route login: what its routes present.
    peer = Holding(secured.ca, secured.files(f"nats-{1 + server % 3}"), "route",
                   secured.route_password)  # fmt: skip
    service, service_password = secured.user("service")
    cases = {
        "everything": peer,
        **secured.outsiders(peer),
        "no route login": replace(peer, user=None, password=None),
        "a client's login": replace(peer, user=service, password=service_password),
    }
    answers = {case: probes.nats(port, holding, route=True) for case, holding in cases.items()}
    assert answers["everything"] == PONG, answers
    assert answers["no TLS"] == "closed", answers
    assert answers["no CA"].startswith(NOT_TRUSTED), answers
    assert answers["no certificate"].startswith(TLS_REFUSED), answers
    assert answers["another CA's certificate"].startswith(TLS_REFUSED), answers
    assert answers["no route login"] == AUTHORIZATION_VIOLATION, answers
    assert answers["a client's login"] == AUTHORIZATION_VIOLATION, answers


def _refused(answer: str) -> bool:
    return answer.startswith((NOT_TRUSTED, TLS_REFUSED, "connection failed"))


@pytest.mark.parametrize("member", [1, 2, 3])
def test_every_etcd_member_refuses_outsiders_on_its_client_port(
    secured: Secured, member: int
) -> None:
    port = secured.etcd_port + 2 * (member - 1)
    client = Holding(ca=secured.ca, cert=secured.files("etcd-client"))
    cases = {
        "everything": client,
        **secured.outsiders(client),
    }
    answers = {case: probes.https(port, "/health", holding) for case, holding in cases.items()}
    assert answers["everything"] == '200 {"health":"true"}', answers
    assert answers["no CA"].startswith(NOT_TRUSTED), answers
    for case in ("no TLS", "no certificate", "another CA's certificate"):
        assert _refused(answers[case]), (case, answers)


@pytest.mark.parametrize("member", [1, 2, 3])
def test_every_etcd_member_takes_only_members_on_its_peer_port(
    secured: Secured, member: int
) -> None:
    port = secured.etcd_port + 2 * (member - 1) + 1
    peer = Holding(ca=secured.ca, cert=secured.files(f"etcd-e{1 + member % 3}"))
    cases = {
        "a member": peer,
        **secured.outsiders(peer),
        # Signed by the right CA, but not a member's: the version-store's, a nats-server's.
        "the store's certificate": replace(peer, cert=secured.files("etcd-client")),
        "a nats-server's certificate": replace(peer, cert=secured.files("nats-1")),
    }
    answers = {case: probes.https(port, "/version", holding) for case, holding in cases.items()}
    assert answers["a member"].startswith('200 {"etcdserver":"3.4'), answers
    assert answers["no CA"].startswith(NOT_TRUSTED), answers
    for case in list(cases)[1:]:
        assert _refused(answers[case]), (case, answers)


@pytest.mark.anyio
async def test_the_store_connects_to_etcd_over_tls_with_its_certificate_and_not_without(
    secured: Secured,
) -> None:
    """The version-store's own connection (``EtcdConnection`` with aetcd's client on a TLS
    channel): its certificate gets every member's status; aetcd's plain channel, or TLS without
    the certificate, gets none."""
    files = secured.files("etcd-client")
    full = EtcdTls(files.ca, files.cert, files.key)
    for member in (1, 2, 3):
        endpoint = f"127.0.0.1:{secured.etcd_port + 2 * (member - 1)}"
        for tls in (None, EtcdTls(files.ca)):
            conn = EtcdConnection([endpoint], tls=tls, request_timeout_s=1, unavailable_after_s=1)
            try:
                with pytest.raises(StoreUnavailable, match="etcd unavailable for status"):
                    await conn.status()
            finally:
                await conn.close()
        conn = EtcdConnection([endpoint], tls=full, request_timeout_s=2)
        try:
            with anyio.fail_after(10):
                status = await conn.status()
            assert status.leader != 0
        finally:
            await conn.close()


def test_doctor_asks_the_etcd_members_over_tls_with_the_stores_certificate(
    secured: Secured,
) -> None:
    """``doctor --store etcd://…`` with the CA and the client certificate: every member
    answers; without them the members close the plain connection — reported as no quorum,
    with what to give."""
    stack, files = secured.stack, secured.files("etcd-client")
    env = {**stack.env("service"), "CONFBUS_NATS_URL": stack.url}
    doctor = ("doctor", "--store", stack.store_url, "--agents-wait", "0.2")
    tls = ("--etcd-ca", str(files.ca), "--etcd-cert", str(files.cert), "--etcd-key", str(files.key))
    r = run_confbus(*doctor, *tls, env=env)
    assert "ok    store       etcd: 3/3 members answer, leader e" in r.stdout, r.stdout + r.stderr
    assert "eof_received" not in r.stderr, r.stderr  # asyncio's noise about TLS, not for users
    plain = run_confbus(*doctor, env=env)
    assert plain.returncode == 1, plain.stdout + plain.stderr
    assert "etcd: 0/3 members answer: no quorum" in plain.stdout, plain.stdout
    assert "if they serve TLS, give --etcd-ca (and --etcd-cert/--etcd-key)" in plain.stdout
    missing = run_confbus(*doctor, "--etcd-ca", str(secured.tls / "nope.pem"), env=env)
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.strip().endswith(f"etcd TLS: {secured.tls / 'nope.pem'}: no such file")


def test_the_ports_probed_here_are_every_port_the_servers_listen_on(secured: Secured) -> None:
    """Nothing else to knock on: each nats-server listens on its client, route and monitoring
    ports, each etcd member on its client and peer ports — all on 127.0.0.1 — and monitoring
    is HTTPS only."""
    stack = secured.stack
    state = stack.state()["cluster"]
    for i in (1, 2, 3):
        monitor = state["monitor"][i - 1]
        expected = {
            int(stack.urls[i - 1].rsplit(":", 1)[1]),
            secured.route_port(monitor),
            int(monitor.rsplit(":", 1)[1]),
        }
        assert listening(state["pids"][f"nats-{i}"]) == expected
        monitor_port = int(monitor.rsplit(":", 1)[1])
        assert probes.https(monitor_port, "/varz", Holding(plaintext=True)).startswith("400")
        assert probes.https(monitor_port, "/varz", Holding()).startswith(NOT_TRUSTED)
        client = secured.etcd_port + 2 * (i - 1)
        assert listening(state["pids"][f"etcd-e{i}"]) == {client, client + 1}


def listening(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (Linux's /proc), each checked to be loopback."""
    fds = Path(f"/proc/{pid}/fd")
    links = {os.readlink(fd) for fd in fds.iterdir()}
    inodes = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if inode in inodes and state == "0A":  # LISTEN
                address, _, port = local.partition(":")
                assert address in LOOPBACK_HEX, f"pid {pid} listens on {local}"
                ports.add(int(port, 16))
    return ports


LOOPBACK_HEX = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")


@pytest.mark.anyio
async def test_a_user_added_to_the_running_stack_logs_in_on_all_three_servers(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m confbus.cli.security --data-dir DIR --agent n9`` writes the user and makes
    every nats-server of the HA stack reload its config (SIGHUP to each)."""
    stack = secured.stack
    assert security.main(["--data-dir", str(stack.data_dir), "--agent", "n9"]) == 0
    out = capsys.readouterr().out
    assert all(f"nats-{i} (pid " in out for i in (1, 2, 3)), out
    user, password = secured.user("agent-n9")

    async def logs_in(url: str) -> bool:
        try:
            bus = await connect(url, name="n9", user=user, password=password,
                                tls_ca=str(secured.ca), allow_reconnect=False)  # fmt: skip
        except (nats.errors.Error, Unavailable):
            # Not reloaded yet: Authorization Violation, or the server drops the connection
            # before nats-py reads the -ERR line (then connect says "Connection lost").
            return False
        await bus.close()
        return True

    for url in stack.urls:
        await eventually(functools.partial(logs_in, url), timeout=10, what=f"agent-n9 on {url}")
