"""Sealing a secret namespace's content: AES-256-GCM under a per-namespace data key, the data
key wrapped by the operator's key-encryption key (KEK). Wire form: ``confbus.schemas.sealing``;
the design: docs/design.md §7.4. The cryptography is the ``cryptography`` library's.

A KEK file is JSON ``{"id": "...", "key": "<base64 of 32 bytes>"}`` (``confbus keys kek``); a
publisher needs the KEK to seal with the namespace's newest data key, an agent needs it to
unwrap the data key each envelope carries. Nobody else does: the store, the coordinator, the
rollbacker and backups only move envelopes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from confbus.schemas.base import LazyDecoder
from confbus.schemas.names import Format
from confbus.schemas.sealing import (
    KekId,
    Sealed,
    WrappedDataKey,
    aad,
    encode_sealed,
    parse_sealed,
)


class SealingError(Exception):
    """Content that cannot be sealed or opened; the message says why (never the content)."""


class Kek(msgspec.Struct, frozen=True, kw_only=True):
    id: KekId
    key: bytes


_decode_kek: LazyDecoder[Kek] = LazyDecoder(Kek)
_encode = msgspec.json.Encoder().encode


# cryptography is imported where it is used: most processes (the CLI's every command, an agent
# of plain namespaces) never seal or open anything, and it costs ~20 ms and ~2 MB to import.


def new_kek(kek_id: str) -> Kek:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return Kek(id=kek_id, key=AESGCM.generate_key(bit_length=256))


def kek_file_bytes(kek: Kek) -> bytes:
    return _encode(kek) + b"\n"


def load_kek(path: Path) -> Kek:
    try:
        kek = _decode_kek(path.read_bytes())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SealingError(f"cannot read the key-encryption key {path}: {exc}") from None
    if len(kek.key) != 32:
        raise SealingError(f"{path}: a key-encryption key is 32 bytes, not {len(kek.key)}")
    return kek


def load_keks(paths: Sequence[Path]) -> dict[str, Kek]:
    keks = [load_kek(p) for p in paths]
    return {k.id: k for k in keks}


def new_data_key(kek: Kek) -> WrappedDataKey:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.keywrap import aes_key_wrap

    dek = AESGCM.generate_key(bit_length=256)
    return WrappedDataKey(
        id=hashlib.sha256(dek).hexdigest()[:16], kek_id=kek.id, wrapped=aes_key_wrap(kek.key, dek)
    )


def _unwrap(data_key: WrappedDataKey, keks: Mapping[str, Kek]) -> bytes:
    from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

    kek = keks.get(data_key.kek_id)
    if kek is None:
        raise SealingError(f"sealed with key-encryption key {data_key.kek_id!r}, which is not held")
    try:
        dek = aes_key_unwrap(kek.key, data_key.wrapped)
    except InvalidUnwrap:
        raise SealingError(f"data key {data_key.id} does not unwrap with {kek.id!r}") from None
    if hashlib.sha256(dek).hexdigest()[:16] != data_key.id:
        raise SealingError(f"data key {data_key.id} unwraps to another key")
    return dek


def seal(
    content: bytes, format: Format, data_key: WrappedDataKey, keks: Mapping[str, Kek]
) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    dek = _unwrap(data_key, keks)
    sha = hashlib.sha256(content).hexdigest()
    nonce = os.urandom(12)  # 96-bit random nonces: fine far below 2^32 seals per data key
    ciphertext = AESGCM(dek).encrypt(nonce, content, aad(sha, format, data_key.id))
    return encode_sealed(
        Sealed(
            data_key=data_key,
            nonce=nonce,
            sha256=sha,
            format=format,
            ciphertext=ciphertext,
            ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest(),
        )
    )


def open_sealed(content: bytes, keks: Mapping[str, Kek]) -> tuple[bytes, Sealed]:
    """The plaintext of a sealed envelope, authenticated and checked against its sha256."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        sealed = parse_sealed(content)
    except ValueError as exc:
        raise SealingError(str(exc)) from None
    dek = _unwrap(sealed.data_key, keks)
    try:
        plain = AESGCM(dek).decrypt(
            sealed.nonce, sealed.ciphertext, aad(sealed.sha256, sealed.format, sealed.data_key.id)
        )
    except InvalidTag:
        raise SealingError("the sealed content does not authenticate (altered?)") from None
    if hashlib.sha256(plain).hexdigest() != sealed.sha256:
        raise SealingError("the sealed content decrypts to bytes of another sha256")
    return plain, sealed
