"""What can go wrong in the version-store, and whether retrying helps.

```
ConfbusError                         (confbus.runtime.errors)
 └── StoreError
      ├── InvalidConfig       permanent: the content (or a policy) is wrong; ``where`` says where
      ├── VersionConflict     permanent: a stale ``--base``, or a change id reused for other bytes
      ├── InvalidTransition   permanent: e.g. approving your own version, promoting a draft
      ├── NotFound            permanent: no such namespace / version
      └── StoreUnavailable    retryable: SQLite busy, etcd unreachable or without a leader
           └── QuotaExceeded  retryable only after an operator acts (compact, defragment, grow)
```

Each class also derives from the shared runtime class of the same meaning (``InvalidInput``,
``Conflict``, ``NotFound``, ``Unavailable``), so a consumer that only knows the runtime tree
still acks, naks or dead-letters correctly. ``QuotaExceeded`` is deliberately *retryable*: a
full store is an outage, and docs/design.md §10.2 says an outage must not dead-letter good
changes — the consumer should back off for ``retry_after_s`` instead.
"""

from __future__ import annotations

from confbus.runtime import errors as rt


class StoreError(rt.ConfbusError):
    """Base of every version-store error."""

    retryable: bool = False


class InvalidConfig(StoreError, rt.InvalidInput):
    """The content (or the policy) can never be accepted as it is."""

    def __init__(self, reason: str, where: str = "") -> None:
        self.reason = reason
        super().__init__(reason, where=where)


class VersionConflict(StoreError, rt.Conflict):
    """Someone else got there first: a stale base, or a change id that already names other bytes.

    ``existing`` is the version that already holds the change id (when that is the cause);
    ``base``/``newest`` are set for a stale base.
    """

    def __init__(
        self,
        namespace: str,
        reason: str,
        *,
        existing: int | None = None,
        base: int | None = None,
        newest: int | None = None,
    ) -> None:
        self.namespace = namespace
        self.existing = existing
        self.base = base
        self.newest = newest
        super().__init__(f"{namespace}: {reason}")

    @classmethod
    def stale_base(cls, namespace: str, base: int, newest: int) -> VersionConflict:
        return cls(
            namespace,
            f"base {base} is stale: newest is {newest}",
            base=base,
            newest=newest,
        )

    @classmethod
    def change_reused(
        cls, namespace: str, change_id: str, existing: int, existing_sha256: str, sha256: str
    ) -> VersionConflict:
        return cls(
            namespace,
            f"change id {change_id!r} is already version {existing} with sha256 "
            f"{existing_sha256[:12]}…; refusing different content (sha256 {sha256[:12]}…) "
            "under the same id — publish it with a new change id",
            existing=existing,
        )


class InvalidTransition(StoreError, rt.Conflict):
    """A status change the rules forbid (approve your own version, promote a draft, ...)."""

    def __init__(self, namespace: str, version: int, reason: str) -> None:
        self.namespace = namespace
        self.version = version
        super().__init__(f"{namespace} version {version}: {reason}")


class NotFound(StoreError, rt.NotFound):
    def __init__(self, namespace: str, what: str) -> None:
        self.namespace = namespace
        self.what = what
        super().__init__(f"{namespace}: {what} not found")


class StoreUnavailable(StoreError, rt.Unavailable):
    """The store cannot answer now; the same request may succeed later."""

    retryable = True
    retry_after_s: float = 1.0


class QuotaExceeded(StoreUnavailable):
    """The store refuses new data until an operator frees or adds space."""

    retry_after_s = 30.0
