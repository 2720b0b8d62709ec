"""Keys, trust roots and a raw proposer for the trust tests."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec

from confbus.runtime.bus import Bus
from confbus.runtime.sealing import Kek, kek_file_bytes, new_kek
from confbus.runtime.signing import SigningKey
from confbus.schemas import subjects
from confbus.schemas.changes import ChangeProposed, msg_id
from confbus.schemas.events import VersionCreated, VersionRejected, decode_event
from confbus.schemas.signing import SigningRule, TrustRoots


def make_keys(folder: Path, *names: str) -> dict[str, SigningKey]:
    folder.mkdir(parents=True, exist_ok=True)
    keys = {}
    for name in names:
        key = SigningKey.generate(name)
        (folder / f"{name}.key").write_bytes(key.pem())
        keys[name] = SigningKey.load(folder / f"{name}.key")
    return keys


def make_kek(folder: Path, name: str = "ops") -> tuple[Path, Kek]:
    folder.mkdir(parents=True, exist_ok=True)
    kek = new_kek(name)
    path = folder / f"{name}.kek"
    path.write_bytes(kek_file_bytes(kek))
    return path, kek


def write_roots(path: Path, rules: dict[str, SigningRule]) -> Path:
    path.write_bytes(msgspec.json.encode(TrustRoots(namespaces=rules)))
    return path


def rule(
    keys: dict[str, SigningKey],
    signers: tuple[str, ...],
    threshold: int,
    rollbackers: tuple[str, ...] = (),
) -> SigningRule:
    return SigningRule(
        keys=[keys[n].trusted() for n in signers],
        threshold=threshold,
        rollbackers=[keys[n].trusted() for n in rollbackers],
    )


async def propose(bus: Bus, change: ChangeProposed, timeout: float = 20.0) -> int | str:
    """Publish ``change`` as a service would and wait: the version stored, or the rejection's
    reason."""
    ns = change.namespace
    sub = await bus.nc.subscribe(subjects.event(ns, "version.*"))
    try:
        await bus.publish(subjects.change(ns), change, msg_id=msg_id(ns, change.change_id))
        with anyio.fail_after(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                ev = decode_event(msg.data)
                if isinstance(ev, VersionCreated) and ev.change_id == change.change_id:
                    return ev.version
                if isinstance(ev, VersionRejected) and ev.change_id == change.change_id:
                    return ev.reason
    finally:
        await sub.unsubscribe()
