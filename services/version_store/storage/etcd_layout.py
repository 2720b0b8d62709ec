"""Where the etcd backend keeps what, and how the values are encoded.

Under ``prefix`` (default ``/confbus/``)::

    nsidx/<ns>                       marker: the namespace exists (for ``namespaces()``)
    ns/<ns>/head                     {newest, production, last_good, importing}
    ns/<ns>/v/<0000000042>           version metadata (msgspec JSON), zero-padded so keys sort
    ns/<ns>/change/<change id>       the version number holding that change id
    ns/<ns>/policy                   the namespace policy
    blob/<sha256>                    content, written once per sha256

Namespaces and change ids are validated before they become keys (no ``/`` can sneak in), and
the ``/`` after the namespace keeps ``ns/a/`` from matching ``ns/ab/``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aetcd.utils import prefix_range_end

from confbus.schemas.names import InvalidName, check_name
from confbus.schemas.policy import Policy
from confbus.schemas.signing import Signature
from confbus.schemas.versions import VersionInfo
from confbus.version_store.errors import InvalidConfig
from confbus.version_store.storage.base import Head, StoredVersion


class HeadRec(msgspec.Struct, kw_only=True):
    newest: int = 0
    production: int | None = None
    last_good: int | None = None
    importing: bool = False  # an import is in progress: appends must wait (retryable)


class Meta(msgspec.Struct, kw_only=True):
    info: VersionInfo  # stored with last_good=False: the head's pointer is the truth
    strategy: str | None = None
    selector: dict[str, str] | None = None
    signatures: list[Signature] = []


encode = msgspec.json.Encoder().encode
decode_head = msgspec.json.Decoder(HeadRec).decode
decode_meta = msgspec.json.Decoder(Meta).decode
decode_policy = msgspec.json.Decoder(Policy).decode


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode() if prefix.endswith("/") else (prefix + "/").encode()

    def ns(self, ns: str) -> bytes:
        # Writes check names before they get here; this stops a read like head("a/v") from
        # wandering into another namespace's keys.
        try:
            check_name(ns, "namespace")
        except InvalidName as e:
            raise InvalidConfig(str(e), "namespace") from None
        return self.prefix + b"ns/" + ns.encode() + b"/"

    def head(self, ns: str) -> bytes:
        return self.ns(ns) + b"head"

    def versions(self, ns: str) -> bytes:
        return self.ns(ns) + b"v/"

    def version(self, ns: str, version: int) -> bytes:
        return self.versions(ns) + b"%010d" % version

    def changes(self, ns: str) -> bytes:
        return self.ns(ns) + b"change/"

    def change(self, ns: str, change_id: str) -> bytes:
        return self.changes(ns) + change_id.encode()

    def policy(self, ns: str) -> bytes:
        return self.ns(ns) + b"policy"

    def blob(self, sha: str) -> bytes:
        return self.prefix + b"blob/" + sha.encode()

    def nsidx(self, ns: str = "") -> bytes:
        return self.prefix + b"nsidx/" + ns.encode()


def range_end(key: bytes) -> bytes:
    return bytes(prefix_range_end(key))


def head_of(kvs: list[Any]) -> tuple[int, HeadRec]:
    """(mod_revision, head) of a head key read; (0, empty head) if the key does not exist."""
    if not kvs:
        return 0, HeadRec()
    return int(kvs[0].mod_revision), decode_head(kvs[0].value)


def public_head(ns: str, head: HeadRec) -> Head:
    return Head(
        namespace=ns, newest=head.newest, production=head.production, last_good=head.last_good
    )


def meta_of(sv: StoredVersion) -> Meta:
    info = msgspec.structs.replace(sv.info, last_good=False)
    return Meta(info=info, strategy=sv.strategy, selector=sv.selector, signatures=sv.signatures)


def stored(meta: Meta, head: HeadRec, content: bytes = b"") -> StoredVersion:
    info = msgspec.structs.replace(meta.info, last_good=head.last_good == meta.info.version)
    return StoredVersion(
        info=info,
        content=content,
        strategy=meta.strategy,
        selector=meta.selector,
        signatures=meta.signatures,
    )
