"""Ed25519 signatures over version statements, and the one rule every verifier applies.

The version-store (against the namespace's policy) and every agent (against its own trust
roots) call ``check`` with the same arguments, so "signed as the rule requires" means one
thing everywhere (docs/design.md §7.6). The statement and the wire form are
``confbus.schemas.signing``; the cryptography is the ``cryptography`` library's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from confbus.schemas.names import Format
from confbus.schemas.signing import Signature, SigningRule, Statement, TrustedKey, key_id

# cryptography is imported where it is used: most processes (the CLI's every command, an agent
# of unsigned namespaces) never sign or verify, and it costs ~20 ms and ~2 MB to import.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


class Untrusted(Exception):
    """Bytes not signed as the rule requires; ``reason`` says how, for a vote or a rejection."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SigningKey:
    """A private key and the name it signs as (the key file's stem)."""

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives import serialization

        self.name = name
        self._private = private
        self.public_key = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """A PKCS#8 PEM private key file (``confbus keys new`` writes one)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(path.stem, private)

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def trusted(self) -> TrustedKey:
        return TrustedKey(name=self.name, public_key=self.public_key)

    def sign(self, statement: Statement) -> Signature:
        # A signature names what it was made for; the namespace, sha256 and format are the
        # version's own, which it travels with.
        _, version, _, _, change_id, rollback_of = statement
        return Signature(
            key_id=self.key_id,
            signer=self.name,
            version=version,
            change_id=change_id,
            rollback_of=rollback_of,
            sig=self._private.sign(statement.encode()),
        )


def _verifies(key: TrustedKey, sig: Signature, ns: str, sha256: str, fmt: Format) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    message = Statement(ns, sig.version, sha256, fmt, sig.change_id, sig.rollback_of).encode()
    try:
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(sig.sig, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _valid_for(key: TrustedKey, version: int) -> bool:
    return key.until_version is None or version < key.until_version


def _by_id(keys: Iterable[TrustedKey]) -> dict[str, TrustedKey]:
    return {key_id(k.public_key): k for k in keys}


def check(
    rule: SigningRule,
    namespace: str,
    version: int,
    sha256: str,
    format: Format,
    signatures: Sequence[Signature],
) -> None:
    """Raise ``Untrusted`` unless ``signatures`` make these bytes version ``version`` of
    ``namespace`` under ``rule``:

    - ``threshold`` distinct trusted authors signed this very version; or
    - (a rollback) a trusted rollbacker signed this version as a rollback, and ``threshold``
      distinct authors signed these same bytes as one older version of this namespace.

    A key counts only for versions below its ``until_version`` (revocation keeps old
    signatures valid and refuses new ones).
    """
    if rule.threshold == 0:
        return
    authors, rollbackers = _by_id(rule.keys), _by_id(rule.rollbackers)
    signed: dict[int, set[str]] = {}  # version -> author key ids whose signature holds
    rolled_back = False
    bad: list[str] = []
    for s in signatures:
        key = (rollbackers if s.rollback_of is not None else authors).get(s.key_id)
        if key is None:
            bad.append(f"{s.signer or s.key_id} is not a trusted key")
        elif not _verifies(key, s, namespace, sha256, format):
            bad.append(
                f"{key.name}'s signature does not cover these bytes in {namespace} "
                "(signed for other bytes, another namespace or another format)"
            )
        elif not _valid_for(key, s.version):
            bad.append(f"{key.name} is revoked from v{key.until_version} on (signed v{s.version})")
        elif s.rollback_of is not None:
            if s.version == version:
                rolled_back = True
            else:
                bad.append(f"rollbacker {key.name} signed v{s.version}, not v{version}")
        else:
            signed.setdefault(s.version, set()).add(s.key_id)
    need = rule.threshold
    if len(signed.get(version, ())) >= need:
        return
    older = [v for v, ids in signed.items() if v < version and len(ids) >= need]
    if rolled_back and older:
        return
    have = len(signed.get(version, ()))
    if older and not rolled_back:
        why = (
            f"signed as v{max(older)}, not as v{version}, and no trusted rollbacker signed it "
            "as a rollback (an old version replayed as new?)"
        )
    elif rolled_back:
        why = f"a rollback whose bytes no {need} trusted authors signed"
    else:
        why = f"{have} of the {need} required signatures for v{version}"
    details = "; ".join(bad)
    raise Untrusted(f"not signed as required: {why}" + (f" ({details})" if details else ""))
