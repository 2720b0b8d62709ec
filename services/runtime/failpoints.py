"""Named failpoints a test arms through ``CONFBUS_FAILPOINTS`` to kill, pause or delay a
process at an exact step (etcd's gofail, FoundationDB's buggify).

``CONFBUS_FAILPOINTS="coordinator.after_decision_written=kill,agent.after_vote=delay:0.5"``

Actions: ``kill`` (SIGKILL ourselves: no cleanup, no flush — a real crash), ``pause``
(SIGSTOP ourselves, a test resumes us with SIGCONT), ``delay:SECONDS``, ``error`` (raise
``FailpointError``), ``unavailable`` (raise ``Unavailable``: the bus is down), ``timeout``
(raise nats-py's ``TimeoutError``, as a request nobody answered does). ``name=kill@3`` fires on
the 3rd hit only. Disarmed, a failpoint costs one lookup in an empty dict.
"""

from __future__ import annotations

import os
import signal
import sys

import anyio
import nats.errors

from confbus.runtime.errors import Unavailable


class FailpointError(RuntimeError):
    pass


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        out[name.strip()] = (action.strip() or "kill", int(nth) if nth else 1)
    return out


_ARMED = _parse(os.environ.get("CONFBUS_FAILPOINTS", ""))
_HITS: dict[str, int] = {}


def arm(name: str, action: str, nth: int = 1) -> None:
    """Arm in-process (tests of a single process); subprocesses use the environment."""
    _ARMED[name] = (action, nth)
    _HITS.pop(name, None)


def disarm_all() -> None:
    _ARMED.clear()
    _HITS.clear()


async def failpoint(name: str) -> None:
    if not _ARMED:
        return
    armed = _ARMED.get(name)
    if armed is None:
        return
    action, nth = armed
    hits = _HITS[name] = _HITS.get(name, 0) + 1
    if hits != nth:
        return
    sys.stderr.write(f'{{"failpoint": "{name}", "action": "{action}"}}\n')
    sys.stderr.flush()
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "pause":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action.startswith("delay:"):
        await anyio.sleep(float(action.split(":", 1)[1]))
    elif action == "error":
        raise FailpointError(name)
    elif action == "unavailable":
        raise Unavailable(f"failpoint {name}: the bus is not answering")
    elif action == "timeout":
        raise nats.errors.TimeoutError
