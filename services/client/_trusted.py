"""A change made ready for a signed or sealed namespace before it leaves the publisher.

Sealing (AES-GCM under the namespace's newest data key, which the operator's KEK unwraps) comes
first, then the signatures, made for version ``base + 1`` over the plaintext's sha256
(docs/design.md §7.4, §7.6). The store never sees a key: only wrapped data keys, envelopes and
signatures.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgspec

from confbus.runtime.errors import InvalidInput, NotFound
from confbus.runtime.sealing import Kek, SealingError, seal
from confbus.runtime.signing import SigningKey
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.policy import Policy
from confbus.schemas.sealing import content_sha256, is_sealed
from confbus.schemas.signing import Statement
from confbus.schemas.variants import has_variants
from confbus.schemas.versions import VersionInfo


async def seal_and_sign(
    change: ChangeProposed,
    policy: Callable[[], Awaitable[Policy]],
    latest: Callable[[], Awaitable[VersionInfo]],
    signing_keys: Sequence[SigningKey] = (),
    keks: Mapping[str, Kek] | None = None,
) -> ChangeProposed:
    """``change`` sealed (with ``keks``) and signed by each of ``signing_keys``.

    ``policy`` and ``latest`` read the namespace's policy and newest version, and are called
    only when needed: the format a signature names, the data key, the version it is made for.
    """
    if not signing_keys and not keks:
        return change
    ns = change.namespace
    pol = await policy()
    fmt = change.format or pol.format
    content = change.content
    if keks:
        if not pol.data_keys:
            raise InvalidInput(
                f"namespace {ns!r} has no data key to seal with: an operator makes one with "
                f"confbus keys data-key {ns} --kek FILE",
                where="content",
            )
        if has_variants(content):
            # One envelope would hand every node's variant to every node, and the store could
            # not validate them: sealing is per content (docs/design.md §2.6).
            raise InvalidInput(
                f"namespace {ns!r} is sealed, and overlays cannot be sealed: an envelope holds "
                "one content and an agent receives only its own variant — publish without "
                "--overlay",
                where="overlays",
            )
        if not is_sealed(content):
            try:
                content = seal(content, fmt, pol.data_keys[-1], keks)
            except SealingError as exc:
                raise InvalidInput(str(exc), where="kek") from None
    base = change.base
    signatures = list(change.signatures)
    if signing_keys:
        if base is None:
            try:
                base = (await latest()).version
            except NotFound:
                base = 0
        sha = content_sha256(content)
        statement = Statement(ns, base + 1, sha, fmt, change.change_id)
        signatures += [key.sign(statement) for key in signing_keys]
    return msgspec.structs.replace(
        change, content=content, format=fmt, base=base, signatures=signatures
    )
