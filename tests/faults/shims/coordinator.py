"""The real coordinator, optionally with a deliberate bug (``CONFBUS_TEST_BUG``):

- ``publish_commit_before_decision``: the decision record is published to the agents *before*
  the head's compare-and-set writes the decision (the order docs/design.md §4.3 forbids). The
  failpoint ``coordinator.after_decision_published`` then sits between the two, so a crash
  there leaves agents applying a transaction the head (the decision) aborts.
- ``cas_without_compare``: no fencing at all: the decision is a blind put on the head (no
  compare-and-set, no check of the revision), and losing the lease does not cancel a switch
  in flight — so a zombie's decision lands after a newer leader's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio
import msgspec

from confbus.coordinator import twophase
from confbus.coordinator.head import Head
from confbus.coordinator.service import add_args, main
from confbus.runtime.codec import encode
from confbus.runtime.failpoints import failpoint
from confbus.runtime.service import service_main
from confbus.schemas.base import utcnow
from confbus.schemas.events import VoteRecord
from confbus.schemas.txn import Decision
from tests.faults.shims import bug

BUGS = ("publish_commit_before_decision", "cas_without_compare")


async def _decide_publishing_first(
    self: twophase.Coordinator, head: Head, outcome: str, reason: str, votes: list[VoteRecord]
) -> Decision:
    state = "committed" if outcome == "commit" else "aborted"
    decided = msgspec.structs.replace(head.value, state=state, reason=reason)
    decision = await self.announce(decided, votes)  # BUG: the agents hear it first...
    await failpoint("coordinator.after_decision_published")
    await self.heads.cas(head, decided)  # ...and only then is it decided
    await failpoint("coordinator.after_decision_written")
    return decision


async def _decide_blindly(
    self: twophase.Coordinator, head: Head, outcome: str, reason: str, votes: list[VoteRecord]
) -> Decision:
    state = "committed" if outcome == "commit" else "aborted"
    decided = msgspec.structs.replace(head.value, state=state, reason=reason, updated_at=utcnow())
    await self.heads.kv.put(decided.namespace, encode(decided))  # BUG: no compare, no fence
    await failpoint("coordinator.after_decision_written")
    decision = await self.announce(decided, votes)
    await failpoint("coordinator.after_decision_published")
    return decision


@contextlib.contextmanager
def _unguarded(self: object, name: str) -> Iterator[anyio.CancelScope]:
    with anyio.CancelScope() as scope:  # BUG: never cancelled when the lease is lost
        yield scope


def apply(name: str) -> None:
    if name == "publish_commit_before_decision":
        twophase.Coordinator._decide = _decide_publishing_first  # type: ignore[method-assign]
    elif name == "cas_without_compare":
        twophase.Coordinator._decide = _decide_blindly  # type: ignore[method-assign]
        try:
            from confbus.runtime import leases
        except ImportError:  # a build without leases: the CAS was the only fence
            return
        leases.Leases.guard = _unguarded  # type: ignore[method-assign]


if __name__ == "__main__":
    apply(bug(BUGS))
    service_main("coordinator", main, add_args)
