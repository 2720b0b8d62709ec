"""The node's last known good (docs/design.md §5.4), and the cold start that falls back to it.

- **Recording it.** When a version becomes a namespace's last known good (the version-store's
  ``version.last_good`` event, or the ``last-good`` ref read at start-up and every
  ``REFRESH_S``, which covers events missed while away), the agent records it on disk with
  ``NamespaceDisk.mark_last_good`` — from its own history when it ran that version, else with
  the bytes fetched from the store (checked against their sha256). Its bytes then stay on disk
  until another version is the last known good.
- **Remembering the policy.** The namespace's ``Policy.cold_start_last_good`` is cached in the
  namespace's state dir (``lastgood-policy.json``), refreshed with the last known good: a node
  that restarts with no bus must know the flag without asking anyone.
- **Cold start.** ``connect_or_fall_back`` tries the bus for ``CONFBUS_COLD_START_GRACE_S``
  seconds (default 5); if it is not there, every namespace whose cached flag is set goes back to
  its last known good (``NamespaceDisk.restore_last_good``: the one move backwards, on purpose),
  and the agent keeps trying the bus. Once connected, the distributor's catch-up brings the node
  to its target again.

Nothing here may stop the agent: every failure is logged and retried.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
import msgspec
from nats.aio.msg import Msg

from confbus.agent import offload
from confbus.agent.disk import NamespaceDisk
from confbus.agent.state import IntegrityError, Refused, VersionNotOnDisk
from confbus.agent.state_io import atomic_write, ensure_dir, read_if_exists, sha256_bytes
from confbus.agent.variants import own_variant
from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError, NotFound
from confbus.runtime.service import connect_with_retry
from confbus.runtime.settings import Settings
from confbus.schemas import subjects
from confbus.schemas.api import store as store_api
from confbus.schemas.base import DECODE_ERRORS, utcnow
from confbus.schemas.events import VersionLastGood, decode_event
from confbus.schemas.versions import VersionInfo

if TYPE_CHECKING:
    from confbus.agent.node import NodeAgent

log = logging.getLogger("confbus.agent")

POLICY_FILE = "lastgood-policy.json"
GRACE_ENV = "CONFBUS_COLD_START_GRACE_S"
DEFAULT_GRACE_S = 5.0
REFRESH_S = 30.0


class CachedPolicy(msgspec.Struct, frozen=True, kw_only=True):
    cold_start_last_good: bool
    seen_at: datetime


_decode_cached = msgspec.json.Decoder(CachedPolicy).decode


def cached_policy(disk: NamespaceDisk) -> CachedPolicy | None:
    data = read_if_exists(disk.dir / POLICY_FILE)
    if data is None:
        return None
    try:
        return _decode_cached(data)
    except DECODE_ERRORS:
        log.warning("unreadable cached policy, ignored", extra={"path": str(disk.dir)})
        return None


def cache_policy(disk: NamespaceDisk, cold_start_last_good: bool) -> bool:
    """Write the flag if it changed (True if written). Sync and blocking: call in a thread."""
    old = cached_policy(disk)
    if old is not None and old.cold_start_last_good == cold_start_last_good:
        return False
    ensure_dir(disk.dir, 0o700)
    value = CachedPolicy(cold_start_last_good=cold_start_last_good, seen_at=utcnow())
    atomic_write(disk.dir / POLICY_FILE, msgspec.json.encode(value))
    return True


# -- cold start ------------------------------------------------------------------------------


async def connect_or_fall_back(
    agent: NodeAgent, settings: Settings, grace_s: float | None = None
) -> Bus:
    """Connect to the bus; if it is not there within the grace period, fall back to the last
    known good where the cached policy says so, then keep trying (forever)."""
    name = f"confbus-agent-{agent.node}"
    grace = grace_s if grace_s is not None else float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S))
    try:
        return await connect_with_retry(settings, name, timeout=grace, no_echo=True)
    except TimeoutError:
        agent.bus_connected = False
        restored = await fall_back(agent)
        serving = "the last known good" if restored else "the files it has"
        log.warning(
            "no bus at start: serving %s",
            serving,
            extra={"node": agent.node, "restored": restored, "grace_s": grace},
        )
    return await connect_with_retry(settings, name, no_echo=True)


async def fall_back(agent: NodeAgent) -> dict[str, int]:
    """Restore the last known good of every namespace whose cached policy asks for it.
    Returns {namespace: version restored}."""
    restored: dict[str, int] = {}
    for name, ns in agent.namespaces.items():
        try:
            cached = await offload.run(cached_policy, ns.disk)
            if cached is None or not cached.cold_start_last_good:
                continue
            version = await offload.run(ns.disk.restore_last_good)
            ns.state = await offload.run(ns.disk.snapshot)
        except (ConfbusError, OSError) as exc:
            log.error("cold-start fallback failed", extra={"namespace": name, "error": str(exc)})
            continue
        if version is not None:
            restored[name] = version
    return restored


# -- following the last known good -----------------------------------------------------------


async def keep_last_good(bus: Bus, agents: Sequence[NodeAgent]) -> None:
    """Record each new last known good of the agents' namespaces, and keep the cached policy
    fresh: on ``version.last_good`` events (no store call when the bytes are in the local
    history: a whole fleet hears the event at once), and a full check with the store at start
    and every ``REFRESH_S`` (events missed while away, policy changes). One loop, one
    subscription per namespace and one check with the store per namespace for all the agents of
    a host (``confbus.agent.host``)."""
    following: dict[str, list[NodeAgent]] = {}
    for agent in agents:
        for name in agent.namespaces:
            following.setdefault(name, []).append(agent)
    kick = anyio.Event()
    # namespace -> the version (and sha256) an event named (None: a full check with the store)
    pending: dict[str, tuple[int, str | None] | None] = dict.fromkeys(following)

    async def on_event(msg: Msg) -> None:
        try:
            ev = decode_event(msg.data)
        except DECODE_ERRORS:
            return
        if isinstance(ev, VersionLastGood) and ev.namespace in following:
            if ev.namespace not in pending or pending[ev.namespace] is not None:
                pending[ev.namespace] = (ev.version, ev.sha256)
            kick.set()

    subs = [
        await bus.nc.subscribe(subjects.event(name, "version.last_good"), cb=on_event)
        for name in following
    ]
    try:
        while True:
            kick = anyio.Event()  # before taking the work: a later event wakes the wait
            work, pending = pending, {}
            for name, named in sorted(work.items()):
                if not await _keep(bus, following[name], name, named):
                    pending.setdefault(name, None)  # retried with the next full check
            with anyio.move_on_after(REFRESH_S) as scope:
                await kick.wait()
            if scope.cancelled_caught:
                pending.update(dict.fromkeys(following))
    finally:
        with anyio.CancelScope(shield=True):
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception:  # the connection may be gone
                    pass


async def _keep(
    bus: Bus, agents: Sequence[NodeAgent], name: str, named: tuple[int, str | None] | None
) -> bool:
    """One namespace's last known good brought to ``agents``: the version an event ``named``,
    else a full check with the store (asked once for all of them). False if any failed."""
    if named is not None:
        return await _each(agents, name, lambda agent: record(bus, agent, name, *named))
    try:
        view = await store_view(bus, name)
    except ConfbusError as exc:
        log.info("last good not synced", extra={"namespace": name, "error": str(exc)})
        return False
    return await _each(agents, name, lambda agent: sync_namespace(bus, agent, name, view))


async def _each(
    agents: Sequence[NodeAgent], name: str, step: Callable[[NodeAgent], Awaitable[object]]
) -> bool:
    """``step`` for every agent, one failing not stopping the others; False if any failed."""
    ok = True
    for agent in agents:
        try:
            await step(agent)
        except (ConfbusError, OSError) as exc:
            log.info("last good not synced", extra={"namespace": name, "error": str(exc)})
            ok = False
    return ok


async def record(
    bus: Bus, agent: NodeAgent, name: str, version: int, sha256: str | None = None
) -> bool:
    """Record ``version`` as the namespace's last known good: from the local history when this
    node ran it, else with the bytes fetched from the store (checked against their sha256).
    True if something changed."""
    ns = agent.namespaces[name]
    if ns.state.last_good == version:
        return False
    kept = False
    if ns.state.applied_version == version:
        sha256 = None  # this node's own bytes of it (its variant's): the applied record's
    if version in await offload.run(ns.disk.history):
        try:
            await offload.run(lambda: ns.disk.mark_last_good(version, sha256=sha256))
            kept = True
        except VersionNotOnDisk:
            pass  # its sha256 unknown here: the copy cannot be checked
        except IntegrityError as exc:
            # The history's copies are written without fsync: a power cut may spoil one.
            log.warning("kept copy damaged, fetching it", extra={"error": str(exc)})
    if not kept:
        # Never ran it here (away, or excluded): keep its bytes anyway, checked by sha256.
        full = await call(
            bus,
            store_api.GET,
            store_api.GetRequest(namespace=name, ref=str(version), content=True),
        )
        if full.content is None:
            return False
        try:
            content = agent.trust.admit_bytes(
                name, version, full.info.sha256, full.info.format, full.signatures, full.content
            )
            own = own_variant(content, full.info, agent.labels)
        except Refused as no:
            log.warning("last known good refused", extra={"namespace": name, "reason": no.reason})
            return False
        # A version with overlays: this node's variant, whose sha256 is its own bytes'.
        own_sha = full.info.sha256 if own is content else sha256_bytes(own)
        await offload.run(lambda: ns.disk.mark_last_good(version, sha256=own_sha, content=own))
    ns.state = await offload.run(ns.disk.snapshot)
    log.info("last known good recorded", extra={"namespace": name, "version": version})
    return True


@dataclass(frozen=True)
class StoreView:
    """What the store says of a namespace's last known good: its policy's flag, and the
    version (None: there is none yet)."""

    cold_start_last_good: bool
    last_good: VersionInfo | None


async def store_view(bus: Bus, name: str) -> StoreView:
    policy = await call(bus, store_api.POLICY_GET, store_api.PolicyGetRequest(namespace=name))
    try:
        good = await call(
            bus, store_api.GET, store_api.GetRequest(namespace=name, ref="last-good", content=False)
        )
    except NotFound:
        return StoreView(cold_start_last_good=policy.cold_start_last_good, last_good=None)
    return StoreView(cold_start_last_good=policy.cold_start_last_good, last_good=good.info)


async def sync_namespace(
    bus: Bus, agent: NodeAgent, name: str, view: StoreView | None = None
) -> int | None:
    """Bring one namespace's recorded last known good and cached policy up to date with the
    store (``view``: what it said, asked now if None). Returns the last known good version
    recorded now (None: unchanged or none)."""
    ns = agent.namespaces[name]
    view = view or await store_view(bus, name)
    await offload.run(cache_policy, ns.disk, view.cold_start_last_good)
    good = view.last_good
    if good is None:
        return None
    return good.version if await record(bus, agent, name, good.version, good.sha256) else None
