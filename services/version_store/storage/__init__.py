"""Storage backends behind one ``Store`` protocol, chosen by URL.

``sqlite:///var/lib/confbus/store.db`` (or ``sqlite:relative/path.db``) — the default, embedded.
``etcd://h1:2379,h2:2379,h3:2379/confbus/?quota_bytes=2147483648`` — the HA shape; the URL path
is the key prefix (default ``/confbus/``). The etcd backend is imported only when asked for, so
the embedded shape does not need aetcd installed. Members that serve TLS take ``etcd_tls``
(``EtcdTls``: the CA, and the client certificate they ask for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from confbus.version_store.storage.base import (
    AppendResult,
    Head,
    IntegrityReport,
    NamespaceExport,
    NewVersion,
    Promotion,
    Store,
    StoredVersion,
    VersionRef,
)

if TYPE_CHECKING:
    from confbus.runtime.etcd_tls import EtcdTls

__all__ = [
    "AppendResult",
    "Head",
    "IntegrityReport",
    "NamespaceExport",
    "NewVersion",
    "Promotion",
    "Store",
    "StoredVersion",
    "VersionRef",
    "open_store",
]


def open_store(url: str, etcd_tls: EtcdTls | None = None) -> Store:
    """Build (not open) the store a URL names; use it as ``async with open_store(url) as s:``."""
    parts = urlsplit(url)
    if etcd_tls is not None and parts.scheme != "etcd":
        raise ValueError(f"{url!r}: etcd TLS files given for a store that is not etcd://")
    if parts.scheme == "sqlite":
        from confbus.version_store.storage.sqlite import SqliteStore

        # sqlite:///abs/path -> /abs/path ; sqlite:rel/path -> rel/path
        path = parts.path if not parts.netloc else f"{parts.netloc}{parts.path}"
        if not path:
            raise ValueError(f"{url!r}: expected sqlite:///path/to/store.db")
        return SqliteStore(path)
    if parts.scheme == "etcd":
        try:
            from confbus.version_store.storage.etcd import EtcdStore
        except ModuleNotFoundError as exc:
            if exc.name != "aetcd":
                raise
            raise ValueError(
                "the etcd store needs its client, which is not installed: "
                "pip install 'confbus[etcd]'"
            ) from None
        return EtcdStore.from_url(url, etcd_tls)
    raise ValueError(f"{url!r}: unknown store; expected sqlite:///path or etcd://host:port,...")
