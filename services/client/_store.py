"""The version-store: publish changes and wait for their outcome, read versions, approve,
promote, policies (``cfg.change.<ns>`` and ``cfg.api.store.*``)."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import nats.errors
from nats.aio.msg import Msg

from confbus.client._errors import ChangeRejected
from confbus.client._events import Events
from confbus.client._names import check_change_id, check_namespace
from confbus.client._trusted import seal_and_sign
from confbus.runtime.codec import encode
from confbus.runtime.errors import InvalidInput, NotFound, Unavailable
from confbus.runtime.propose import publish_change
from confbus.runtime.retry import budget, retry_unavailable
from confbus.runtime.sealing import Kek
from confbus.runtime.signing import SigningKey
from confbus.schemas import subjects
from confbus.schemas.api import store as store_api
from confbus.schemas.api.operation import Operation
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.changes import msg_id as change_msg_id
from confbus.schemas.events import AnyEvent, VersionCreated, VersionRejected, decode_event
from confbus.schemas.names import Format
from confbus.schemas.policy import Policy
from confbus.schemas.sealing import content_sha256
from confbus.schemas.streams import MAX_PAYLOAD
from confbus.schemas.variants import (
    Overlay,
    Variant,
    VariantError,
    VariantSet,
    encode_variants,
    variant_for,
    variant_set,
)
from confbus.schemas.versions import VersionInfo

# How often a wait for a change's outcome asks the store, in case its event was missed, and
# sends the change again (the first time sooner: a healthy store answers in milliseconds, and a
# change acked by a stream whose leader then died waits for its election, 4-9 s, unless sent
# again to the other change stream: docs/design.md §3.1).
_STATUS_RECHECK_S = 2.0
_RESEND_AFTER_S = 1.0
_STATUS_TRY_S = 1.0  # one status read while waiting: the next look is a second or two away
_PROPOSE_AGAIN_S = 1.0  # a propose unanswered this long is sent again beside the first


class Store(Events):
    """The client's side of the version-store."""

    async def publish(
        self,
        namespace: str,
        content: bytes,
        *,
        format: Format | None = None,
        change_id: str | None = None,
        author: str = "",
        message: str = "",
        base: int | None = None,
        rollback_of: int | None = None,
        strategy: str | None = None,
        selector: dict[str, str] | None = None,
        timeout: float = 30.0,
        signing_keys: Sequence[SigningKey] = (),
        keks: Mapping[str, Kek] | None = None,
        overlays: Sequence[Overlay] = (),
    ) -> VersionInfo:
        """Propose ``content`` as the next version of ``namespace`` and wait for the outcome.

        ``overlays``: variants (docs/design.md §2.6) — ``content`` is then the base, and a node
        runs it with every overlay whose selector its labels match, later ones winning.

        Returns the stored version (``status`` says ``approved`` or ``draft``: waiting for an
        approval); raises ``ChangeRejected`` with the reason, ``InvalidInput`` for what is refused
        before publishing (a bad namespace or change id), ``Unavailable`` when no outcome came
        within ``timeout`` (the change may still be queued: publishing it again with the same
        change id is safe). Without ``change_id`` one is derived (``default_change_id``).
        """
        check_namespace(namespace)
        if overlays:
            format = format or (await self.policy(namespace)).format
            content = with_overlays(content, format, overlays)
        sha = hashlib.sha256(content).hexdigest()
        if change_id is None:
            change_id = await self.default_change_id(namespace, sha, base, timeout=timeout)
        check_change_id(change_id)
        change = ChangeProposed(
            namespace=namespace,
            change_id=change_id,
            content=content,
            format=format,
            author=author,
            message=message,
            base=base,
            rollback_of=rollback_of,
            strategy=strategy,
            selector=selector,
        )
        change = await self.seal_and_sign(change, signing_keys, keks)

        async def send(judged_under: str) -> bool:
            ack = await publish_change(
                self.bus,
                namespace,
                encode(change),
                msg_id=change_msg_id(namespace, change_id, judged_under),
            )
            return bool(ack.duplicate)

        return await self.submit(change, send, timeout)

    async def propose_as(self, user: str, change: ChangeProposed, timeout: float) -> VersionInfo:
        """``publish`` with the author pinned: the change goes to the version-store on
        ``cfg.api.store.propose.<ns>.<user>`` (with authentication on, only ``user`` may publish
        there), which puts it on ``cfg.change.<ns>`` with ``user`` as its author; then wait for
        its outcome the same way."""
        op = store_api.PROPOSE.as_user(user, change.namespace)

        async def send(judged_under: str) -> bool:
            # The version-store sends it again under the policy in force itself. One try per
            # send: ``submit`` retries it, the same way as a publish. Sent twice when the first
            # is not answered within a second: a request lost with a dying nats-server would
            # hold the publish for the operation's whole deadline (10 s).
            reply = await self.call(op, change, retry_for=0, again_after=_PROPOSE_AGAIN_S)
            return reply.duplicate

        return await self.submit(change, send, timeout)

    async def seal_and_sign(
        self,
        change: ChangeProposed,
        signing_keys: Sequence[SigningKey] = (),
        keks: Mapping[str, Kek] | None = None,
    ) -> ChangeProposed:
        """``change`` sealed with ``keks`` (a secret namespace with a data key) and signed by
        each of ``signing_keys`` for the version it will be (``base + 1``; ``base`` defaults to
        the newest version now)."""

        async def latest() -> VersionInfo:
            return (await self.get(change.namespace, "latest", content=False)).info

        return await seal_and_sign(
            change, lambda: self.policy(change.namespace), latest, signing_keys, keks
        )

    async def submit(
        self, change: ChangeProposed, send: Callable[[str], Awaitable[bool]], timeout: float
    ) -> VersionInfo:
        """Send ``change`` with ``send`` (which says whether the stream took it as a duplicate)
        and wait for its outcome: the stored version, or ``ChangeRejected``; ``Unavailable``
        after ``timeout``. ``publish`` sends it on ``cfg.change.<ns>``, ``propose_as`` through
        the version-store's ``propose`` operation. ``send``'s argument is "" at first, and the
        digest of the policy in force when the change goes again because its recorded
        rejection came from a policy since changed (``schemas.changes.msg_id``)."""
        namespace, change_id = change.namespace, change.change_id
        size = len(encode(change))
        if size > MAX_PAYLOAD:
            raise InvalidInput(
                f"the change is {size} bytes on the wire (content {len(change.content)} bytes, "
                f"base64): more than the bus carries ({MAX_PAYLOAD})",
                where="content",
            )
        sha = content_sha256(change.content)
        send_event, receive = anyio.create_memory_object_stream[AnyEvent](100)

        async def on_event(msg: Msg) -> None:
            try:
                event = decode_event(msg.data)
            except DECODE_ERRORS:
                return
            if isinstance(event, VersionCreated | VersionRejected) and event.change_id == change_id:
                with contextlib.suppress(anyio.WouldBlock):
                    send_event.send_nowait(event)

        # Subscribe before sending, so the outcome cannot slip past.
        sub = await self.bus.nc.subscribe(subjects.event(namespace, "version.>"), cb=on_event)
        try:
            # Every read on the way (the change's status, the stored version) retries within the
            # same time.
            with anyio.move_on_after(timeout) as scope, budget(timeout) as deadline:
                duplicate = await _send_again(send, "", change_id, deadline)
                return await self._outcome(change, sha, duplicate, send, receive)
            assert scope.cancelled_caught
            raise Unavailable(
                f"{namespace}: no outcome for change {change_id} within {timeout:g}s — it may "
                "still be queued (is the version store running?); publishing it again with "
                f"--id {change_id} is safe"
            )
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            send_event.close()
            receive.close()

    async def _outcome(
        self,
        change: ChangeProposed,
        sha: str,
        duplicate: bool,
        send: Callable[[str], Awaitable[bool]],
        events: anyio.abc.ObjectReceiveStream[AnyEvent],
    ) -> VersionInfo:
        """Wait for the outcome of a published change: its event, or its recorded status (the
        event may have been emitted before we subscribed, or long ago for a retried change)."""
        ns, cid = change.namespace, change.change_id
        judged_under, wait = "", _RESEND_AFTER_S
        while True:
            try:
                # One short try: a request lost with a dying nats-server would otherwise hold
                # the wait for the read's whole deadline, while the event may be arriving.
                status = await self.change_status(ns, cid, timeout=_STATUS_TRY_S, retry_for=0)
            except Unavailable:
                status = None  # the store is down: the change waits in the stream; so do we
            if status is not None and status.status == "stored" and status.version is not None:
                return await self._stored(change, sha, status.version, status.sha256)
            if status is not None and status.status == "rejected" and duplicate:
                if status.outdated:
                    # Refused under a policy since changed: not an answer any more. Sent
                    # again, it is judged under the policy in force; wait for that outcome.
                    judged_under = status.policy_digest
                    duplicate = await _send_again(send, judged_under, cid)
                else:
                    # Our publish was a duplicate of an earlier one: its rejection is our
                    # answer, unless that earlier attempt sent other bytes under the same id.
                    raise _rejected_as(change, sha, status)
            # Not decided yet: the event says when. Re-check now and then in case we missed it
            # (a reconnect drops core messages).
            with anyio.move_on_after(wait) as waiting:
                event = await events.receive()
                if isinstance(event, VersionCreated):
                    return await self._stored(change, sha, event.version, event.sha256)
                if isinstance(event, VersionRejected):
                    if duplicate:
                        continue  # check the recorded bytes (status) before blaming ours
                    raise ChangeRejected(ns, cid, event.reason, event.where)
            if waiting.cancelled_caught:
                # Still no outcome: send it again. A no-op for a stream that holds it, and to
                # CFG_CHANGES_ALT besides (``publish_change``): the copy acked may sit in a
                # stream (or consumer) whose leader died, unread until its election.
                await _send_again(send, judged_under, cid)
            wait = _STATUS_RECHECK_S

    async def _stored(
        self, change: ChangeProposed, sha: str, version: int, stored_sha: str
    ) -> VersionInfo:
        if stored_sha and stored_sha != sha:
            raise ChangeRejected(
                change.namespace,
                change.change_id,
                f"change id {change.change_id!r} is already version {version} with other "
                f"content (sha256 {stored_sha[:12]}…, yours {sha[:12]}…); publish it with a "
                "new change id",
                "change_id",
            )
        stored = await self.get(change.namespace, str(version), content=False)
        return stored.info

    async def default_change_id(
        self, namespace: str, sha: str, base: int | None = None, *, timeout: float | None = None
    ) -> str:
        """A change id for content published without ``--id``: ``auto-<sha256[:24]>-<n>``, where
        ``n`` is the version it goes on top of (``base``, else the newest now).

        A retry of the same content is the same change (idempotent) — also after it was stored:
        when the newest version already is this content under such an id, that id is reused. The
        same content published again after other versions is a new change (``n`` moved on).
        The read is tried again while the store is unavailable, for ``timeout`` seconds (None:
        as ``confbus.runtime.api.call`` says, within the ``retry.budget`` around the caller).
        """
        if base is not None:
            return f"auto-{sha[:24]}-{base}"
        return change_id_after(await self.newest(namespace, timeout=timeout), sha)

    async def newest(self, namespace: str, *, timeout: float | None = None) -> VersionInfo | None:
        """The newest version of ``namespace`` (its info), None while it has none; the read is
        tried again while the store is unavailable, as ``default_change_id`` says."""
        try:
            return (await self.call(store_api.GET, _latest(namespace), retry_for=timeout)).info
        except NotFound:
            return None

    async def change_status(
        self,
        namespace: str,
        change_id: str,
        *,
        timeout: float | None = None,
        retry_for: float | None = None,
    ) -> store_api.ChangeStatusReply:
        """What became of a change id: ``stored`` (as ``version``), ``rejected`` (``reason``,
        ``where``; remembered 7 days) or ``unknown`` (not decided, or never seen). ``timeout``
        and ``retry_for`` as for ``call``."""
        request = store_api.ChangeStatusRequest(namespace=namespace, change_id=change_id)
        return await self.call(
            store_api.CHANGE_STATUS, request, timeout=timeout, retry_for=retry_for
        )

    async def dry_run(self, change: ChangeProposed) -> store_api.DryRunReply:
        """Validate ``change`` as the version-store would and diff it against the version it
        goes on top of; nothing is stored (a secret namespace's diff is left out)."""
        return await self.call(store_api.DRY_RUN, store_api.DryRunRequest(change=change))

    async def render(
        self, namespace: str, ref: str | int, labels: Mapping[str, str]
    ) -> tuple[VersionInfo, Variant]:
        """The bytes a node with ``labels`` runs for a version (``confbus show --for``)."""
        got = await self.get(namespace, ref)
        try:
            vs = variant_set(got.content or b"", got.info.format)
            return got.info, variant_for(vs, labels)
        except VariantError as exc:
            raise InvalidInput(str(exc), where="variants") from None

    async def get(
        self, namespace: str, ref: str | int = "latest", *, content: bool = True
    ) -> store_api.VersionReply:
        """A version by number or ``latest``/``production``/``last-good``; ``NotFound`` if none."""
        request = store_api.GetRequest(namespace=namespace, ref=str(ref), content=content)
        return await self.call(store_api.GET, request)

    async def history(
        self, namespace: str, *, limit: int = 50, before: int | None = None
    ) -> list[VersionInfo]:
        """Up to ``limit`` versions, newest first (below ``before`` if given), page by page."""
        out: list[VersionInfo] = []
        while len(out) < limit:
            page = await self.call(
                store_api.HISTORY,
                store_api.HistoryRequest(
                    namespace=namespace, before=before, limit=min(limit - len(out), 1000)
                ),
            )
            out.extend(page.versions)
            if page.next_before is None or not page.versions:
                break
            before = page.next_before
        return out

    async def diff(
        self,
        namespace: str,
        a: str | int,
        b: str | int,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> store_api.DiffReply:
        """A unified diff from version ``a`` to ``b`` (numbers or names, as for ``get``);
        ``labels``: of the bytes a node with these labels runs of each (``diff --for``)."""
        request = store_api.DiffRequest(
            namespace=namespace,
            a=str(a),
            b=str(b),
            labels=dict(labels) if labels is not None else None,
        )
        return await self.call(store_api.DIFF, request)

    async def approve(self, namespace: str, version: int, approver: str) -> VersionInfo:
        """Approve a draft as ``approver`` (someone other than its author); with
        authentication on, only confbus services may name the approver like this — a person
        approves as its NATS user (``store.APPROVE_AS``, what ``confbus approve`` sends)."""
        req = store_api.ApproveRequest(namespace=namespace, version=version, approver=approver)
        return (await self.call(store_api.APPROVE, req)).info

    async def reject(
        self, namespace: str, version: int, actor: str, reason: str = ""
    ) -> VersionInfo:
        """Refuse a draft (or a not yet rolled out approved version) for good."""
        return await self._act_on(store_api.REJECT, namespace, version, actor, reason)

    async def promote(
        self, namespace: str, version: int, actor: str, reason: str = ""
    ) -> VersionInfo:
        """Make ``version`` production (the previous one becomes ``superseded``); no node is
        switched by this — rollouts and rollbacks do that."""
        return await self._act_on(store_api.PROMOTE, namespace, version, actor, reason)

    async def mark_good(
        self, namespace: str, version: int, actor: str, reason: str = ""
    ) -> VersionInfo:
        """Record ``version`` as the namespace's last known good (what a rollback returns to)."""
        return await self._act_on(store_api.MARK_GOOD, namespace, version, actor, reason)

    async def _act_on(
        self,
        op: Operation[Any, store_api.VersionReply],
        namespace: str,
        version: int,
        actor: str,
        reason: str,
    ) -> VersionInfo:
        """Reject, promote or mark good: each request names the version, who acts and why."""
        req = op.request(namespace=namespace, version=version, actor=actor, reason=reason)
        return (await self.call(op, req)).info

    async def policy(self, namespace: str) -> Policy:
        """The namespace's policy (its default when none was set)."""
        return await self.call(
            store_api.POLICY_GET, store_api.PolicyGetRequest(namespace=namespace)
        )

    async def set_policy(self, policy: Policy, actor: str = "", *, dry_run: bool = False) -> Policy:
        """Store ``policy`` for its namespace (checked whole first); returns it as stored. The
        store announces what changed as ``policy.changed`` by ``actor``. ``dry_run``: only
        check it (``policy_from_document`` checks a document before this)."""
        request = store_api.PolicySetRequest(policy=policy, actor=actor, dry_run=dry_run)
        return await self.call(store_api.POLICY_SET, request)

    async def namespaces(self) -> list[str]:
        """Every namespace the store holds."""
        reply = await self.call(store_api.NAMESPACES, store_api.NamespacesRequest())
        return reply.namespaces


async def _send_again(
    send: Callable[[str], Awaitable[bool]],
    judged_under: str,
    change_id: str,
    deadline: float = math.inf,
) -> bool:
    """``send(judged_under)``, tried again while the bus is unavailable (a broker restarting)
    until ``deadline``: safe to repeat, the change's message id makes a second copy a no-op."""
    return await retry_unavailable(
        lambda: send(judged_under), what=f"publishing change {change_id}", deadline=deadline
    )


def with_overlays(base: bytes, format: Format, overlays: Sequence[Overlay]) -> bytes:
    """The content of a version made of ``base`` and ``overlays`` (``InvalidInput`` if the base
    is not UTF-8; the version-store validates the rest, naming the variant)."""
    try:
        text = base.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the base is not UTF-8 at byte {exc.start}", where="content") from None
    return encode_variants(VariantSet(format=format, base=text, overlays=list(overlays)))


def change_id_after(newest: VersionInfo | None, sha: str) -> str:
    """``Client.default_change_id`` for content ``sha`` without a base, given the namespace's
    newest version now (``Client.newest``; None: it has none)."""
    prefix = f"auto-{sha[:24]}"
    if newest is None:
        return f"{prefix}-0"
    if newest.sha256 == sha and newest.change_id == f"{prefix}-{newest.parent or 0}":
        return newest.change_id
    return f"{prefix}-{newest.version}"


def _latest(namespace: str) -> store_api.GetRequest:
    return store_api.GetRequest(namespace=namespace, ref="latest", content=False)


def _rejected_as(
    change: ChangeProposed, sha: str, status: store_api.ChangeStatusReply
) -> ChangeRejected:
    ns, cid = change.namespace, change.change_id
    if status.sha256 and status.sha256 != sha:
        return ChangeRejected(
            ns,
            cid,
            f"change id {cid!r} was used recently for other content (sha256 "
            f"{status.sha256[:12]}…), which was rejected: {status.reason} — publish yours "
            "with a new change id",
            "change_id",
        )
    return ChangeRejected(ns, cid, status.reason, status.where)
