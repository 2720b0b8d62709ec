"""The Python client of confbus: what the ``confbus`` command is built on, and what services
and scripts use to publish, wait and react.

```python
from datetime import timedelta

from confbus.client import Client

async with Client("nats://127.0.0.1:4222") as client:
    info = await client.publish("payments", b'{"pool": 16}', change_id="ci-1234")
    rollout = await client.wait_rollout("payments", info.version)
    async for event in client.events("cfg.event.payments.>", since=timedelta(hours=1)):
        print(event)
```

The public names are the ones ``__all__`` lists (``confbus`` re-exports the main ones); the
modules behind them are private and may move. Each part of ``Client`` lives in its own module:
``_events`` (the audit log, alerts, applied configs), ``_store`` (changes, versions, policies),
``_backup``, ``_rollouts`` (the distributor), ``_rollbacks``, ``_timeline`` (the fleet at a past
moment, reconstructed by ``_reconstruct`` and answered with the Structs of ``_fleet``, both
loaded on the first such question); ``_errors`` draws the error tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confbus.client._backup import NamespaceBackup
from confbus.client._client import Client
from confbus.client._errors import ChangeRejected, RolloutWaitTimeout, WaitTimedOut
from confbus.client._events import StreamedEvent
from confbus.client._names import check_change_id, check_namespace, check_node
from confbus.client._policy import policy_from_document
from confbus.client._store import change_id_after, with_overlays
from confbus.client._variants import OverlayInfo, VariantInfo, VersionVariants
from confbus.runtime.lazy import lazy_names
from confbus.schemas.variants import Overlay

if TYPE_CHECKING:
    from confbus.client._fleet import (
        FleetAt,
        FleetDiff,
        NodeAt,
        NodeChange,
        RolloutAt,
        Why,
        WhyStep,
    )

# The answers about the past (``Client.status_at``, ``why``, ``diff_fleet``) are loaded on first
# use, as those methods load what computes them: a command that never asks pays nothing for them.
_LAZY = {
    name: "confbus.client._fleet"
    for name in ("FleetAt", "FleetDiff", "NodeAt", "NodeChange", "RolloutAt", "Why", "WhyStep")
}

__all__ = [
    "ChangeRejected",
    "Client",
    "FleetAt",
    "FleetDiff",
    "NamespaceBackup",
    "NodeAt",
    "NodeChange",
    "Overlay",
    "OverlayInfo",
    "RolloutAt",
    "RolloutWaitTimeout",
    "StreamedEvent",
    "VariantInfo",
    "VersionVariants",
    "WaitTimedOut",
    "Why",
    "WhyStep",
    "change_id_after",
    "check_change_id",
    "check_namespace",
    "check_node",
    "policy_from_document",
    "with_overlays",
]

__getattr__, __dir__ = lazy_names(__name__, _LAZY)
