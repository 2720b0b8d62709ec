"""The connection every part of the client shares, and typed calls through it."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from confbus.runtime.api import call
from confbus.runtime.bus import Bus, connect
from confbus.runtime.opening import OpenClose
from confbus.runtime.retry import budget_deadline, retry_unavailable
from confbus.runtime.urls import DEFAULT_NATS_URL
from confbus.schemas.api.operation import Operation

Req = TypeVar("Req")
Rep = TypeVar("Rep")

# A client must not reconnect forever when confbus is down; but it rides out a broker restart
# (~1 s) or a cluster node's death: this many attempts, 0.5 s apart per server.
RECONNECT_ATTEMPTS = 20


class Connection(OpenClose):
    """A NATS connection for the client, opened by ``async with`` and closed after."""

    def __init__(
        self,
        nats_url: str = DEFAULT_NATS_URL,
        *,
        name: str = "confbus-client",
        user: str | None = None,
        password: str | None = None,
        creds: str | None = None,
        tls_ca: str | None = None,
        connect_timeout: float = 2.0,
        connect_wait_s: float = 0.0,
    ) -> None:
        """``connect_wait_s``: how long to keep trying to reach NATS at first (a broker
        restarting), never past the ``retry.budget`` around ``open``; 0: give up at once."""
        self.nats_url = nats_url
        self.connect_wait_s = connect_wait_s
        self._kw: dict[str, Any] = dict(
            name=name,
            user=user,
            password=password,
            creds=creds,
            tls_ca=tls_ca,
            connect_timeout=connect_timeout,
        )
        self._bus: Bus | None = None

    @property
    def bus(self) -> Bus:
        """The open connection (inside ``async with`` only)."""
        assert self._bus is not None, "use 'async with Client(...)'"
        return self._bus

    async def open(self) -> None:
        """Connect (``async with`` does it on entry): at once, or for up to ``connect_wait_s``
        while NATS cannot be reached."""

        async def once() -> Bus:
            # Without connect_wait_s, a closed port is said at once. With it, each try keeps
            # nats-py's 0.5 s cadence until its deadline: a broker back from a restart is
            # reached sooner than by retry_unavailable's backoff alone.
            return await connect(
                self.nats_url,
                max_reconnect_attempts=RECONNECT_ATTEMPTS,
                give_up_at_once=self.connect_wait_s <= 0,
                **self._kw,
            )

        if self.connect_wait_s <= 0:
            self._bus = await once()
        else:
            self._bus = await retry_unavailable(
                once,
                what=f"connecting to {self.nats_url}",
                deadline=min(budget_deadline(), time.monotonic() + self.connect_wait_s),
            )

    async def close(self) -> None:
        """Close the connection (``async with`` does it on exit)."""
        if self._bus is not None:
            await self._bus.close()

    async def call(
        self,
        op: Operation[Req, Rep],
        request: Req,
        *,
        timeout: float | None = None,
        retry_for: float | None = None,
        again_after: float | None = None,
    ) -> Rep:
        """Call an operation of ``confbus.schemas.api`` (``store.GET``, ``txn.IN_DOUBT``…) and
        return its typed reply; the endpoint's error is raised as a ``ConfbusError``.

        ``timeout`` None: the operation's deadline. It may be longer, and shorter only for an
        operation that does not act (``op.acts``). What is retried and for how long
        (``retry_for``, else the ``confbus.runtime.retry.budget`` around the call): see
        ``confbus.runtime.api.call`` (and for ``again_after``, a second request beside the first).
        """
        return await call(
            self.bus, op, request, timeout=timeout, retry_for=retry_for, again_after=again_after
        )
