"""One logical connection to an etcd cluster over several endpoints (aetcd takes only one).

Every call goes through ``EtcdConnection.call``: on a connection failure, a timeout or a
member without a leader, it closes the client, moves to the next endpoint and tries again,
until ``unavailable_after_s`` has passed — then ``StoreUnavailable``. Retrying a write is safe
because every write the store makes is a transaction guarded by a compare on revisions: a
retry of a write that did land fails its compare, and the caller re-reads.

Reads that aetcd cannot express (a range with a limit, a sort or at a revision, several ranges
in one snapshot) use its gRPC stubs with the request types it ships (``aetcd.rpc``).

TLS is here too, the one place the store connects: aetcd 1.0.0's ``Client.connect`` opens only
``grpc.aio.insecure_channel`` (aetcd/client.py:182), so with ``EtcdTls`` the connection makes
``TlsClient``s, which open a ``grpc.aio.secure_channel`` that verifies the member against the CA
and presents the client certificate (etcd's ``--client-cert-auth``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aetcd
import anyio
import grpc
from aetcd import rpc, watcher

from confbus.runtime.etcd_tls import EtcdTls
from confbus.version_store.errors import QuotaExceeded, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# gRPC codes after which another member may well answer. etcd sends UNAVAILABLE for
# "leader changed", "no leader" and "request timed out".
# CANCELLED: another task closed this client while rotating away from it.
_RETRY_CODES = {
    rpc.StatusCode.UNAVAILABLE,
    rpc.StatusCode.DEADLINE_EXCEEDED,
    rpc.StatusCode.CANCELLED,
}
_RETRY_ERRORS = (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError)
_NO_SPACE = "database space exceeded"


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    for scheme in ("http://", "https://", "etcd://"):
        endpoint = endpoint.removeprefix(scheme)
    host, _, port = endpoint.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r}: expected host:port")
    return host.strip("[]"), int(port)


class TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type hints
    """An aetcd client over a TLS channel. Only ``connect`` differs from aetcd's: the same
    stubs and watcher, on ``secure_channel`` (no etcd user: the certificate is the identity)."""

    def __init__(
        self, host: str, port: int, credentials: grpc.ChannelCredentials, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        # Nothing below awaits, so no other task can find it half made (aetcd's own connect
        # awaits an authentication, hence its _is_connecting dance).
        channel = rpc.secure_channel(f"{self._host}:{self._port}", self._credentials)
        self.channel = channel
        self.kvstub = rpc.KVStub(channel)
        self.clusterstub = rpc.ClusterStub(channel)
        self.leasestub = rpc.LeaseStub(channel)
        self.maintenancestub = rpc.MaintenanceStub(channel)
        self._watcher = watcher.Watcher(
            rpc.WatchStub(channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


class EtcdConnection:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        request_timeout_s: float = 5.0,
        unavailable_after_s: float = 15.0,
        tls: EtcdTls | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self._credentials = tls.credentials() if tls is not None else None
        self.request_timeout_s = request_timeout_s
        self.unavailable_after_s = unavailable_after_s
        self._index = 0
        self._generation = 0  # bumped at each rotation, so concurrent failures rotate once
        self.rotations = 0
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[self._index]
        return f"{host}:{port}"

    def _current(self) -> tuple[Any, int]:
        if self._client is None:
            host, port = self.endpoints[self._index]
            if self._credentials is not None:
                self._client = TlsClient(host, port, self._credentials, self.request_timeout_s)
            else:
                self._client = aetcd.Client(host, port, timeout=self.request_timeout_s)
        return self._client, self._generation

    async def _rotate(self, generation: int, error: BaseException) -> None:
        if generation != self._generation:
            return  # another task already moved on from this client
        old, self._client = self._client, None
        failed = self.endpoint
        self._index = (self._index + 1) % len(self.endpoints)
        self._generation += 1
        self.rotations += 1
        log.warning(
            "etcd endpoint failed; trying the next",
            extra={"endpoint": failed, "next": self.endpoint, "error": str(error)},
        )
        if old is not None:
            with anyio.move_on_after(1.0, shield=True):
                await old.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with anyio.move_on_after(2.0, shield=True):
                await client.close()

    async def call(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``op(client)``, rotating endpoints on connection failures."""
        deadline = time.monotonic() + self.unavailable_after_s
        failures = 0
        while True:
            client, generation = self._current()
            try:
                # Our own deadline around the call: after a leader is killed, a call on a
                # channel to the next endpoint was seen to hang past gRPC's per-call timeout
                # (the version-store then stopped storing for good). Rotate instead.
                with anyio.fail_after(self.request_timeout_s * 2):
                    return await op(client)
            except TimeoutError as e:
                error: BaseException = e
            except asyncio.CancelledError as e:
                # gRPC cancels every call of a channel it closes — here, another task's rotation
                # closing the client we were using. Not a cancellation of *this* task: retry on
                # the next client. Let it escape and anyio takes it for one; the service's main
                # task then ended quietly and the version-store stopped storing for good (the
                # HA test's etcd-leader kill).
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                error = ConnectionError(f"the etcd call was cancelled by its channel: {e!r}")
            except Exception as e:
                kind = _classify(e)
                if kind == "other":
                    raise
                if kind == "no-space":
                    raise _no_space() from e
                if kind == "fail":
                    raise StoreUnavailable(f"etcd {what} failed: {_details(e)}") from e
                error = e
            failures += 1
            await self._rotate(generation, error)
            if time.monotonic() >= deadline:
                raise StoreUnavailable(
                    f"etcd unavailable for {what} after {failures} attempts over "
                    f"{self.unavailable_after_s:g}s at {self._describe()}: {error}"
                ) from error
            # Back off once every endpoint has failed in a row; an election takes ~1 s.
            if failures % len(self.endpoints) == 0:
                await anyio.sleep(min(0.05 * 2 ** (failures // len(self.endpoints)), 0.5))

    def _describe(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    # -- operations ---------------------------------------------------------------------------

    async def txn(self, what: str, compare: list[Any], success: list[Any]) -> bool:
        async def op(c: Any) -> bool:
            ok, _ = await c.transaction(compare=compare, success=success, failure=[])
            return bool(ok)

        return await self.call(what, op)

    async def read(
        self, what: str, ranges: list[Any], revision: int = 0
    ) -> tuple[int, list[list[Any]]]:
        """Several ``rpc.RangeRequest`` in one snapshot: (revision, kvs per request)."""
        if revision:
            for r in ranges:
                r.revision = revision
        request = rpc.TxnRequest(
            compare=[], success=[rpc.RequestOp(request_range=r) for r in ranges]
        )

        async def op(c: Any) -> Any:
            await c.connect()
            return await c.kvstub.Txn(request, timeout=self.request_timeout_s, metadata=c.metadata)

        response = await self.call(what, op)
        return int(response.header.revision), [
            list(r.response_range.kvs) for r in response.responses
        ]

    async def status(self) -> Any:
        async def op(c: Any) -> Any:
            await c.connect()
            return await c.maintenancestub.Status(
                rpc.StatusRequest(), timeout=self.request_timeout_s, metadata=c.metadata
            )

        return await self.call("status", op)

    async def compact(self, revision: int) -> None:
        async def op(c: Any) -> None:
            await c.compact(revision)

        await self.call("compact", op)


def _classify(e: Exception) -> str:
    """retry (another endpoint may answer), no-space, fail (etcd said no), or other (not etcd)."""
    if isinstance(e, _RETRY_ERRORS):
        return "retry"
    grpc_error = e if isinstance(e, rpc.AioRpcError) else e.__cause__
    if isinstance(grpc_error, rpc.AioRpcError):
        if grpc_error.code() in _RETRY_CODES:
            return "retry"
        if _NO_SPACE in str(grpc_error.details()):
            return "no-space"
        return "fail"
    if isinstance(e, rpc.BaseError):
        return "retry"  # e.g. grpc's UsageError on a channel closed under us
    if isinstance(e, aetcd.ClientError):
        return "no-space" if _NO_SPACE in str(e) else "fail"
    return "other"


def _details(e: Exception) -> str:
    grpc_error = e if isinstance(e, rpc.AioRpcError) else e.__cause__
    if isinstance(grpc_error, rpc.AioRpcError):
        return str(grpc_error.details())
    return str(e)


def _no_space() -> QuotaExceeded:
    return QuotaExceeded(
        "etcd refuses writes: its database space quota is exhausted (NOSPACE alarm); "
        "compact, defragment and disarm the alarm, or raise --quota-backend-bytes"
    )


def get(key: bytes, *, keys_only: bool = False) -> Any:
    return rpc.RangeRequest(key=key, keys_only=keys_only)


def prefix(
    key: bytes, *, start: bytes | None = None, end: bytes | None = None, limit: int = 0,
    descending: bool = False, keys_only: bool = False,
) -> Any:  # fmt: skip
    """A range over ``key``'s prefix, optionally narrowed to [start, end)."""
    return rpc.RangeRequest(
        key=start or key,
        range_end=end or aetcd.utils.prefix_range_end(key),
        limit=limit,
        sort_order=rpc.RangeRequest.DESCEND if descending else rpc.RangeRequest.ASCEND,
        sort_target=rpc.RangeRequest.KEY,
        keys_only=keys_only,
    )
