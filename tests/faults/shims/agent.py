"""The real agent, optionally with a deliberate bug (``CONFBUS_TEST_BUG``):

- ``apply_on_prepare``: the node installs the version as soon as it has voted yes, without
  waiting for the decision (so an aborted transaction's bytes go live).
"""

from __future__ import annotations

import sys

import anyio

from confbus.agent import node as node_mod
from confbus.agent.main import main
from confbus.runtime.bus import Bus
from confbus.schemas.txn import Prepare
from tests.faults.shims import bug

BUGS = ("apply_on_prepare",)

_on_prepare = node_mod.NodeAgent._on_prepare


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


if __name__ == "__main__":
    apply(bug(BUGS))
    sys.exit(main())
