"""The client's errors, beside the tree every confbus error belongs to
(``confbus.runtime.errors``)::

    ConfbusError
     ├── Permanent                  do not retry it as it is
     │    ├── InvalidInput          the request is wrong (a name, a flag); ``where`` says where
     │    ├── Conflict              e.g. no rollout in a state that allows the control
     │    ├── NotFound
     │    └── ChangeRejected        the version-store refused a change (``reason``, ``where``)
     └── Unavailable                retry: the bus, a service or the store is down
          └── WaitTimedOut          a wait gave up (not an outage): what it waited for goes on
               └── RolloutWaitTimeout    ``wait_rollout`` gave up; the rollout goes on
"""

from __future__ import annotations

from confbus.runtime.errors import Permanent, Unavailable


class ChangeRejected(Permanent):
    """The version-store refused a change; ``reason`` says what, ``where`` where."""

    def __init__(self, namespace: str, change_id: str, reason: str, where: str = "") -> None:
        self.namespace = namespace
        self.change_id = change_id
        self.reason = reason
        super().__init__(f"{namespace}: change {change_id} rejected: {reason}", where=where)


class WaitTimedOut(Unavailable):
    """A wait ran out of time; confbus answered, and what was waited for goes on."""


class RolloutWaitTimeout(WaitTimedOut):
    """``wait_rollout`` gave up: the rollout had not ended within the time it was given."""

    def __init__(self, namespace: str, version: int, timeout: float) -> None:
        self.namespace = namespace
        self.version = version
        self.timeout = timeout
        super().__init__(
            f"the rollout of {namespace} v{version} did not end within {seconds(timeout)}"
        )


def seconds(value: float) -> str:
    """A duration as a person reads it: ``5s`` for a budget of 4.987…, ``0.3s``."""
    return f"{value:.1f}".removesuffix(".0") + "s"
