"""The real version-store, optionally with injected faults or a deliberate bug.

Faults (``CONFBUS_TEST_FAULTS``, seeded by ``CONFBUS_TEST_SEED``): ``<failpoint>=unavailable:P``
raises ``Unavailable`` at that step with probability P (the consumer naks with backoff: a
forced nak), ``<failpoint>=error:P`` raises ``RuntimeError`` (a bug: nak, then dead-letter
after a few deliveries). A change whose id starts with ``poison-`` makes validation raise
``RuntimeError`` every time: it must end in ``CFG_DLQ``, never stored.

Bugs (``CONFBUS_TEST_BUG``):

- ``duplicate_announce``: ``version.created`` gets a fresh message id on every attempt and
  redeliveries are not checked against the event log, so a redelivered change is announced
  twice;
- ``ack_before_commit``: the batch is acked before the store commit, so a crash in between
  loses changes the publisher was told were accepted.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Sequence
from typing import Any

import anyio

from confbus.runtime.consumer import Delivery
from confbus.runtime.errors import Unavailable
from confbus.runtime.service import service_main
from confbus.schemas.changes import ChangeProposed
from confbus.version_store import changes
from confbus.version_store.service import add_args, main
from confbus.version_store.storage import NewVersion
from tests.faults.shims import FAULTS_ENV, SEED_ENV, bug

BUGS = ("duplicate_announce", "ack_before_commit")
POISON_PREFIX = "poison-"


def parse_faults(spec: str) -> dict[str, list[tuple[str, float, float]]]:
    """``name=unavailable:P``, ``name=error:P``, ``name=delay:SECONDS:P`` (comma-separated;
    a step may be named more than once) → name -> [(action, probability, seconds)]."""
    out: dict[str, list[tuple[str, float, float]]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        kind, *rest = action.split(":")
        if kind == "delay":
            seconds, p = float(rest[0]), float(rest[1] if len(rest) > 1 else 1.0)
        elif kind in ("unavailable", "error"):
            seconds, p = 0.0, float(rest[0] if rest else 1.0)
        else:
            raise SystemExit(f"{FAULTS_ENV}: unknown action {kind!r} in {item!r}")
        out.setdefault(name, []).append((kind, p, seconds))
    return out


def install_faults(spec: str, seed: int) -> None:
    faults = parse_faults(spec)
    rng = random.Random(seed)
    real = vars(changes)["failpoint"]

    async def failpoint(name: str) -> None:
        for kind, p, seconds in faults.get(name, ()):
            if rng.random() >= p:
                continue
            if kind == "delay":
                await anyio.sleep(seconds)  # an injected stall (past the ack wait)
            elif kind == "unavailable":
                raise Unavailable(f"injected at {name}")
            else:
                raise RuntimeError(f"injected bug at {name}")
        await real(name)

    # changes.py imported the function by name: replace it where it is looked up.
    vars(changes)["failpoint"] = failpoint

    real_decide = changes.decide

    def decide(change: ChangeProposed, *args: Any, **kwargs: Any) -> NewVersion:
        """The real ``decide``, unless the change is poisoned."""
        if change.change_id.startswith(POISON_PREFIX):
            raise RuntimeError(f"poisoned change {change.change_id}")
        return real_decide(change, *args, **kwargs)

    changes.decide = decide


def apply_bug(name: str) -> None:
    if name == "duplicate_announce":

        def fresh_id(namespace: str, version: int) -> str:
            return f"version:{namespace}:{version}:created:{secrets.token_hex(4)}"

        async def keep_all(self: changes.ChangeHandler, outcomes: object) -> None:
            return None

        changes.created_msg_id = fresh_id
        changes.ChangeHandler._drop_announced = keep_all  # type: ignore[method-assign]
    elif name == "ack_before_commit":
        handle = changes.ChangeHandler.__call__

        async def ack_first(
            self: changes.ChangeHandler, batch: Sequence[Delivery[ChangeProposed]]
        ) -> None:
            for item in batch:
                await item.msg.ack_sync()  # BUG: acked before anything is stored
            await handle(self, batch)

        changes.ChangeHandler.__call__ = ack_first  # type: ignore[method-assign]


if __name__ == "__main__":
    install_faults(os.environ.get(FAULTS_ENV, ""), int(os.environ.get(SEED_ENV, "0")))
    apply_bug(bug(BUGS))
    service_main("version-store", main, add_args)
