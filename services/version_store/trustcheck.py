"""The version-store's checks of signed and sealed changes (docs/design.md §7.6, §7.4).

The store refuses early what agents would refuse anyway — a change not signed as the
namespace's policy requires, plaintext in a sealed secret namespace — so that a publisher hears
why at once instead of in every agent's ``no`` vote. The store is not what makes a signed
namespace safe: each agent checks the same rule against its own trust roots
(``confbus.agent.trust``), and a compromised store can neither change those nor sign.
"""

from __future__ import annotations

from confbus.runtime.signing import Untrusted, check
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.names import Format
from confbus.schemas.policy import Policy
from confbus.schemas.sealing import content_sha256, is_sealed, parse_sealed
from confbus.version_store.errors import InvalidConfig


def check_signatures(change: ChangeProposed, policy: Policy, fmt: Format) -> None:
    """``InvalidConfig`` unless ``change`` is signed as ``policy.signing`` requires.

    Signatures name the version they were made for, so a signed namespace takes a change only
    at the version its signers meant: ``base`` (the newest version they saw) must be given, and
    the version will be ``base + 1`` or the change is refused as stale.
    """
    rule = policy.signing
    if rule is None or rule.threshold == 0:
        return
    if change.base is None:
        raise InvalidConfig(
            f"namespace {change.namespace!r} requires signed changes, and a signature is made "
            "for one version number: give the base version (confbus publish --sign does)",
            "base",
        )
    try:
        check(
            rule,
            change.namespace,
            change.base + 1,
            content_sha256(change.content),
            fmt,
            change.signatures,
        )
    except Untrusted as exc:
        raise InvalidConfig(exc.reason, "signatures") from None


def check_sealing(change: ChangeProposed, policy: Policy, fmt: Format) -> bool:
    """Whether ``change`` carries sealed content, refusing what does not fit the namespace:
    plaintext where the policy holds data keys (``confbus keys data-key``), a sealed envelope
    in a namespace that is not secret, or one sealed with a key the policy does not know."""
    sealed = is_sealed(change.content)
    ns = change.namespace
    if not sealed:
        if policy.data_keys and change.rollback_of is None:
            raise InvalidConfig(
                f"namespace {ns!r} is sealed: its content must be encrypted before it leaves "
                f"the publisher (confbus publish --kek FILE)",
                "content",
            )
        return False
    if not policy.secret:
        raise InvalidConfig(f"sealed content in namespace {ns!r}, which is not secret", "content")
    try:
        envelope = parse_sealed(change.content)
    except ValueError as exc:
        raise InvalidConfig(str(exc), "content") from None
    if envelope.data_key.id not in {k.id for k in policy.data_keys}:
        raise InvalidConfig(
            f"sealed with data key {envelope.data_key.id}, which is not one of {ns!r}'s",
            "content",
        )
    if envelope.format != fmt:
        raise InvalidConfig(f"sealed as {envelope.format}, the version is {fmt}", "format")
    if content_sha256(change.content) != envelope.sha256:
        raise InvalidConfig("the sealed ciphertext does not match its own sha256", "content")
    # Four thirds for base64, and room for the envelope's own fields.
    if len(change.content) > policy.max_bytes * 4 // 3 + 1024:
        raise InvalidConfig(
            f"sealed content of {len(change.content)} bytes: over the namespace's limit "
            f"({policy.max_bytes} bytes before sealing)",
            "content",
        )
    return True
