"""``confbus up --secure`` (its flags, and the stack configured by them) and
``python -m confbus.cli.security`` (users added to or removed from a stack's secrets)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from confbus.cli.commands.options import DATA_DIR, add
from confbus.cli.exitcodes import FAILED, USAGE, CliError
from confbus.cli.security.cluster import render_cluster, secure_cluster
from confbus.cli.security.roster import (
    AUTH_CONF,
    ROLES,
    SECRETS_DIR,
    SERVICE_USER,
    Roster,
    User,
    load_roster,
    render_tls,
    roster_lock,
    write_secrets,
)
from confbus.cli.stack import StackConfig
from confbus.procs.nats import quote
from confbus.schemas.names import InvalidName


def add_secure_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("security (see docs/security.md)")
    g.add_argument(
        "--secure",
        action="store_true",
        help="NATS users with subject permissions per role; credentials in DATA_DIR/secrets/ "
        "(with --ha also TLS on every NATS and etcd port, certificates in DATA_DIR/secrets/tls/)",
    )
    g.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="NAME",
        help="with --secure: an operator user (repeatable; default: 'operator')",
    )
    g.add_argument(
        "--ci",
        action="append",
        default=[],
        metavar="NAME[=NS,...]",
        help="with --secure: a CI user, allowed only these namespaces if given (repeatable; "
        "default: 'ci', every namespace)",
    )
    g.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NODE",
        help="with --secure: credentials for the agent of NODE, user agent-NODE (repeatable)",
    )
    g.add_argument("--tls-cert", metavar="FILE", help="serve NATS over TLS with this certificate")
    g.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")


def roster_from_args(roster: Roster, args: argparse.Namespace, *, defaults: bool) -> Roster:
    """Add the users the flags name; ``defaults`` adds ``operator`` and ``ci`` on a first run."""
    have = {u.role for u in roster.users.values()}
    operators = list(args.operator) or (["operator"] if defaults and "operator" not in have else [])
    cis = list(args.ci) or (["ci"] if defaults and "ci" not in have else [])
    for name in operators:
        roster.add_operator(name)
    for item in cis:
        name, _, nss = item.partition("=")
        roster.add_ci(name, [ns for ns in nss.split(",") if ns])
    for node in args.agent:
        roster.add_agent(node)
    return roster


def configure(config: StackConfig, args: argparse.Namespace) -> StackConfig:
    """``confbus up``: the stack as ``--secure`` and ``--tls-cert``/``--tls-key`` say (as it is
    without them). With ``--ha``, ``--secure`` also makes the cluster's certificates."""
    users = [f for f in ("operator", "ci", "agent") if getattr(args, f)]
    if users and not args.secure:
        raise CliError(f"--{users[0]} makes a NATS user: it needs --secure", USAGE)
    if not args.secure and not args.tls_cert and not args.tls_key:
        return config
    if config.nats_url is not None:
        raise CliError(
            "--secure and --tls-cert configure the embedded nats-server; with --nats-url, "
            "configure your NATS as docs/security.md shows",
            USAGE,
        )
    if config.ha is not None and (args.tls_cert or args.tls_key or not args.secure):
        raise CliError(
            "--ha --secure makes the cluster's certificates itself (DATA_DIR/secrets/tls): "
            "leave out --tls-cert/--tls-key",
            USAGE,
        )
    if args.secure and (config.nats_user or config.nats_password or config.nats_creds):
        raise CliError("--secure makes the users itself: leave out --nats-user/--nats-creds", USAGE)
    # nats-server takes includes relative to its config: nats/ alone, nats-1/ beside 2 and 3.
    nats_dir = config.data_dir / ("nats-1" if config.ha is not None else "nats")
    ha_security = None
    try:
        secured = secure_stack(config.data_dir, nats_dir, args, config.tls_ca)
        if config.ha is not None:
            ha_security = secure_cluster(secured.secrets_dir, secured.nats_config)
            secured = replace(secured, tls_ca=str(ha_security.ca))
    except ValueError as exc:  # bad flags (InvalidName is one)
        raise CliError(f"--secure: {exc}", USAGE) from None
    except OSError as exc:
        raise CliError(f"--secure: {exc}", FAILED) from None
    announce = [f"secrets={secured.secrets_dir}"] if args.secure else []
    if secured.tls_ca:
        announce.append(f"tls-ca={secured.tls_ca}")
    return replace(
        config,
        nats_config=secured.nats_config,
        nats_user=secured.user.name if args.secure else None,
        nats_password=secured.user.password if args.secure else None,
        tls_ca=secured.tls_ca,
        ha_security=ha_security,
        announce=(*config.announce, *announce),
    )


@dataclass(frozen=True)
class Secured:
    """What the stack needs to run secured."""

    nats_config: str  # lines for nats-server's config: the include, TLS
    user: User  # the service user the stack and its services connect as
    tls_ca: str | None
    secrets_dir: Path


def secure_stack(
    data_dir: Path, nats_dir: Path, args: argparse.Namespace, tls_ca: str | None
) -> Secured:
    """Create or update the users (with ``args.secure``), render the include, and say how to
    run secured.

    ``nats_dir`` is where nats-server's config lives: its ``include`` is relative to it
    (nats-server does not take absolute include paths).
    """
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    secrets_dir = data_dir / SECRETS_DIR
    lines: list[str] = []
    user = User(SERVICE_USER, "service", "")
    if args.secure:
        with roster_lock(secrets_dir):
            roster = roster_from_args(load_roster(secrets_dir), args, defaults=True)
            conf = write_secrets(secrets_dir, roster)
        lines.append(f"include {quote(os.path.relpath(conf, nats_dir))}")
        user = roster.service
    ca = tls_ca
    if args.tls_cert:
        cert, key = Path(args.tls_cert).resolve(), Path(args.tls_key).resolve()
        for path in (cert, key):
            if not path.is_file():
                raise ValueError(f"{path}: no such file")
        lines.append(render_tls(cert, key))
        ca = ca or str(cert)  # a self-signed certificate is its own CA
    return Secured("\n".join(lines), user, ca, secrets_dir)


# -- python -m confbus.cli.security ----------------------------------------------------------


def _reload(data_dir: Path) -> str:
    """Make a running stack's nats-server (or, with ``--ha``, all three) re-read its config
    (SIGHUP)."""
    try:
        state = json.loads((data_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return "no stack runs there: the users apply at the next confbus up --secure"
    pids = state.get("cluster", {}).get("pids", {})
    servers = [(name, pid) for name, pid in pids.items() if name.startswith("nats-")]
    if not servers:
        servers = [("nats-server", state.get("nats_pid"))]
    said = []
    for name, pid in servers:
        if not isinstance(pid, int):
            return "that stack uses an external NATS: reload it yourself"
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            said.append(f"{name} (pid {pid}) is gone: the users apply at its next start")
            continue
        said.append(f"{name} (pid {pid}) reloaded")
    return "; ".join(said)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m confbus.cli.security",
        description="Add or remove confbus NATS users and render their permissions and "
        "credentials (see docs/security.md).",
    )
    where = parser.add_mutually_exclusive_group()
    add(
        where,
        DATA_DIR.but(
            help="the stack's data dir: secrets go to DATA_DIR/secrets, a running stack reloads"
        ),
    )
    where.add_argument("--secrets-dir", help="render into this directory instead (production)")
    parser.add_argument("--operator", action="append", default=[], metavar="NAME")
    parser.add_argument("--ci", action="append", default=[], metavar="NAME[=NS,...]")
    parser.add_argument("--agent", action="append", default=[], metavar="NODE")
    parser.add_argument("--remove", action="append", default=[], metavar="USER")
    tls = parser.add_argument_group(
        "certificates for a cluster run elsewhere (with --secrets-dir; see compose/README.md)"
    )
    tls.add_argument("--nats-host", action="append", default=[], metavar="HOST",
                     help="a nats-server of the cluster: its certificate, and its route in "
                     "nats-route.conf (repeatable)")  # fmt: skip
    tls.add_argument("--etcd-host", action="append", default=[], metavar="HOST",
                     help="an etcd member: its certificate; and the etcd client's "
                     "(repeatable)")  # fmt: skip
    tls.add_argument("--route-port", type=int, default=6222,
                     help="the port the nats-servers take routes on (%(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    if (args.nats_host or args.etcd_host) and not args.secrets_dir:
        parser.error("--nats-host and --etcd-host render for a cluster run elsewhere: "
                     "give --secrets-dir")  # fmt: skip
    data_dir = Path(args.data_dir).resolve()
    secrets_dir = Path(args.secrets_dir).resolve() if args.secrets_dir else data_dir / SECRETS_DIR
    cluster_files: list[Path] = []
    try:
        with roster_lock(secrets_dir):
            roster = roster_from_args(load_roster(secrets_dir), args, defaults=True)
            for name in args.remove:
                roster.remove(name)
            write_secrets(secrets_dir, roster)
            if args.nats_host or args.etcd_host:
                cluster_files = render_cluster(
                    secrets_dir, args.nats_host, args.etcd_host, args.route_port
                )
    except (ValueError, InvalidName, OSError) as exc:
        sys.stderr.write(f"confbus security: {exc}\n")
        return 1
    for u in sorted(roster.users.values(), key=lambda u: (ROLES.index(u.role), u.name)):
        scope = f" namespaces={','.join(u.namespaces)}" if u.namespaces else ""
        sys.stdout.write(f"{u.role:<8} {u.name}{scope}  {secrets_dir / (u.name + '.env')}\n")
    sys.stdout.write(f"nats-server include: {secrets_dir / AUTH_CONF}\n")
    for path in cluster_files:
        sys.stdout.write(f"{'key' if path.suffix == '.key' else 'file':<8} {path}\n")
    if not args.secrets_dir:
        sys.stdout.write(_reload(data_dir) + "\n")
    return 0
