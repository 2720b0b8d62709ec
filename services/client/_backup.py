"""Backup and restore of a namespace: every version with its content, pointers and policy,
paged through one consistent snapshot (``cfg.api.store.export`` / ``import``)."""

from __future__ import annotations

import msgspec

from confbus.client._connection import Connection
from confbus.schemas.api import store as store_api
from confbus.schemas.base import project
from confbus.schemas.policy import Policy


class NamespaceBackup(msgspec.Struct, frozen=True, kw_only=True):
    """Every version of a namespace with its content, pointers and policy (``confbus backup``)."""

    namespace: str
    versions: list[store_api.ExportedVersion]
    production: int | None = None
    last_good: int | None = None
    policy: Policy | None = None


class Backups(Connection):
    """The client's backup and restore."""

    async def export_namespace(self, namespace: str, page_bytes: int = 1 << 20) -> NamespaceBackup:
        """One consistent snapshot of a namespace (policy, versions with content, pointers),
        fetched in pages of about ``page_bytes`` of content."""
        op, session, offset = store_api.EXPORT, "", 0
        versions: list[store_api.ExportedVersion] = []
        while True:
            page = await self.call(
                op,
                store_api.ExportRequest(
                    namespace=namespace, session=session, offset=offset, max_bytes=page_bytes
                ),
            )
            versions.extend(page.versions)
            offset += len(page.versions)
            if page.done:
                return project(page, NamespaceBackup, namespace=namespace, versions=versions)
            # The snapshot lives on the replica that took it.
            op, session = store_api.EXPORT_AT.at(page.replica), page.session

    async def import_namespace(
        self, backup: NamespaceBackup, page_bytes: int = 1 << 20, *, actor: str = ""
    ) -> store_api.ImportReply:
        """Restore a namespace into the store; the reply says how many versions were written
        (``imported``; 0: the identical versions were there) and whether the policy was
        replaced (``policy_changed``, announced as ``policy.changed`` by ``actor``). The store
        checks everything (hashes, numbering, pointers) and writes all or nothing."""
        pages: list[list[store_api.ExportedVersion]] = [[]]
        size = 0
        for v in backup.versions:
            if pages[-1] and size + len(v.content) > page_bytes:
                pages.append([])
                size = 0
            pages[-1].append(v)
            size += len(v.content)
        op, session = store_api.IMPORT, ""
        for i, chunk in enumerate(pages):
            last = i == len(pages) - 1
            reply = await self.call(
                op,
                store_api.ImportRequest(
                    namespace=backup.namespace,
                    session=session,
                    versions=chunk,
                    done=last,
                    production=backup.production if last else None,
                    last_good=backup.last_good if last else None,
                    policy=backup.policy if last else None,
                    actor=actor,
                ),
            )
            op, session = store_api.IMPORT_AT.at(reply.replica), reply.session
            if last:
                return reply
        raise AssertionError("unreachable")  # pragma: no cover
