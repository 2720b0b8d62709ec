"""``Client``: every part of the client on one connection."""

from __future__ import annotations

from confbus.client._backup import Backups
from confbus.client._rollbacks import Rollbacks
from confbus.client._rollouts import Rollouts
from confbus.client._timeline import Timeline


class Client(Rollouts, Rollbacks, Backups, Timeline):  # Timeline brings Variants and Store
    """confbus over NATS: publish changes and wait for their rollout, read versions and the audit
    stream, steer rollouts and rollbacks. Use it as ``async with Client(url) as client:``; every
    method raises a ``ConfbusError`` (``Unavailable`` when it is worth retrying)."""
