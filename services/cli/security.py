"""A locked-down bus: one NATS user per role, subject permissions, credentials
(docs/design.md §7.3).

``confbus up --secure`` calls ``secure_stack`` before it starts anything: it creates (or keeps)
the users and their random passwords under ``<data-dir>/secrets/`` (mode 0700; every file 0600),
renders the ``authorization`` block the embedded nats-server includes, and hands the services
the ``service`` user through their environment — never their argv, never a log line. The ready
line says where the credentials are (``secrets=DIR``); each user has ``DIR/<user>.env``::

    set -a; . .confbus/secrets/ci.env; set +a      # CONFBUS_NATS_USER / CONFBUS_NATS_PASSWORD
    confbus publish payments config.json --wait

The roles (``docs/security.md`` has the full matrix and the production set-up):

- ``service`` — the confbus services: everything, except voting or heartbeating for a node.
- ``operator`` (one per person: ``--operator alice``) — read every stream and API; act
  (approve, reject, promote, policy, rollback, pause, restore) through the APIs, with its own
  name pinned in the subject of every act that records who did it.
- ``ci`` (``--ci NAME[=NS,NS]``) — propose changes (only for its namespaces, if given) as
  itself, the reads a pipeline needs (get, history, dry_run, change_status, rollout status),
  and the events; nothing else.
- ``agent-<node>`` (``--agent NODE``) — vote, heartbeat, report health and applies for its own
  node id; read ``CFG_TXN``; ask the coordinator to resolve; fetch a version it lacks.

Permissions are allow-lists (what is not listed is refused by the server) with explicit denies
for what matters most, so that a later, broader allow cannot open them by accident.

``python -m confbus.cli.security --data-dir DIR --agent n3`` adds users to a stack's secrets
(and, if that stack runs, makes its nats-server reload them); ``--secrets-dir`` renders the same
files anywhere, e.g. for a production NATS cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from confbus.cli.exitcodes import FAILED, USAGE, CliError
from confbus.cli.stack import StackConfig
from confbus.schemas import subjects
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import health as health_api
from confbus.schemas.api import rollback as rollback_api
from confbus.schemas.api import store as store_api
from confbus.schemas.api import txn as txn_api
from confbus.schemas.names import InvalidName, check_name
from confbus.schemas.state import ROLLOUTS
from confbus.schemas.streams import (
    BUCKETS,
    CFG_ALERTS,
    CFG_DLQ,
    CFG_EVENTS,
    CFG_HEALTH,
    CFG_TXN,
    STREAMS,
)

Role = Literal["service", "operator", "ci", "agent"]
ROLES: tuple[Role, ...] = ("service", "operator", "ci", "agent")

SECRETS_DIR = "secrets"
USERS_FILE = "users.json"  # the source of truth: names, roles, scopes, passwords
AUTH_CONF = "nats-auth.conf"  # the nats-server include rendered from it
SERVICE_USER = "service"
AGENT_PREFIX = "agent-"

# Store operations that record who acted: served plain (self-declared, for services) and
# pinned (``<op>.<user>``, services.runtime.identity).
PINNED_STORE_OPS = ("approve", "reject", "promote", "mark_good", "policy_set")
# What a CI pipeline reads from the store while it publishes and waits.
CI_STORE_READS = ("get", "history", "dry_run", "change_status", "policy_get")
# Every other store read an operator may make (backup and restore included).
OPERATOR_STORE_OPS = (
    "get",
    "history",
    "diff",
    "dry_run",
    "change_status",
    "policy_get",
    "namespaces",
    "export",
    "export_*",
    "import",
    "import_*",
)
READABLE_STREAMS = (CFG_EVENTS.name, CFG_ALERTS.name, CFG_HEALTH.name, CFG_DLQ.name, CFG_TXN.name)


def _api(service: str, op: str) -> str:
    return subjects.api(service, op)


def _js(*tokens: str) -> str:
    return ".".join(("$JS.API", *tokens))


# -- permissions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    # May answer a request it received (once, to its reply subject), whatever that subject is.
    allow_responses: bool = False


# Writes that only confbus services make: the 2PC records and heads, versions, events, alerts,
# the shared state, and the streams themselves. Denied explicitly to every other role.
SERVICE_ONLY_WRITES = (
    subjects.CHANGES_ALL,
    "cfg.txn.*.*.prepare",
    "cfg.txn.*.*.decision",
    "$KV.>",
    "cfg.alert.>",
    "cfg.dlq.>",
    _js("STREAM.CREATE.>"),
    _js("STREAM.UPDATE.>"),
    _js("STREAM.DELETE.>"),
    _js("STREAM.PURGE.>"),
    _js("STREAM.MSG.DELETE.>"),
    _js("CONSUMER.DELETE.>"),
    _js("CONSUMER.DURABLE.CREATE.>"),
)


def inbox(user: str, private: bool) -> str:
    """Where replies to this user arrive. ``_INBOX.>`` is what nats-py uses by default; with
    ``private`` the user's client must connect with ``inbox_prefix="_INBOX.<user>"`` and then
    no other user can subscribe to its replies (see docs/security.md)."""
    return f"_INBOX.{user}.>" if private else "_INBOX.>"


def service_permissions() -> Permissions:
    return Permissions(
        publish=(">",),
        subscribe=(">",),
        # A service has no business speaking for a node.
        publish_deny=("cfg.txn.*.*.vote.*", subjects.HEARTBEATS_ALL),
    )


def _stream_reads(stream: str) -> list[str]:
    """Read a stream with an ordered (ephemeral push) consumer and direct/message gets."""
    return [
        _js("STREAM.INFO", stream),
        # Exactly this subject: an ephemeral consumer. Named and durable ones have longer
        # subjects, which stay refused.
        _js("CONSUMER.CREATE", stream),
        _js("CONSUMER.INFO", stream, "*"),
        _js("STREAM.MSG.GET", stream),
        f"$JS.FC.{stream}.>",  # flow-control answers of the ordered consumer
    ]


def _kv_reads(bucket: str, keys: str = ">") -> list[str]:
    stream = f"KV_{bucket}"
    return [
        _js("STREAM.INFO", stream),
        _js("STREAM.MSG.GET", stream),
        _js("DIRECT.GET", stream, f"$KV.{bucket}.{keys}"),
    ]


def operator_permissions(user: str, *, private_inbox: bool = False) -> Permissions:
    publish: list[str] = [_js("INFO"), _js("STREAM.NAMES"), _js("STREAM.LIST")]
    for spec in STREAMS:
        if spec.name in READABLE_STREAMS:
            publish += _stream_reads(spec.name)
    for bucket in BUCKETS:
        publish += _kv_reads(bucket.name)
    publish += [_api(store_api.SERVICE, op) for op in OPERATOR_STORE_OPS]
    publish += [_api(store_api.SERVICE, f"{op}.{user}") for op in PINNED_STORE_OPS]
    publish.append(_api(store_api.SERVICE, f"propose.*.{user}"))
    publish += [
        _api(txn_api.SERVICE, "in_doubt"),
        _api(txn_api.SERVICE, "resolve"),
        _api(dist_api.SERVICE, ">"),
        _api(health_api.SERVICE, ">"),
        _api(rollback_api.SERVICE, ">"),
        "$SRV.>",  # discovery: PING, INFO, STATS
    ]
    return Permissions(
        publish=tuple(publish),
        subscribe=(
            inbox(user, private_inbox),
            "cfg.event.>",
            "cfg.alert.>",
            subjects.HEARTBEATS_ALL,
            subjects.HEALTH_ALL,
        ),
        publish_deny=(
            *SERVICE_ONLY_WRITES,
            "cfg.event.>",
            "cfg.txn.>",
            "cfg.node.>",
            "cfg.health.>",
            # Acts that record an actor: only with the operator's own name in the subject.
            *(_api(store_api.SERVICE, op) for op in PINNED_STORE_OPS),
            _api(txn_api.SERVICE, "switch"),
        ),
    )


def ci_permissions(
    user: str, namespaces: Sequence[str] | None = None, *, private_inbox: bool = False
) -> Permissions:
    scopes = list(namespaces) if namespaces else ["*"]
    publish = [_api(store_api.SERVICE, f"propose.{ns}.{user}") for ns in scopes]
    publish += [_api(store_api.SERVICE, op) for op in CI_STORE_READS]
    publish += [_api(dist_api.SERVICE, "status"), _api(dist_api.SERVICE, "rollout")]
    publish += _stream_reads(CFG_EVENTS.name)
    publish += _kv_reads("CFG_STATE", ROLLOUTS)
    return Permissions(
        publish=tuple(publish),
        subscribe=(
            inbox(user, private_inbox),
            *(f"cfg.event.{ns}.>" for ns in scopes),
        ),
        publish_deny=(
            *SERVICE_ONLY_WRITES,
            "cfg.event.>",
            "cfg.txn.>",
            "cfg.node.>",
            "cfg.health.>",
            *(_api(store_api.SERVICE, op) for op in PINNED_STORE_OPS),
            _api(txn_api.SERVICE, ">"),
            _api(rollback_api.SERVICE, ">"),
        ),
    )


def agent_user(node: str) -> str:
    return f"{AGENT_PREFIX}{check_name(node, 'node id')}"


def agent_permissions(node: str, *, private_inbox: bool = False) -> Permissions:
    check_name(node, "node id")
    return Permissions(
        publish=(
            f"cfg.txn.*.*.vote.{node}",
            subjects.heartbeat(node),
            f"cfg.health.*.{node}",
            # The one event an agent writes, with its own node id in the subject.
            f"cfg.event.*.node.applied.{node}",
            _api(txn_api.SERVICE, "resolve"),
            _api(store_api.SERVICE, "get"),
            _api(store_api.SERVICE, "policy_get"),
            *_stream_reads(CFG_TXN.name),
        ),
        subscribe=(
            inbox(agent_user(node), private_inbox),
            subjects.node_resync(node),
            "cfg.event.*.version.last_good",
        ),
        publish_deny=(
            *SERVICE_ONLY_WRITES,
            "cfg.api.store.propose.>",
            *(_api(store_api.SERVICE, op) for op in PINNED_STORE_OPS),
            _api(txn_api.SERVICE, "switch"),
        ),
        allow_responses=True,  # the distributor's re-sync requests
    )


# -- users ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password: str = field(repr=False)
    namespaces: tuple[str, ...] = ()  # ci: the namespaces it may propose for (empty: all)
    node: str = ""  # agent: its node id

    def permissions(self, private_inboxes: bool = True) -> Permissions:
        if self.role == "service":
            return service_permissions()
        if self.role == "operator":
            return operator_permissions(self.name, private_inbox=private_inboxes)
        if self.role == "ci":
            return ci_permissions(self.name, self.namespaces or None, private_inbox=private_inboxes)
        return agent_permissions(self.node, private_inbox=private_inboxes)


def new_password() -> str:
    return secrets.token_urlsafe(32)


def _check_user_name(name: str, what: str) -> str:
    try:
        check_name(name, what)
    except InvalidName as exc:
        raise ValueError(str(exc)) from None
    return name


@dataclass
class Roster:
    """The users a stack should have; ``merge`` keeps the passwords of those it already has."""

    users: dict[str, User] = field(default_factory=dict)

    def add(self, user: User) -> None:
        known = self.users.get(user.name)
        if known is not None and known.role != user.role:
            raise ValueError(f"user {user.name!r} exists already as a {known.role}")
        if known is not None:
            user = replace(user, password=known.password)
        self.users[user.name] = user

    def add_operator(self, name: str) -> None:
        self.add(User(_check_user_name(name, "operator name"), "operator", new_password()))

    def add_ci(self, name: str, namespaces: Iterable[str] = ()) -> None:
        nss = tuple(sorted({check_name(ns, "namespace") for ns in namespaces}))
        self.add(User(_check_user_name(name, "ci name"), "ci", new_password(), namespaces=nss))

    def add_agent(self, node: str) -> None:
        self.add(User(agent_user(node), "agent", new_password(), node=node))

    def remove(self, name: str) -> None:
        if name == SERVICE_USER:
            raise ValueError("the service user cannot be removed")
        if self.users.pop(name, None) is None:
            raise ValueError(f"no user {name!r}")

    @property
    def service(self) -> User:
        return self.users[SERVICE_USER]

    def to_json(self) -> bytes:
        rows = [
            {
                "name": u.name,
                "role": u.role,
                "password": u.password,
                "namespaces": list(u.namespaces),
                "node": u.node,
            }
            for u in sorted(self.users.values(), key=lambda u: (ROLES.index(u.role), u.name))
        ]
        return json.dumps({"users": rows}, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Roster:
        roster = cls()
        for row in json.loads(data)["users"]:
            role = row["role"]
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r} for user {row['name']!r}")
            roster.users[row["name"]] = User(
                name=row["name"],
                role=role,
                password=row["password"],
                namespaces=tuple(row.get("namespaces") or ()),
                node=row.get("node") or "",
            )
        return roster


def load_roster(secrets_dir: Path) -> Roster:
    """The users already generated there, or just the ``service`` user on a first run."""
    path = secrets_dir / USERS_FILE
    roster = Roster.from_json(path.read_bytes()) if path.exists() else Roster()
    if SERVICE_USER not in roster.users:
        roster.users[SERVICE_USER] = User(SERVICE_USER, "service", new_password())
    return roster


# -- rendering ----------------------------------------------------------------------------------


def _quote(text: str) -> str:
    # nats-server's config strings take JSON's escapes; a quoted string is never a $variable.
    return json.dumps(text)


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_quote(i) for i in items) + "]"


def render_permissions(p: Permissions) -> str:
    publish = f"allow: {_list(p.publish)}"
    if p.publish_deny:
        publish += f", deny: {_list(p.publish_deny)}"
    subscribe = f"allow: {_list(p.subscribe)}"
    if p.subscribe_deny:
        subscribe += f", deny: {_list(p.subscribe_deny)}"
    parts = [f"publish: {{{publish}}}", f"subscribe: {{{subscribe}}}"]
    if p.allow_responses:
        parts.append("allow_responses: true")
    return "{" + ", ".join(parts) + "}"


def render_authorization(roster: Roster, *, private_inboxes: bool = True) -> str:
    """The ``authorization`` block for nats-server (an include file: it holds passwords)."""
    lines = [
        "# Generated by confbus (services/cli/security.py). Holds passwords: keep it 0600.",
        "authorization {",
        "  users = [",
    ]
    for u in sorted(roster.users.values(), key=lambda u: (ROLES.index(u.role), u.name)):
        perms = render_permissions(u.permissions(private_inboxes))
        lines.append(f"    # {u.role}")
        lines.append(
            f"    {{user: {_quote(u.name)}, password: {_quote(u.password)}, permissions: {perms}}}"
        )
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def render_env(user: User) -> str:
    # token_urlsafe passwords need no shell quoting; the quotes are for the reader's peace.
    return f"CONFBUS_NATS_USER='{user.name}'\nCONFBUS_NATS_PASSWORD='{user.password}'\n"


def render_tls(cert: Path, key: Path) -> str:
    return "\n".join(
        [
            "tls {",
            f"  cert_file: {_quote(str(cert))}",
            f"  key_file: {_quote(str(key))}",
            "  timeout: 2",
            "}",
        ]
    )


# -- files ----------------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte (never readable by others, not even
    for a moment)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # also when it existed with a looser mode
    return path


@contextlib.contextmanager
def roster_lock(secrets_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the roster: two writers adding the same new user must
    not leave the file with one password and a running server with the other."""
    private_dir(secrets_dir)
    fd = os.open(secrets_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_secrets(secrets_dir: Path, roster: Roster, *, private_inboxes: bool = True) -> Path:
    """Write users.json, the nats-server include and one ``<user>.env`` per user; remove the env
    files of users that are gone. Returns the include's path."""
    private_dir(secrets_dir)
    _write_private(secrets_dir / USERS_FILE, roster.to_json())
    conf = secrets_dir / AUTH_CONF
    _write_private(conf, render_authorization(roster, private_inboxes=private_inboxes).encode())
    for user in roster.users.values():
        _write_private(secrets_dir / f"{user.name}.env", render_env(user).encode())
    for env_file in secrets_dir.glob("*.env"):
        if env_file.stem not in roster.users:
            env_file.unlink()
    return conf


# -- confbus up --secure ----------------------------------------------------------------------


def add_secure_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("security (see docs/security.md)")
    g.add_argument(
        "--secure",
        action="store_true",
        help="NATS users with subject permissions per role; credentials in DATA_DIR/secrets/",
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
    without them)."""
    users = [f for f in ("operator", "ci", "agent") if getattr(args, f)]
    if users and not args.secure:
        raise CliError(f"--{users[0]} makes a NATS user: it needs --secure", USAGE)
    if not args.secure and not args.tls_cert and not args.tls_key:
        return config
    if config.nats_url is not None or config.ha is not None:
        what = "--nats-url" if config.nats_url is not None else "--ha"
        raise CliError(
            f"--secure and --tls-cert configure the embedded nats-server; with {what}, "
            "configure your NATS as docs/security.md shows",
            USAGE,
        )
    if args.secure and (config.nats_user or config.nats_password or config.nats_creds):
        raise CliError("--secure makes the users itself: leave out --nats-user/--nats-creds", USAGE)
    try:
        secured = secure_stack(config.data_dir, config.data_dir / "nats", args, config.tls_ca)
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
        lines.append(f"include {_quote(os.path.relpath(conf, nats_dir))}")
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
    """Make a running stack's nats-server re-read its config (SIGHUP)."""
    try:
        state = json.loads((data_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return "no stack runs there: the users apply at the next confbus up --secure"
    pid = state.get("nats_pid")
    if not isinstance(pid, int):
        return "that stack uses an external NATS: reload it yourself"
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return f"nats-server (pid {pid}) is gone: the users apply at the next start"
    return f"nats-server (pid {pid}) reloaded"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m confbus.cli.security",
        description="Add or remove confbus NATS users and render their permissions and "
        "credentials (see docs/security.md).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--data-dir",
        default=os.environ.get("CONFBUS_DATA_DIR", ".confbus"),
        help="the stack's data dir (secrets go to DATA_DIR/secrets; a running stack reloads)",
    )
    where.add_argument("--secrets-dir", help="render into this directory instead (production)")
    parser.add_argument("--operator", action="append", default=[], metavar="NAME")
    parser.add_argument("--ci", action="append", default=[], metavar="NAME[=NS,...]")
    parser.add_argument("--agent", action="append", default=[], metavar="NODE")
    parser.add_argument("--remove", action="append", default=[], metavar="USER")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir).resolve()
    secrets_dir = Path(args.secrets_dir).resolve() if args.secrets_dir else data_dir / SECRETS_DIR
    try:
        with roster_lock(secrets_dir):
            roster = roster_from_args(load_roster(secrets_dir), args, defaults=True)
            for name in args.remove:
                roster.remove(name)
            write_secrets(secrets_dir, roster)
    except (ValueError, InvalidName, OSError) as exc:
        sys.stderr.write(f"confbus security: {exc}\n")
        return 1
    for u in sorted(roster.users.values(), key=lambda u: (ROLES.index(u.role), u.name)):
        scope = f" namespaces={','.join(u.namespaces)}" if u.namespaces else ""
        sys.stdout.write(f"{u.role:<8} {u.name}{scope}  {secrets_dir / (u.name + '.env')}\n")
    sys.stdout.write(f"nats-server include: {secrets_dir / AUTH_CONF}\n")
    if not args.secrets_dir:
        sys.stdout.write(_reload(data_dir) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
