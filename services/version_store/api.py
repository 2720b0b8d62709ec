"""``cfg.api.store.*``: the version-store's request/reply API (``nats.micro``).

Reads (get, history, diff, change_status, policy_get, namespaces, export) go straight to the
store. Status changes (approve, promote, mark_good, reject) are written by the store first and
then announced on ``CFG_EVENTS``; a repeated call (a retry after a lost reply, a redelivered
event) writes nothing, and announces only if the stream does not already say it. The store
serialises these writes with the consumer's group commits (one write transaction at a time per
process; ``BEGIN IMMEDIATE`` or etcd compare-and-set across processes), so numbering never races.

A secret namespace's content is returned by ``get``/``diff`` (operators with the permission to
ask) but never put in an event, a log line, or a ``dry_run`` diff (which CI may call).

Identity (``confbus.runtime.identity``): every operation that records who acted is also served
on a subject whose last token is the caller's NATS user — ``approve.<user>``, ``reject.<user>``,
``promote.<user>``, ``mark_good.<user>``, ``policy_set.<user>`` — and changes can be proposed on
``propose.<ns>.<user>`` (the store publishes them to ``cfg.change.<ns>`` with that author). With
authentication on, the permissions let each user publish only on its own name and keep the
plain, self-declared twins for confbus services; without it, both work as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from confbus.runtime import identity
from confbus.runtime.api import Endpoint
from confbus.runtime.bus import Bus
from confbus.runtime.codec import encode
from confbus.runtime.errors import InvalidInput, NotFound
from confbus.runtime.events import emit
from confbus.runtime.propose import publish_change
from confbus.schemas.api import store as api
from confbus.schemas.api.operation import Operation
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.changes import msg_id as change_msg_id
from confbus.schemas.events import (
    MAX_POLICY_CHANGES,
    PolicyChanged,
    VersionApproved,
    VersionLastGood,
    VersionPromoted,
    VersionRejected,
)
from confbus.schemas.policy import Policy, policy_digest
from confbus.schemas.policydiff import policy_changes
from confbus.schemas.selectors import selector_text
from confbus.schemas.streams import MAX_PAYLOAD
from confbus.schemas.variants import VariantError, has_variants, render, variant_set
from confbus.schemas.versions import VersionInfo
from confbus.version_store.changes import decide
from confbus.version_store.errors import InvalidConfig, VersionConflict
from confbus.version_store.eventlog import last_event, scan
from confbus.version_store.policycheck import check_full_policy
from confbus.version_store.rejections import Rejections
from confbus.version_store.sessions import Sessions, Upload, page
from confbus.version_store.storage import NamespaceExport, Store, StoredVersion, rules
from confbus.version_store.validate import diff
from confbus.version_store.variantcheck import Members, variant_diffs

log = logging.getLogger("confbus.version_store.api")

MAX_HISTORY_PAGE = 1000
MAX_EXPORT_PAGE_BYTES = 2 * 1024 * 1024


@dataclass
class StoreApi:
    bus: Bus
    store: Store
    rejections: Rejections
    replica: str  # this process's token, for the session endpoints
    exports: Sessions[NamespaceExport] = field(default_factory=lambda: Sessions("export"))
    imports: Sessions[Upload] = field(default_factory=lambda: Sessions("import"))
    policy_writes: anyio.Lock = field(default_factory=anyio.Lock)
    members: Members = field(init=False)

    def __post_init__(self) -> None:
        self.members = Members(self.bus)

    def endpoints(self) -> list[Endpoint[Any, Any]]:
        bound: list[tuple[Operation[Any, Any], Callable[[Any], Awaitable[Any]]]] = [
            (api.GET, self.get),
            (api.HISTORY, self.history),
            (api.DIFF, self.diff),
            (api.APPROVE, self.approve),
            (api.PROMOTE, self.promote),
            (api.MARK_GOOD, self.mark_good),
            (api.REJECT, self.reject),
            (api.POLICY_GET, self.policy_get),
            (api.POLICY_SET, self.policy_set),
            (api.DRY_RUN, self.dry_run),
            (api.CHANGE_STATUS, self.change_status),
            (api.NAMESPACES, self.namespaces),
            (api.EXPORT, self.export),
            (api.EXPORT_AT.at(self.replica), self.export),
            (api.IMPORT, self.import_),
            (api.IMPORT_AT.at(self.replica), self.import_),
            # The same operations with the caller's NATS user pinned in the subject.
            (api.APPROVE_AS, self.approve_as),
            (api.REJECT_AS, self.reject_as),
            (api.PROMOTE_AS, self.promote_as),
            (api.MARK_GOOD_AS, self.mark_good_as),
            (api.POLICY_SET_AS, self.policy_set_as),
            (api.PROPOSE, self.propose),
        ]
        # Every store operation runs in its own task: reads wait on SQLite or etcd.
        return [Endpoint(op, handler, concurrent=True) for op, handler in bound]

    # -- reads --------------------------------------------------------------------------------

    async def get(self, req: api.GetRequest) -> api.VersionReply:
        if not req.content:
            return api.VersionReply(info=await self.store.resolve(req.namespace, req.ref))
        # A number needs no resolving: one read brings the info and the bytes (the
        # coordinator's fetch in front of every prepare).
        want = rules.parse_ref(req.namespace, req.ref)
        if not isinstance(want, int):
            want = (await self.store.resolve(req.namespace, req.ref)).version
        sv = await self.store.get(req.namespace, want)
        return api.VersionReply(info=sv.info, content=sv.content, signatures=sv.signatures)

    async def history(self, req: api.HistoryRequest) -> api.HistoryReply:
        limit = max(1, min(req.limit, MAX_HISTORY_PAGE))
        versions = await self.store.history(req.namespace, req.before, limit)
        more = len(versions) == limit and versions[-1].version > 1
        return api.HistoryReply(
            versions=versions, next_before=versions[-1].version if more else None
        )

    async def diff(self, req: api.DiffRequest) -> api.DiffReply:
        a = await self._resolved(req.namespace, req.a)
        b = await self._resolved(req.namespace, req.b)
        a_bytes, b_bytes, suffix = a.content, b.content, ""
        if req.labels is not None:
            a_bytes, b_bytes = (_rendered(v, req.labels) for v in (a, b))
            suffix = f" for {selector_text(req.labels) or 'no labels'}"
        text = await anyio.to_thread.run_sync(
            diff,
            a_bytes,
            b_bytes,
            f"{req.namespace} v{a.info.version}{suffix}",
            f"{req.namespace} v{b.info.version}{suffix}",
        )
        return api.DiffReply(a=a.info.version, b=b.info.version, diff=text)

    async def _resolved(self, namespace: str, ref: str) -> StoredVersion:
        info = await self.store.resolve(namespace, ref)
        return await self.store.get(namespace, info.version)

    async def change_status(self, req: api.ChangeStatusRequest) -> api.ChangeStatusReply:
        info = await self.store.by_change_id(req.namespace, req.change_id)
        if info is not None:
            return api.ChangeStatusReply(status="stored", version=info.version, sha256=info.sha256)
        found = await self.rejections.find(req.namespace, req.change_id)
        if found is None:
            return api.ChangeStatusReply(status="unknown")
        digest = policy_digest(await self.store.get_policy(req.namespace))
        return api.ChangeStatusReply(
            status="rejected",
            reason=found.reason,
            where=found.where,
            sha256=found.sha256,
            outdated=not found.holds_under(digest),
            policy_digest=digest,
        )

    async def policy_get(self, req: api.PolicyGetRequest) -> Policy:
        return await self.store.get_policy(req.namespace)

    async def namespaces(self, req: api.NamespacesRequest) -> api.NamespacesReply:
        return api.NamespacesReply(namespaces=await self.store.namespaces())

    # -- status changes -----------------------------------------------------------------------

    async def approve(self, req: api.ApproveRequest) -> api.VersionReply:
        ns, v = req.namespace, req.version
        before = await self.store.resolve(ns, v)
        info = await self.store.approve(ns, v, req.approver)
        repeat = before.status == "approved" and before.approved_by == req.approver
        if not repeat or v not in await self._approved_versions(ns, info):
            await emit(
                self.bus,
                VersionApproved(namespace=ns, actor=req.approver, version=v),
                msg_id=f"version:{ns}:{v}:approved",
            )
            log.info(
                "version approved", extra={"namespace": ns, "version": v, "actor": req.approver}
            )
        return api.VersionReply(info=info)

    async def _approved_versions(self, namespace: str, info: VersionInfo) -> set[int]:
        # An approval comes after the version's creation: nothing older needs reading.
        seen = await scan(self.bus, namespace, info.created_at, kind="approved")
        return {e.version for e in seen.other if isinstance(e, VersionApproved)}

    async def promote(self, req: api.PromoteRequest) -> api.VersionReply:
        ns, v = req.namespace, req.version
        before = await self.store.resolve(ns, v)
        promotion = await self.store.promote(ns, v)
        if before.status == "production":
            # Already production: say it only if the newest promotion the stream knows is not
            # this one (a crash between the store write and the event).
            last = await last_event(self.bus, ns, "promoted")
            if isinstance(last, VersionPromoted) and last.version == v:
                return api.VersionReply(info=promotion.info)
        event = VersionPromoted(
            namespace=ns, actor=req.actor, reason=req.reason, version=v, previous=promotion.previous
        )
        # A version can be promoted again later (after another), so the id names the previous.
        await emit(self.bus, event, msg_id=f"version:{ns}:{v}:promoted:{promotion.previous or 0}")
        log.info(
            "version promoted",
            extra={
                "namespace": ns,
                "version": v,
                "previous": promotion.previous,
                "actor": req.actor,
            },
        )
        return api.VersionReply(info=promotion.info)

    async def mark_good(self, req: api.MarkGoodRequest) -> api.VersionReply:
        ns, v = req.namespace, req.version
        head = await self.store.head(ns)
        info = await self.store.mark_last_good(ns, v)
        if head.last_good == v:
            last = await last_event(self.bus, ns, "last_good")
            if isinstance(last, VersionLastGood) and last.version == v:
                return api.VersionReply(info=info)
        await emit(
            self.bus,
            VersionLastGood(
                namespace=ns, actor=req.actor, reason=req.reason, version=v, sha256=info.sha256
            ),
            msg_id=f"version:{ns}:{v}:last_good:{head.last_good or 0}",
        )
        log.info("last known good", extra={"namespace": ns, "version": v, "actor": req.actor})
        return api.VersionReply(info=info)

    async def reject(self, req: api.RejectRequest) -> api.VersionReply:
        ns, v = req.namespace, req.version
        before = await self.store.resolve(ns, v)
        info = await self.store.reject(ns, v)
        if before.status != "rejected":
            why = f": {req.reason}" if req.reason else ""
            await emit(
                self.bus,
                VersionRejected(
                    namespace=ns,
                    actor=req.actor,
                    reason=f"version {v} rejected by {req.actor}{why}",
                    change_id=info.change_id,
                    where=f"version {v}",
                ),
                msg_id=f"version:{ns}:{v}:rejected",
            )
        return api.VersionReply(info=info)

    # -- policy -------------------------------------------------------------------------------

    async def policy_set(self, req: api.PolicySetRequest) -> Policy:
        check_full_policy(req.policy)
        if req.dry_run:
            return req.policy
        ns = req.policy.namespace
        async with self.policy_writes:  # so that each announced diff is against its own before
            before = await self.store.get_policy(ns)
            await self.store.set_policy(req.policy)
            after = await self.store.get_policy(ns)
        await self._announce_policy(before, after, req.actor)
        log.info("policy set", extra={"namespace": ns, "actor": req.actor})
        return after

    async def _announce_policy(
        self, before: Policy, after: Policy, actor: str, reason: str = ""
    ) -> bool:
        """``policy.changed`` with what changed, if anything did; whether it did."""
        changes = policy_changes(before, after)
        if not changes:
            return False
        event = PolicyChanged(
            namespace=after.namespace,
            actor=actor,
            reason=reason,
            digest=policy_digest(after),
            changes=changes[:MAX_POLICY_CHANGES],
            more=max(0, len(changes) - MAX_POLICY_CHANGES),
        )
        await emit(self.bus, event)
        return True

    # -- the same, as the NATS user the subject pins (confbus.runtime.identity) --------------

    async def approve_as(self, req: api.ApproveRequest) -> api.VersionReply:
        return await self.approve(identity.as_caller(req, "approver"))

    async def reject_as(self, req: api.RejectRequest) -> api.VersionReply:
        return await self.reject(identity.as_caller(req))

    async def promote_as(self, req: api.PromoteRequest) -> api.VersionReply:
        return await self.promote(identity.as_caller(req))

    async def mark_good_as(self, req: api.MarkGoodRequest) -> api.VersionReply:
        return await self.mark_good(identity.as_caller(req))

    async def policy_set_as(self, req: api.PolicySetRequest) -> Policy:
        return await self.policy_set(identity.as_caller(req))

    async def propose(self, change: ChangeProposed) -> api.ProposeReply:
        """Put a change on ``cfg.change.<ns>`` with the caller as its author, and answer with the
        stream's ack (``stream``, ``seq``, ``duplicate``): the caller then waits for the outcome
        as after a publish of its own. Nothing is validated here; the consumer does that."""
        who = identity.pinned_identity()
        (ns,) = identity.pinned_scope(1)
        if change.namespace != ns:
            raise identity.Forbidden(
                f"a change of namespace {change.namespace!r} proposed on the subject of {ns!r}",
                where="namespace",
            )
        change = msgspec.structs.replace(
            change, author=identity.claim("author", change.author, who)
        )
        data = encode(change)
        if len(data) > MAX_PAYLOAD:
            raise InvalidInput(
                f"the change is {len(data)} bytes on the wire: more than the bus carries "
                f"({MAX_PAYLOAD})",
                where="content",
            )
        cid = change.change_id
        ack = await publish_change(self.bus, ns, data, msg_id=change_msg_id(ns, cid))
        if ack.duplicate:
            # What a direct publisher does (Client.submit): a change refused under a policy
            # since replaced goes again, to be judged under the one in force.
            status = await self.change_status(api.ChangeStatusRequest(namespace=ns, change_id=cid))
            if status.outdated:
                again = change_msg_id(ns, cid, status.policy_digest)
                ack = await publish_change(self.bus, ns, data, msg_id=again)
        log.info(
            "change proposed",
            extra={"namespace": ns, "change_id": change.change_id, "author": who},
        )
        return api.ProposeReply(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))

    # -- dry run --------------------------------------------------------------------------------

    async def dry_run(self, req: api.DryRunRequest) -> api.DryRunReply:
        change = req.change
        ns = change.namespace
        policy = await self.store.get_policy(ns)
        target: VersionInfo | None = None
        if change.rollback_of is not None:
            try:
                target = await self.store.resolve(ns, change.rollback_of)
            except NotFound:
                target = None
        members = await self.members.of(ns) if has_variants(change.content) else {}
        try:
            nv = await anyio.to_thread.run_sync(decide, change, policy, target, members)
        except InvalidConfig as exc:
            return api.DryRunReply(ok=False, reason=exc.message, where=exc.where)
        prior = await self.store.by_change_id(ns, change.change_id)
        if prior is not None:
            if prior.sha256 == nv.sha256:
                return api.DryRunReply(
                    ok=True,
                    reason=f"already stored as version {prior.version}: publishing it again "
                    "changes nothing",
                    would_be_version=prior.version,
                )
            err = VersionConflict.change_reused(
                ns, change.change_id, prior.version, prior.sha256, nv.sha256
            )
            return api.DryRunReply(ok=False, reason=err.message, where="change_id")
        head = await self.store.head(ns)
        if change.base is not None and change.base != head.newest:
            err = VersionConflict.stale_base(ns, change.base, head.newest)
            return api.DryRunReply(ok=False, reason=err.message, where="base")
        text, note = "", ""
        variants: list[api.VariantDiff] = []
        if policy.secret:
            note = f"namespace {ns!r} is secret: the diff is not shown (confbus diff shows it)"
        else:
            old = (await self.store.get(ns, head.newest)).content if head.newest else None
            if has_variants(change.content) or (old is not None and has_variants(old)):
                variants = await anyio.to_thread.run_sync(
                    variant_diffs, ns, old, f"v{head.newest}", change.content, nv.format, members
                )
            elif old is not None:
                text = await anyio.to_thread.run_sync(
                    diff, old, change.content, f"{ns} v{head.newest}", f"{ns} (proposed)"
                )
        return api.DryRunReply(
            ok=True,
            reason=note,
            would_be_version=head.newest + 1,
            diff=text,
            variants=variants,
        )

    # -- backup and restore ---------------------------------------------------------------------

    async def export(self, req: api.ExportRequest) -> api.ExportReply:
        if req.session:
            sid, snap = req.session, self.exports.of(req.session, req.namespace)
        else:
            snap = await self.store.export(req.namespace)
            if not snap.versions and snap.policy is None:
                raise NotFound(f"{req.namespace}: no versions and no policy")
            sid = self.exports.new(snap)
        max_bytes = max(1, min(req.max_bytes, MAX_EXPORT_PAGE_BYTES))
        versions = page(snap, req.offset, max_bytes)
        done = req.offset + len(versions) >= len(snap.versions)
        if done:
            self.exports.drop(sid)
        return api.ExportReply(
            namespace=req.namespace,
            session=sid,
            total=len(snap.versions),
            offset=req.offset,
            versions=versions,
            production=snap.production,
            last_good=snap.last_good,
            policy=snap.policy,
            done=done,
            replica=self.replica,
        )

    async def import_(self, req: api.ImportRequest) -> api.ImportReply:
        if req.session:
            sid, upload = req.session, self.imports.of(req.session, req.namespace)
        else:
            upload = Upload(req.namespace)
            sid = self.imports.new(upload)
        try:
            upload.add(req.versions)
        except InvalidInput:
            self.imports.drop(sid)
            raise
        if not req.done:
            return api.ImportReply(session=sid, received=len(upload.versions), replica=self.replica)
        self.imports.drop(sid)
        data = NamespaceExport(
            namespace=req.namespace,
            versions=upload.versions,
            production=req.production,
            last_good=req.last_good,
            policy=req.policy,
        )
        async with self.policy_writes:
            before = await self.store.get_policy(req.namespace)
            written = await self.store.import_(data)
            after = await self.store.get_policy(req.namespace)
        changed = await self._announce_policy(
            before, after, req.actor, reason="restored from a backup"
        )
        log.info("namespace imported", extra={"namespace": req.namespace, "versions": written})
        return api.ImportReply(
            session=sid,
            received=len(upload.versions),
            imported=written,
            replica=self.replica,
            policy_changed=changed,
        )


def _rendered(v: StoredVersion, labels: Mapping[str, str]) -> bytes:
    """What a node with ``labels`` runs of ``v``; ``InvalidInput`` naming the variant."""
    try:
        return render(variant_set(v.content, v.info.format), labels)
    except VariantError as exc:
        raise InvalidInput(str(exc), where="variants") from None
