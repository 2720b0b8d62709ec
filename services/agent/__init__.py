"""The node agent (docs/design.md §5): stages, votes, applies atomically, keeps history and the last
known good on disk, and serves the app even when the bus is down.

This package so far holds the agent's local, durable side of the two-phase commit:

- ``disk``      ``NamespaceDisk`` (one namespace's live file and state dir) and ``prepare_txn``
- ``formats``   content checks before a yes vote: parse per format, the ``--validate`` command
- ``state``     the on-disk record, what the agent reports, the error tree
- ``state_io``  crash-safe file primitives (temp → fsync → rename → fsync dir)

The disk side is synchronous and blocking; the agent calls it through
``offload.run`` (its own small thread pool). No NATS here.
"""

from confbus.agent.disk import NamespaceDisk, prepare_txn
from confbus.agent.formats import check_content, run_validate
from confbus.agent.state import (
    CommitOutcome,
    IntegrityError,
    LocalState,
    Refused,
    Staged,
    StateCorrupt,
    VersionNotOnDisk,
)

__all__ = [
    "CommitOutcome",
    "IntegrityError",
    "LocalState",
    "NamespaceDisk",
    "Refused",
    "Staged",
    "StateCorrupt",
    "VersionNotOnDisk",
    "check_content",
    "prepare_txn",
    "run_validate",
]
