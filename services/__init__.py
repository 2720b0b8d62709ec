"""confbus: configuration infrastructure that keeps working when its parts fail.

```python
from confbus import Client

async with Client("nats://127.0.0.1:4222") as client:
    created = await client.publish("payments", b'{"pool": 16}', change_id="ci-1234")
```

The public surface is what ``__all__`` lists (checked by ``tests/test_packaging.py``); it is
loaded on first use, so importing one service (``confbus.coordinator``) or starting the
``confbus`` command pays nothing for the client. In the repository this package is the
``services/`` folder, one sub-package per service; they never import each other and share only
``confbus.schemas`` (the ``schemas/`` folder) and ``confbus.runtime`` (docs/design.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confbus.runtime.lazy import lazy_names

if TYPE_CHECKING:
    from confbus.client import (
        ChangeRejected,
        Client,
        NamespaceBackup,
        RolloutWaitTimeout,
        StreamedEvent,
    )
    from confbus.runtime.errors import (
        ConfbusError,
        Conflict,
        InvalidInput,
        NotFound,
        Permanent,
        Unavailable,
    )

# name → the module that defines it
_EXPORTS = {
    "Client": "confbus.client",
    "StreamedEvent": "confbus.client",
    "NamespaceBackup": "confbus.client",
    "ChangeRejected": "confbus.client",
    "RolloutWaitTimeout": "confbus.client",
    "ConfbusError": "confbus.runtime.errors",
    "Permanent": "confbus.runtime.errors",
    "InvalidInput": "confbus.runtime.errors",
    "Conflict": "confbus.runtime.errors",
    "NotFound": "confbus.runtime.errors",
    "Unavailable": "confbus.runtime.errors",
}

__all__ = [
    "ChangeRejected",
    "Client",
    "ConfbusError",
    "Conflict",
    "InvalidInput",
    "NamespaceBackup",
    "NotFound",
    "Permanent",
    "RolloutWaitTimeout",
    "StreamedEvent",
    "Unavailable",
]

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
