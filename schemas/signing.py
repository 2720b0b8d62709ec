"""What an author's signature covers, and how it travels (docs/design.md §7.6).

A signature is an Ed25519 signature over one **statement**: the canonical bytes

  confbus-signed-version v1 LF namespace LF version LF sha256 LF format LF change-id LF rollback-of

(``rollback of`` is ``-`` for an author's signature). The first line separates these bytes from
anything else a confbus key could ever sign and names the statement's version; every field is
constrained by its type so none can hold a newline, so no two statements share their bytes.
The version number is in the statement: a signed version replayed under another number (an old
version prepared as new) verifies for its own number only, and agents refuse it.

A ``Signature`` carries the statement's fields that are not the version's own (``version``,
``change_id`` and ``rollback_of`` of the version it was made for): a rollback version carries
the signatures of the version whose bytes it restores (made for that older number) plus the
rollbacker's own (made for the new number, with ``rollback_of``).

``SigningRule`` is what a verifier holds for a namespace: its trusted keys, how many distinct
authors must sign, and which keys may sign rollbacks. The version-store holds one in each
namespace's policy; every agent holds its own, from its trust roots file (``TrustRoots``), never
from the bus.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import msgspec

from confbus.schemas.base import LazyDecoder
from confbus.schemas.names import MAX_INT, ChangeId, Format, Namespace, VersionNumber

STATEMENT_DOMAIN = b"confbus-signed-version v1\n"
KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
KeyName = Annotated[str, msgspec.Meta(pattern=KEY_NAME_PATTERN)]
# The first 16 hex digits of the raw public key's sha256: a name for the key that cannot lie.
KeyId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]
PublicKey = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
RawSignature = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class Signature(msgspec.Struct, frozen=True, kw_only=True):
    key_id: KeyId
    signer: str = ""  # the key's name, for people; verification goes by ``key_id``
    version: VersionNumber  # the version this signature was made for
    change_id: ChangeId
    rollback_of: VersionNumber | None = None  # set on a rollbacker's signature
    sig: RawSignature


class TrustedKey(msgspec.Struct, frozen=True, kw_only=True):
    name: KeyName
    public_key: PublicKey
    # Revocation without clocks: signatures of versions numbered ``until_version`` or higher
    # are refused; the versions this key signed before stay valid.
    until_version: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None


class SigningRule(msgspec.Struct, frozen=True, kw_only=True):
    keys: list[TrustedKey] = []
    threshold: Annotated[int, msgspec.Meta(ge=0, le=64)] = 1
    rollbackers: list[TrustedKey] = []


class TrustRoots(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An agent's trust roots file (``confbus agent --trust FILE``): a rule per namespace."""

    namespaces: dict[Namespace, SigningRule] = {}


decode_trust_roots: LazyDecoder[TrustRoots] = LazyDecoder(TrustRoots)
decode_trusted_key: LazyDecoder[TrustedKey] = LazyDecoder(TrustedKey)


class Statement(NamedTuple):
    """What a signature covers: a version of a namespace, its bytes (their sha256) and how it
    was made; ``rollback_of`` only on the rollbacker's signature of a rollback version."""

    namespace: str
    version: int
    sha256: str
    format: Format
    change_id: str
    rollback_of: int | None = None

    def encode(self) -> bytes:
        """The canonical bytes an author (or the rollbacker) signs."""
        namespace, version, sha256, fmt, change_id, rollback_of = self
        fields = (namespace, str(version), sha256, fmt, change_id, str(rollback_of or "-"))
        return STATEMENT_DOMAIN + "\n".join(fields).encode()


def key_id(public_key: bytes) -> str:
    import hashlib

    return hashlib.sha256(public_key).hexdigest()[:16]
