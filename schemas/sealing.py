"""The wire form of a secret namespace's sealed content (docs/design.md §7.4).

A sealed version's bytes — what the store, ``CFG_TXN``, backups and dead letters hold — are
``SEALED_MAGIC`` followed by a JSON ``Sealed``: the content encrypted with AES-256-GCM under the
namespace's data key, that data key wrapped (AES key wrap, RFC 3394) by the operator's
key-encryption key, and the sha256 of the plaintext. The additional authenticated data binds the
ciphertext to that sha256, the format and the data key (``aad``), so the header cannot be
edited without the decryption failing.

A sealed version's ``sha256`` is the plaintext's (what every node writes and checks for
drift); ``content_sha256`` is how the store and the coordinator hash any stored bytes, sealed or
not, so the invariant "no node writes bytes whose sha256 differs from the version's" holds for
both: a node writes only the authenticated decryption of a sealed version, and checks it.

The namespace and the version number are not in the AAD on purpose: blobs are stored once per
sha256, and a rollback restores a sealed version under a new number without the key (the
rollbacker never holds it). Binding bytes to a namespace and a version is the signatures' job
(``confbus.schemas.signing``).
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import msgspec

from confbus.schemas.base import DECODE_ERRORS, LazyDecoder
from confbus.schemas.names import Format, Sha256

SEALED_MAGIC = b"confbus-sealed v1\n"
KekId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
DataKeyId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]


class WrappedDataKey(msgspec.Struct, frozen=True, kw_only=True):
    """A namespace's data key as the policy keeps it: only wrapped, useless without the KEK."""

    id: DataKeyId
    kek_id: KekId
    wrapped: Annotated[bytes, msgspec.Meta(min_length=40, max_length=40)]


class Sealed(msgspec.Struct, frozen=True, kw_only=True):
    data_key: WrappedDataKey
    nonce: Annotated[bytes, msgspec.Meta(min_length=12, max_length=12)]
    sha256: Sha256  # of the plaintext
    format: Format
    ciphertext: bytes  # with the 16-byte GCM tag at the end
    ciphertext_sha256: Sha256  # lets the store check its copy without the key


_encode = msgspec.json.Encoder().encode
_decode: LazyDecoder[Sealed] = LazyDecoder(Sealed)


def is_sealed(content: bytes) -> bool:
    return content.startswith(SEALED_MAGIC)


def encode_sealed(sealed: Sealed) -> bytes:
    return SEALED_MAGIC + _encode(sealed)


def parse_sealed(content: bytes) -> Sealed:
    """``ValueError`` for bytes that are not a well-formed sealed envelope."""
    if not is_sealed(content):
        raise ValueError("not sealed content")
    try:
        return _decode(content[len(SEALED_MAGIC) :])
    except DECODE_ERRORS as exc:
        raise ValueError(f"a malformed sealed envelope: {exc}") from None


def aad(sha256: str, format: str, data_key_id: str) -> bytes:
    return SEALED_MAGIC + f"{sha256}\n{format}\n{data_key_id}".encode()


def content_sha256(content: bytes) -> str:
    """The sha256 a version holding ``content`` must have: the plaintext's for a sealed
    envelope whose ciphertext is intact, else the bytes' own (which then matches nothing a
    sealed version records, so a damaged envelope is caught like any damaged bytes)."""
    if is_sealed(content):
        try:
            sealed = parse_sealed(content)
        except ValueError:
            pass
        else:
            if hashlib.sha256(sealed.ciphertext).hexdigest() == sealed.ciphertext_sha256:
                return sealed.sha256
    return hashlib.sha256(content).hexdigest()
