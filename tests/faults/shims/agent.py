"""The real agent, optionally with a deliberate bug (``CONFBUS_TEST_BUG``):

- ``apply_on_prepare``: the node installs the version as soon as it has voted yes, without
  waiting for the decision (so an aborted transaction's bytes go live).
- ``stage_another_variant``: of a prepare with variants, the node stages another node's entry
  (checked against that entry's own sha256, so nothing at the node notices).
"""

from __future__ import annotations

import sys

import anyio

from confbus.agent import node as node_mod
from confbus.agent.main import main
from confbus.runtime.bus import Bus
from confbus.schemas.txn import Prepare
from tests.faults.shims import bug

BUGS = ("apply_on_prepare", "stage_another_variant")

_on_prepare = node_mod.NodeAgent._on_prepare
_bytes_for = Prepare.bytes_for


def _another_variants_bytes(self: Prepare, node: str) -> tuple[bytes, str] | None:
    for v in self.variants:
        if node not in v.nodes:
            return v.content, v.sha256  # BUG: not this node's entry
    return _bytes_for(self, node)


async def _on_prepare_and_apply(
    self: node_mod.NodeAgent, bus: Bus, ns: node_mod._Namespace, p: Prepare
) -> bool:
    changed = await _on_prepare(self, bus, ns, p)
    held = ns.state.prepared
    if held is not None and held.txid == p.txid:
        # BUG: apply before the decision.
        await anyio.to_thread.run_sync(ns.disk.commit, p.txid, p.version, p.sha256)
        await self._refresh(ns)
        node_mod.log.info(
            "applied",
            extra={
                "namespace": p.namespace,
                "node": self.node,
                "version": p.version,
                "txid": p.txid,
            },
        )
    return changed


def apply(name: str) -> None:
    if name == "apply_on_prepare":
        node_mod.NodeAgent._on_prepare = _on_prepare_and_apply  # type: ignore[method-assign]
    elif name == "stage_another_variant":
        Prepare.bytes_for = _another_variants_bytes  # type: ignore[method-assign]


if __name__ == "__main__":
    apply(bug(BUGS))
    sys.exit(main())
