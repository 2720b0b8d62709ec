"""The rules both backends share, as plain functions: the only place they are written down.

A backend reads what it needs (the namespace heads, the versions already holding the batch's
change ids), asks ``plan_batch`` what to do, and writes the ``Planned.new`` rows in one
transaction. Status changes go through ``check_*``; imports through ``check_export``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from confbus.schemas.names import CHANGE_ID_PATTERN, FORMATS, InvalidName, check_name
from confbus.schemas.sealing import content_sha256
from confbus.schemas.versions import VersionInfo
from confbus.version_store.errors import (
    InvalidConfig,
    InvalidTransition,
    NotFound,
    StoreError,
    VersionConflict,
)
from confbus.version_store.storage.base import (
    AppendResult,
    NamespaceExport,
    NewVersion,
    StoredVersion,
    VersionRef,
    sha256_hex,
)

_CHANGE_ID_RE = re.compile(CHANGE_ID_PATTERN)
Named = Literal["latest", "production", "last-good"]
_NAMED: tuple[Named, ...] = ("latest", "production", "last-good")


@dataclass
class Planned:
    """The outcome of planning a batch: one result per item, and the rows to insert."""

    results: list[AppendResult]
    new: list[StoredVersion] = field(default_factory=list)
    newest: dict[str, int] = field(default_factory=dict)  # per namespace, after the batch


def check_item(item: NewVersion) -> StoreError | None:
    """Refuse what no backend may store: names that would break keys, bytes not matching."""
    try:
        check_name(item.namespace, "namespace")
    except InvalidName as e:
        return InvalidConfig(str(e), "namespace")
    if not _CHANGE_ID_RE.fullmatch(item.change_id):
        return InvalidConfig(
            f"invalid change id {item.change_id!r}: must match {CHANGE_ID_PATTERN}", "change_id"
        )
    if item.format not in FORMATS:
        return InvalidConfig(f"unknown format {item.format!r}", "format")
    if item.status not in ("draft", "approved"):
        return InvalidConfig(f"a new version is draft or approved, not {item.status!r}", "status")
    if content_sha256(item.content) != item.sha256:
        # The bytes changed between the publisher and here: storing them would break integrity.
        return InvalidConfig(
            f"sha256 {item.sha256[:12]}… does not match the content "
            f"({content_sha256(item.content)[:12]}…)",
            "sha256",
        )
    return None


def plan_batch(
    batch: list[NewVersion],
    newest: Mapping[str, int],
    existing: Mapping[tuple[str, str], VersionInfo],
) -> Planned:
    """Decide each item in order, as if appended one after the other.

    ``newest``: the newest version per namespace now (absent: 0). ``existing``: the versions
    already holding ``(namespace, change_id)`` for the batch's change ids.
    """
    heads = dict(newest)
    known: dict[tuple[str, str], VersionInfo] = dict(existing)
    planned = Planned(results=[])
    for item in batch:
        planned.results.append(_plan_one(item, heads, known, planned))
    planned.newest = heads
    return planned


def _plan_one(
    item: NewVersion,
    heads: dict[str, int],
    known: dict[tuple[str, str], VersionInfo],
    planned: Planned,
) -> AppendResult:
    error = check_item(item)
    if error is not None:
        return AppendResult("invalid", error=error)
    ns = item.namespace
    # The change id is checked before the base: a retried change whose first attempt was
    # stored must come back as that version, even though its base is now stale.
    prior = known.get((ns, item.change_id))
    if prior is not None:
        if prior.sha256 == item.sha256:
            return AppendResult("duplicate", info=prior)
        return AppendResult(
            "conflict",
            error=VersionConflict.change_reused(
                ns, item.change_id, prior.version, prior.sha256, item.sha256
            ),
        )
    head = heads.get(ns, 0)
    if item.base is not None and item.base != head:
        if head == 0:
            reason = f"base {item.base} is stale: the namespace has no versions yet"
            return AppendResult(
                "conflict",
                error=VersionConflict(ns, reason, base=item.base, newest=0),
            )
        return AppendResult("conflict", error=VersionConflict.stale_base(ns, item.base, head))
    if item.rollback_of is not None and not 1 <= item.rollback_of <= head:
        return AppendResult(
            "invalid",
            error=InvalidConfig(
                f"rollback_of {item.rollback_of} names no version (newest is {head})",
                "rollback_of",
            ),
        )
    info = VersionInfo(
        namespace=ns,
        version=head + 1,
        sha256=item.sha256,
        size=len(item.content),
        format=item.format,
        parent=head or None,
        author=item.author,
        message=item.message,
        change_id=item.change_id,
        created_at=item.created_at,
        status=item.status,
        rollback_of=item.rollback_of,
    )
    heads[ns] = head + 1
    known[(ns, item.change_id)] = info
    planned.new.append(
        StoredVersion(
            info=info,
            content=item.content,
            strategy=item.strategy,
            selector=item.selector,
            signatures=item.signatures,
        )
    )
    return AppendResult("stored", info=info)


# -- references -----------------------------------------------------------------------------


def parse_ref(namespace: str, ref: VersionRef) -> int | Named:
    if isinstance(ref, int) and not isinstance(ref, bool):
        if ref < 1:
            raise NotFound(namespace, f"version {ref}")
        return ref
    if isinstance(ref, str):
        if ref in _NAMED:
            return ref
        if ref.isdigit() and int(ref) >= 1:
            return int(ref)
    raise NotFound(
        namespace, f"version {ref!r} (expected a number, latest, production or last-good)"
    )


# -- status transitions ---------------------------------------------------------------------


def check_approve(info: VersionInfo, approver: str) -> bool:
    """True if ``approve`` must write; False if it is a repeat of a done approval."""
    ns, v = info.namespace, info.version
    if not approver:
        raise InvalidTransition(ns, v, "an approval needs the approver's identity")
    if info.status == "approved" and info.approved_by == approver:
        return False  # a redelivered approval changes nothing more (docs/design.md §8.6)
    if info.status != "draft":
        raise InvalidTransition(ns, v, f"only a draft can be approved; this one is {info.status}")
    if approver == info.author:
        raise InvalidTransition(
            ns, v, f"{approver!r} is the author; a version must be approved by someone else"
        )
    return True


def check_promote(info: VersionInfo) -> bool:
    """True if ``promote`` must write; False if the version already is production."""
    if info.status == "production":
        return False
    if info.status not in ("approved", "superseded"):
        raise InvalidTransition(
            info.namespace,
            info.version,
            f"only an approved (or formerly production) version can be promoted; "
            f"this one is {info.status}",
        )
    return True


def check_reject(info: VersionInfo) -> bool:
    if info.status == "rejected":
        return False
    if info.status not in ("draft", "approved"):
        raise InvalidTransition(
            info.namespace,
            info.version,
            f"a version that has been {info.status} is history; roll back with a new version",
        )
    return True


def check_last_good(info: VersionInfo) -> None:
    if info.status not in ("approved", "production", "superseded"):
        raise InvalidTransition(
            info.namespace, info.version, f"a {info.status} version cannot be the last known good"
        )


# -- import ---------------------------------------------------------------------------------


def check_export(data: NamespaceExport) -> None:
    """Refuse an export that is not exactly what a store could have produced."""
    ns = data.namespace
    try:
        check_name(ns, "namespace")
    except InvalidName as e:
        raise InvalidConfig(str(e), "namespace") from None
    if data.policy is not None and data.policy.namespace != ns:
        raise InvalidConfig(f"policy is for {data.policy.namespace!r}, not {ns!r}", "policy")
    seen: set[str] = set()
    production = [sv.info.version for sv in data.versions if sv.info.status == "production"]
    for i, sv in enumerate(data.versions, start=1):
        info = sv.info
        where = f"versions[{i - 1}]"
        if info.namespace != ns:
            raise InvalidConfig(f"version {info.version} belongs to {info.namespace!r}", where)
        if info.version != i or info.parent != (i - 1 or None):
            raise InvalidConfig(
                f"versions must be 1..n in order with parent n-1; found {info.version} "
                f"(parent {info.parent}) at position {i}",
                where,
            )
        actual = content_sha256(sv.content)
        if actual != info.sha256 or info.size != len(sv.content):
            raise InvalidConfig(
                f"version {i}: content sha256 {actual[:12]}… ({len(sv.content)} bytes) does "
                f"not match the recorded {info.sha256[:12]}… ({info.size} bytes)",
                where,
            )
        if info.change_id in seen:
            raise InvalidConfig(f"change id {info.change_id!r} appears twice", where)
        seen.add(info.change_id)
        error = check_item(
            NewVersion(namespace=ns, change_id=info.change_id, content=b"", sha256=sha256_hex(b""))
        )
        if error is not None:
            raise error
    n = len(data.versions)
    if production != ([data.production] if data.production else []):
        raise InvalidConfig(
            f"production pointer {data.production} disagrees with statuses {production}",
            "production",
        )
    if data.last_good is not None and not 1 <= data.last_good <= n:
        raise InvalidConfig(f"last_good {data.last_good} names no version", "last_good")
    flagged = [sv.info.version for sv in data.versions if sv.info.last_good]
    if flagged != ([data.last_good] if data.last_good else []):
        raise InvalidConfig(
            f"last_good pointer {data.last_good} disagrees with flags {flagged}", "last_good"
        )
