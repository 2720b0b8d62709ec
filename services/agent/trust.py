"""The agent's admission of a prepare: signatures checked against the node's own trust roots,
then a sealed secret opened, before anything is staged (docs/design.md §7.6, §7.4).

The trust roots and the key-encryption keys come from files given at start
(``confbus agent --trust FILE --kek FILE``), never from the bus: whoever controls the store, a
coordinator or a bus user can make a prepare say anything, and this is where it stops. A
refusal is a ``no`` vote whose reason names what is wrong; nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from confbus.agent.state import Refused
from confbus.runtime.sealing import Kek, SealingError, load_keks, open_sealed
from confbus.runtime.signing import Untrusted, check
from confbus.schemas.names import Format
from confbus.schemas.sealing import is_sealed
from confbus.schemas.signing import Signature, SigningRule, TrustRoots, decode_trust_roots
from confbus.schemas.txn import Prepare
from confbus.schemas.variants import has_variants


class TrustConfigError(Exception):
    """A trust roots or KEK file that cannot be used; the agent does not start."""


@dataclass(frozen=True)
class Trust:
    """What this node trusts. Without a roots file nothing is checked (as before signing);
    with one, every namespace the agent serves must have its rule there."""

    roots: TrustRoots | None = None
    keks: Mapping[str, Kek] = field(default_factory=dict)

    @classmethod
    def load(cls, roots_file: Path | None, kek_files: list[Path]) -> Trust:
        roots = None
        if roots_file is not None:
            try:
                roots = decode_trust_roots(roots_file.read_bytes())
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise TrustConfigError(f"trust roots {roots_file}: {exc}") from None
        try:
            keks = load_keks(kek_files)
        except SealingError as exc:
            raise TrustConfigError(str(exc)) from None
        return cls(roots, keks)

    def rule(self, namespace: str) -> SigningRule | None:
        if self.roots is None:
            return None
        return self.roots.namespaces.get(namespace)

    def require_rules(self, namespaces: list[str]) -> None:
        if self.roots is None:
            return
        missing = [ns for ns in namespaces if ns not in self.roots.namespaces]
        if missing:
            raise TrustConfigError(
                f"the trust roots name no rule for {', '.join(missing)}: give each namespace "
                'its keys (or {"threshold": 0} to take it unsigned)'
            )

    def admit(self, p: Prepare) -> Prepare:
        """The prepare with its content ready to stage (opened, if sealed), or ``Refused``."""
        rule = self.rule(p.namespace)
        if p.variants and rule is not None and rule.threshold > 0:
            # The signatures cover the version's sha256 (its overlays, as the store holds them),
            # not this node's rendered bytes: a prepare's variant entry could carry anything.
            # The store refuses overlays in a signed namespace; this holds when it is not
            # trusted (docs/design.md §2.6, §7.6).
            raise Refused(
                "untrusted",
                f"{p.namespace} v{p.version} comes as per-node variants, whose bytes no "
                "signature covers: a signed namespace takes no overlays",
            )
        content = self.admit_bytes(
            p.namespace, p.version, p.sha256, p.format, p.signatures, p.content
        )
        return p if content is p.content else msgspec.structs.replace(p, content=content)

    def admit_bytes(
        self,
        namespace: str,
        version: int,
        sha256: str,
        format: Format,
        signatures: Sequence[Signature],
        content: bytes,
    ) -> bytes:
        """Bytes from the bus (a prepare, or the store for a re-sync or the last known good)
        that may be installed as ``version``: checked, and opened if sealed; else ``Refused``.
        The caller still checks the result against ``sha256`` before writing it."""
        rule = self.rule(namespace)
        if rule is not None:
            try:
                check(rule, namespace, version, sha256, format, signatures)
            except Untrusted as exc:
                raise Refused("untrusted", exc.reason) from None
        if not is_sealed(content):
            return content
        try:
            plain, sealed = open_sealed(content, self.keks)
        except SealingError as exc:
            raise Refused("sealed", f"cannot open the sealed content: {exc}") from None
        if sealed.sha256 != sha256 or sealed.format != format:
            raise Refused("sealed", "the sealed content is not this version's")
        if has_variants(plain):
            raise Refused("sealed", "the sealed content holds overlays, which are never sealed")
        return plain
