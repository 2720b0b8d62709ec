"""The one signing rule (confbus.runtime.signing.check) that the store and every agent apply,
and the sealing envelope: pure functions over real Ed25519 and AES-GCM."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from confbus.runtime.sealing import SealingError, new_data_key, new_kek, open_sealed, seal
from confbus.runtime.signing import SigningKey, Untrusted, check
from confbus.schemas.sealing import content_sha256, encode_sealed, parse_sealed
from confbus.schemas.signing import Signature, SigningRule, Statement

BYTES = b'{"pool": 16}\n'
SHA = hashlib.sha256(BYTES).hexdigest()
KEYS = {n: SigningKey.generate(n) for n in ("alice", "bob", "carol", "rb")}


def rule(threshold: int = 2, **until: int) -> SigningRule:
    keys = [
        msgspec.structs.replace(KEYS[n].trusted(), until_version=until.get(n))
        for n in ("alice", "bob", "carol")
    ]
    return SigningRule(keys=keys, threshold=threshold, rollbackers=[KEYS["rb"].trusted()])


def sig(
    name: str, version: int, ns: str = "web", sha: str = SHA, rollback_of: int | None = None
) -> Signature:
    return KEYS[name].sign(Statement(ns, version, sha, "json", f"c{version}", rollback_of))


def test_the_statement_is_domain_separated_and_names_every_field() -> None:
    s = Statement("web", 7, SHA, "json", "abc", None).encode()
    assert s.startswith(b"confbus-signed-version v1\n")
    assert s.split(b"\n")[1:] == [b"web", b"7", SHA.encode(), b"json", b"abc", b"-"]
    assert Statement("web", 7, SHA, "json", "abc", 3).encode() != s


def test_a_threshold_counts_distinct_trusted_authors_of_this_version() -> None:
    check(rule(), "web", 5, SHA, "json", [sig("alice", 5), sig("bob", 5)])
    with pytest.raises(Untrusted, match="1 of the 2 required signatures for v5"):
        check(rule(), "web", 5, SHA, "json", [sig("alice", 5), sig("alice", 5)])
    with pytest.raises(Untrusted, match="does not cover these bytes in web"):
        check(rule(), "web", 5, "0" * 64, "json", [sig("alice", 5), sig("bob", 5)])
    with pytest.raises(Untrusted, match="does not cover"):
        check(rule(), "web", 5, SHA, "json", [sig("alice", 5, ns="db"), sig("bob", 5, ns="db")])
    with pytest.raises(Untrusted, match="does not cover"):
        check(rule(), "web", 5, SHA, "yaml", [sig("alice", 5), sig("bob", 5)])
    check(rule(threshold=0), "web", 5, SHA, "json", [])


def test_an_old_version_replayed_as_new_is_refused() -> None:
    with pytest.raises(Untrusted, match="signed as v3, not as v9"):
        check(rule(), "web", 9, SHA, "json", [sig("alice", 3), sig("bob", 3)])


def test_a_rollback_needs_the_authors_and_the_rollbacker() -> None:
    authors = [sig("alice", 3), sig("carol", 3)]
    own = sig("rb", 9, rollback_of=3)
    check(rule(), "web", 9, SHA, "json", [*authors, own])
    with pytest.raises(Untrusted, match="no trusted rollbacker"):
        check(rule(), "web", 9, SHA, "json", authors)
    with pytest.raises(Untrusted, match="a rollback whose bytes no 2 trusted authors signed"):
        check(rule(), "web", 9, SHA, "json", [sig("alice", 3), own])
    # The rollbacker's key signs only rollbacks, and only for the number it names.
    with pytest.raises(Untrusted):
        check(rule(), "web", 10, SHA, "json", [*authors, own])
    with pytest.raises(Untrusted, match="rb is not a trusted key"):
        check(rule(), "web", 9, SHA, "json", [sig("rb", 9), sig("alice", 9)])


def test_a_revoked_key_keeps_old_signatures_and_loses_new_ones() -> None:
    revoked = rule(bob=6)
    check(revoked, "web", 5, SHA, "json", [sig("alice", 5), sig("bob", 5)])
    with pytest.raises(Untrusted, match="bob is revoked from v6 on"):
        check(revoked, "web", 6, SHA, "json", [sig("alice", 6), sig("bob", 6)])
    check(revoked, "web", 6, SHA, "json", [sig("alice", 6), sig("carol", 6)])


def test_sealed_content_opens_only_with_its_kek_and_unaltered() -> None:
    kek = new_kek("ops")
    key = new_data_key(kek)
    sealed = seal(BYTES, "json", key, {kek.id: kek})
    assert BYTES not in sealed and content_sha256(sealed) == SHA
    assert open_sealed(sealed, {kek.id: kek})[0] == BYTES
    with pytest.raises(SealingError, match="not held"):
        open_sealed(sealed, {})
    other = new_kek("ops")
    with pytest.raises(SealingError, match="does not unwrap"):
        open_sealed(sealed, {other.id: other})
    envelope = parse_sealed(sealed)
    # A header edited to claim other bytes fails authentication (the sha256 is in the AAD).
    lying = encode_sealed(msgspec.structs.replace(envelope, sha256="0" * 64))
    with pytest.raises(SealingError, match="does not authenticate"):
        open_sealed(lying, {kek.id: kek})
    flipped = bytearray(envelope.ciphertext)
    flipped[0] ^= 1
    damaged = encode_sealed(msgspec.structs.replace(envelope, ciphertext=bytes(flipped)))
    assert content_sha256(damaged) != SHA  # the store sees the damage without the key
