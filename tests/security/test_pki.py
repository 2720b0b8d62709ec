"""The certificates ``confbus up --ha --secure`` makes (``confbus.cli.security.pki``, ``cluster``)
and the stack configured with them — no process started: made once with the right names,
usages and modes; kept on the next start; made again only when one would no longer do."""

from __future__ import annotations

import argparse
import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confbus.cli import security
from confbus.cli.commands.up import stack_config
from confbus.cli.exitcodes import USAGE, CliError
from confbus.cli.main import build_parser
from confbus.cli.security import pki
from confbus.procs.etcd import PEER_CN, etcd_binary

needs_etcd = pytest.mark.skipif(etcd_binary() is None, reason="etcd is not installed")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def up_args(tmp_path: Path, *flags: str) -> argparse.Namespace:
    return build_parser().parse_args(
        ["up", "--ha", "--data-dir", str(tmp_path / "data"), "--nats-port", "0", *flags]
    )


def test_a_leaf_names_its_hosts_and_usages_and_chains_to_the_ca(tmp_path: Path) -> None:
    files = pki.ensure(
        tmp_path,
        [pki.Leaf("nats-1"), pki.Leaf("client", hosts=(), server=False, common_name="who")],
    )
    server = load(files["nats-1"].cert)
    server.verify_directly_issued_by(load(tmp_path / pki.CA_CERT))
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    client = load(files["client"].cert)
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "who"
    # Python's own TLS takes them as they are: the CA to verify by, the leaf to present.
    files["nats-1"].client_context()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"ca.key": 0o600, "ca.pem": 0o644, "nats-1.key": 0o600, "nats-1.pem": 0o644,
                     "client.key": 0o600, "client.pem": 0o644}  # fmt: skip


def test_what_is_made_is_kept_and_remade_only_when_it_would_not_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaves = [pki.Leaf("a"), pki.Leaf("b")]
    pki.ensure(tmp_path, leaves)
    first = contents(tmp_path)
    pki.ensure(tmp_path, leaves)
    assert contents(tmp_path) == first, "a second start must present the same certificates"

    # A name it must now carry: that leaf is made again, by the same CA; the other is kept.
    pki.ensure(tmp_path, [pki.Leaf("a", hosts=("127.0.0.1", "localhost", "nats-a")), leaves[1]])
    again = contents(tmp_path)
    assert again["a.pem"] != first["a.pem"] and again["a.key"] != first["a.key"]
    assert again["b.pem"] == first["b.pem"] and again["ca.pem"] == first["ca.pem"]

    # One that expires within RENEW_BEFORE is renewed.
    monkeypatch.setattr(pki, "LEAF_DAYS", 10)
    pki.ensure(tmp_path, [pki.Leaf("short")])
    monkeypatch.undo()
    short = load(tmp_path / "short.pem").not_valid_after_utc
    assert short < dt.datetime.now(dt.UTC) + pki.RENEW_BEFORE
    pki.ensure(tmp_path, [pki.Leaf("short")])
    assert load(tmp_path / "short.pem").not_valid_after_utc > short

    # One signed by another CA (copied in), or without its key, is replaced.
    other = tmp_path.parent / "other"
    pki.ensure(other, [pki.Leaf("b")])
    (tmp_path / "b.pem").write_bytes((other / "b.pem").read_bytes())
    (tmp_path / "b.key").write_bytes((other / "b.key").read_bytes())
    (tmp_path / "a.key").unlink()
    pki.ensure(tmp_path, leaves)
    ca = load(tmp_path / pki.CA_CERT)
    for name in ("a", "b"):
        load(tmp_path / f"{name}.pem").verify_directly_issued_by(ca)
        ctx = ssl.create_default_context(cafile=str(tmp_path / pki.CA_CERT))
        ctx.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")  # key matches


@needs_etcd
def test_up_ha_secure_makes_the_cluster_secrets_once_and_hands_them_over(tmp_path: Path) -> None:
    config = stack_config(up_args(tmp_path, "--secure", "--agent", "n1"))
    sec = config.ha_security
    assert sec is not None and sec.etcd_client is not None
    secrets = tmp_path / "data" / "secrets"
    tls = secrets / "tls"
    assert sec.ca == tls / "ca.pem" and config.tls_ca == str(sec.ca)
    assert f"tls-ca={sec.ca}" in config.announce and f"secrets={secrets}" in config.announce
    assert [f.cert.name for f in sec.nats_tls] == ["nats-1.pem", "nats-2.pem", "nats-3.pem"]
    for files in sec.etcd_tls.values():  # a peer must be a member: PEER_CN
        cn = load(files.cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == PEER_CN
    assert sec.nats_config == 'include "../secrets/nats-auth.conf"'  # from nats-1/, nats-2/…
    assert len(sec.route_password) >= 40 and sec.route_password not in repr(sec)
    env = config.service_env()
    assert env["CONFBUS_TLS_CA"] == str(sec.ca)
    assert env["CONFBUS_ETCD_CERT"] == str(tls / "etcd-client.pem")
    assert env["CONFBUS_ETCD_KEY"] == str(tls / "etcd-client.key")
    assert env["CONFBUS_NATS_USER"] == "service"
    (secrets / "agent-n1.env").read_text()  # the agent's login, as with single-node --secure

    before = {**contents(tls), "route": sec.route_password.encode()}
    again = stack_config(up_args(tmp_path, "--secure"))
    assert again.ha_security is not None
    after = {**contents(tls), "route": again.ha_security.route_password.encode()}
    assert after == before, "a restart must keep the CA, every certificate and the route login"


@needs_etcd
@pytest.mark.parametrize(
    "flags",
    [
        ("--tls-cert", "server.pem", "--tls-key", "server.key"),
        ("--secure", "--tls-cert", "server.pem", "--tls-key", "server.key"),
    ],
)
def test_ha_takes_no_certificate_of_the_single_node_stack(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    with pytest.raises(CliError, match="makes the cluster's certificates itself") as refused:
        stack_config(up_args(tmp_path, *flags))
    assert refused.value.code == USAGE
    assert not (tmp_path / "data").exists()


def test_the_module_renders_a_cluster_run_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "secrets"
    argv = ["--secrets-dir", str(out), "--nats-host", "nats-1=nats.example.com,10.0.0.5",
            "--nats-host", "nats-2", "--etcd-host", "etcd-1", "--route-port", "7222"]  # fmt: skip
    assert security.main(argv) == 0
    printed = capsys.readouterr().out
    names = load(out / "tls/nats-1.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert names.value.get_values_for_type(x509.DNSName) == ["nats-1", "nats.example.com",
                                                            "localhost"]  # fmt: skip
    assert [str(a) for a in names.value.get_values_for_type(x509.IPAddress)] == [
        "10.0.0.5", "127.0.0.1",
    ]  # fmt: skip
    cn = load(out / "tls/etcd-1.pem").subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn[0].value == PEER_CN
    route = (out / "nats-route.conf").read_text()
    password = (out / "nats-route.password").read_text().strip()
    assert f'"nats-route://route:{password}@nats-1:7222"' in route
    assert f'"nats-route://route:{password}@nats-2:7222"' in route
    assert f'authorization {{user: "route", password: "{password}"' in route
    assert stat.S_IMODE((out / "nats-route.conf").stat().st_mode) == 0o600
    assert f"key      {out / 'tls/etcd-client.key'}" in printed
    assert password not in printed
    # Again: the same files, nothing new.
    before = contents(out / "tls")
    assert security.main(argv) == 0
    assert contents(out / "tls") == before


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--nats-host", "../etc"), "expected a host name"),
        (("--nats-host", "ca"), "names a file of its own"),
        (("--nats-host", "a", "--etcd-host", "a"), "named twice"),
    ],
)
def test_bad_hosts_are_refused_before_anything_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], needle: str
) -> None:
    assert security.main(["--secrets-dir", str(tmp_path / "s"), *flags]) == 1
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "s" / "tls").exists()


def test_cluster_certificates_need_a_secrets_dir(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        security.main(["--nats-host", "nats-1"])
    assert exited.value.code == 2
    assert "give --secrets-dir" in capsys.readouterr().err
