"""A real nats-server running the generated permissions, and clients that see its refusals.

``SecuredNats`` writes a roster with ``confbus.cli.security``, starts nats-server with the
include, and provisions the streams as the ``service`` user. ``connect_as`` opens a plain
nats-py connection as one user and records every ``-ERR`` the server sends it (nats-py hands
"Permissions Violation" errors to the error callback and keeps the connection open), so a test
can wait for the server's refusal instead of sleeping.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import nats
from nats.aio.client import Client

from confbus.cli.security import Roster, User, write_secrets
from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus, connect, provision

REFUSAL_TIMEOUT = 5.0


def make_roster() -> Roster:
    roster = Roster()
    roster.users["service"] = User("service", "service", "svc-" + os.urandom(16).hex())
    roster.add_operator("alice")
    roster.add_operator("bob")
    roster.add_ci("ci")
    roster.add_ci("ci-pay", ["payments"])
    roster.add_agent("n1")
    roster.add_agent("n2")
    return roster


@dataclass
class SecuredNats:
    root: Path
    roster: Roster
    private_inboxes: bool = True
    server: NatsServer = field(init=False)

    def start(self) -> SecuredNats:
        secrets_dir = self.root / "secrets"
        conf = write_secrets(secrets_dir, self.roster, private_inboxes=self.private_inboxes)
        nats_dir = self.root / "nats"
        nats_dir.mkdir(parents=True, exist_ok=True)
        include = f'include "{os.path.relpath(conf, nats_dir)}"'
        self.server = NatsServer(data_dir=nats_dir, extra_config=include).start()
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def user(self, name: str) -> User:
        return self.roster.users[name]

    def env(self, name: str) -> dict[str, str]:
        u = self.user(name)
        return {"CONFBUS_NATS_USER": u.name, "CONFBUS_NATS_PASSWORD": u.password}

    async def service_bus(self) -> Bus:
        svc = self.user("service")
        return await connect(self.url, name="test-service", user=svc.name, password=svc.password)

    async def provision(self) -> None:
        bus = await self.service_bus()
        try:
            await provision(bus)
        finally:
            await bus.close()

    def log_text(self) -> str:
        return (self.server.data_dir / "nats-server.log").read_text(errors="replace")


@dataclass
class Conn:
    """A connection as one user, with the server's errors as they come."""

    user: str
    nc: Client
    errors: list[str] = field(default_factory=list)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))
        self._changed.set()
        self._changed = anyio.Event()

    async def refused(self, needle: str, timeout: float = REFUSAL_TIMEOUT) -> str:
        """Wait for the server's ``Permissions Violation`` naming ``needle`` (a subject)."""
        with anyio.fail_after(timeout):
            while True:
                for err in self.errors:
                    # nats-py lower-cases the whole message, subject included.
                    low = err.lower()
                    if "permissions violation" in low and f'"{needle.lower()}"' in low:
                        return err
                await self._changed.wait()

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]

    @property
    def bus(self) -> Bus:
        return Bus(nc=self.nc, js=self.nc.jetstream(), name=self.user)


@asynccontextmanager
async def connect_as(
    secured: SecuredNats, name: str, *, inbox_prefix: str | None = None
) -> AsyncIterator[Conn]:
    user = secured.user(name)
    holder: list[Conn] = []

    async def on_error(exc: Exception) -> None:
        if holder:
            await holder[0].on_error(exc)

    # As services.runtime.bus.connect does: replies to _INBOX.<user>.… (private inboxes).
    prefix = inbox_prefix if inbox_prefix is not None else f"_INBOX.{user.name}"
    kwargs = {"inbox_prefix": prefix}
    nc = await nats.connect(
        secured.url,
        user=user.name,
        password=user.password,
        name=f"test-{name}",
        error_cb=on_error,
        allow_reconnect=False,
        **kwargs,
    )
    conn = Conn(name, nc)
    holder.append(conn)
    try:
        yield conn
    finally:
        await nc.close()


def forms(needle: str) -> list[bytes]:
    """The needle as is, and as it shows inside base64 at each of the three alignments (msgspec
    writes ``bytes`` fields as base64: a grep for the plain text alone would miss them)."""
    raw = needle.encode()
    out = [raw]
    for k in range(3):
        b64 = base64.b64encode(b"\0" * k + raw)
        start = 4 if k else 0
        out.append(b64[start : 4 * ((k + len(raw)) // 3)])
    return out


def leaks(haystacks: dict[str, bytes], needles: list[str]) -> list[str]:
    return [
        f"{needle!r} in {where}"
        for where, data in haystacks.items()
        for needle in needles
        if any(form in data for form in forms(needle))
    ]
