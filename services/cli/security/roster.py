"""The users a stack has and the files that hold them: ``users.json`` (names, roles, scopes,
passwords: the source of truth), the nats-server include rendered from it, and one
``<user>.env`` per user — all under a 0700 directory, every file 0600 from its first byte.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from confbus.cli.security.permissions import (
    Permissions,
    agent_permissions,
    agent_user,
    ci_permissions,
    operator_permissions,
    render_permissions,
    service_permissions,
)
from confbus.procs.nats import quote, tls_block
from confbus.schemas.names import InvalidName, check_name

Role = Literal["service", "operator", "ci", "agent"]
ROLES: tuple[Role, ...] = ("service", "operator", "ci", "agent")

SECRETS_DIR = "secrets"
USERS_FILE = "users.json"  # the source of truth: names, roles, scopes, passwords
AUTH_CONF = "nats-auth.conf"  # the nats-server include rendered from it
SERVICE_USER = "service"


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
            f"    {{user: {quote(u.name)}, password: {quote(u.password)}, permissions: {perms}}}"
        )
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def render_env(user: User) -> str:
    # token_urlsafe passwords need no shell quoting; the quotes are for the reader's peace.
    return f"CONFBUS_NATS_USER='{user.name}'\nCONFBUS_NATS_PASSWORD='{user.password}'\n"


def render_tls(cert: Path, key: Path) -> str:
    return "\n".join(tls_block(cert, key))


# -- files ----------------------------------------------------------------------------------------


def write_private(path: Path, data: bytes, *, public: bool = False) -> None:
    """Write atomically with mode 0600 from the first byte (never readable by others, not even
    for a moment); a ``public`` file (a certificate) is 0644 once whole."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if public:
                os.fchmod(f.fileno(), 0o644)
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
    write_private(secrets_dir / USERS_FILE, roster.to_json())
    conf = secrets_dir / AUTH_CONF
    write_private(conf, render_authorization(roster, private_inboxes=private_inboxes).encode())
    for user in roster.users.values():
        write_private(secrets_dir / f"{user.name}.env", render_env(user).encode())
    for env_file in secrets_dir.glob("*.env"):
        if env_file.stem not in roster.users:
            env_file.unlink()
    return conf
