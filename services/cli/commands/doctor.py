"""``confbus doctor``: is this confbus healthy? One checklist, one exit code.

```
ok    nats        connected to nats-1 (cluster confbus; 3 servers)
ok    stream      CFG_TXN: R3, leader nats-2, replicas nats-1 current, nats-3 current
FAIL  stream      CFG_EVENTS: replica nats-3 offline
ok    store       etcd: 3/3 members answer, leader e2
ok    services    store ×2, txn ×2, dist ×2, health ×2, rollback ×2
ok    leader      coordinator: web → coordinator-1 (epoch 3, 4.1s left)
ok    agents      3 seen in 3s: n1, n2, n3
```

Exit 0 when every check passes (``warn`` lines do not fail it), 1 when any says ``FAIL``,
3 when NATS cannot be reached at all. What is checked:

- **nats** — the server we reached, its cluster, the servers it knows of;
- **stream** — every stream and bucket of the table: it exists, has a leader, and each replica
  is current and online (stream info), with the lag of those that are not;
- **store** — with ``--store etcd://h:p,…``: each member's status (``/v3/maintenance/status``
  through etcd's JSON gateway; over HTTPS with ``--etcd-ca``, and ``--etcd-cert``/``--etcd-key``
  for members that ask for a client certificate, as ``confbus up --ha --secure``'s do),
  whether a quorum answers and agrees on a leader; without it, whether the version-store
  answers a read (which reads its store);
- **services** — the replicas of each service's API (``$SRV.PING``);
- **leader** — the lease keys ``lease.<role>.<name>`` in ``CFG_STATE``: who leads what;
- **txns** — transactions in doubt, and for how long;
- **node ids** — second agents started with a node id another live agent held, refused within
  the last hour (``node.duplicate`` events): a problem until that agent gets its own ``--node``;
- **agents** — the nodes heard heartbeating within ``--agents-wait`` seconds.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from confbus.cli.commands.options import JSON, Subparsers, add, command
from confbus.cli.exitcodes import USAGE, CliError
from confbus.cli.output import out
from confbus.client import Client
from confbus.runtime.api import call
from confbus.runtime.bus import Bus
from confbus.runtime.errors import ConfbusError
from confbus.runtime.etcd_tls import EtcdTls, add_etcd_tls_flags, etcd_tls_from
from confbus.schemas import subjects
from confbus.schemas.api import dist, health, rollback, store, txn
from confbus.schemas.base import DECODE_ERRORS
from confbus.schemas.events import NodeDuplicate
from confbus.schemas.node import own_heartbeat
from confbus.schemas.state import LEASES, REPLICA, LeaseRecord, decode_lease, lease_of
from confbus.schemas.streams import BUCKETS, CFG_CHANGES, CFG_STATE, STREAMS, streams_for

Status = Literal["ok", "warn", "FAIL"]
IN_DOUBT_FAIL_S = 30.0  # an undecided transaction this old means recovery is not working
# The APIs whose absence stops confbus (the others only degrade it).
REQUIRED_SERVICES = (store.SERVICE, txn.SERVICE, dist.SERVICE)
ALL_SERVICES = (store.SERVICE, txn.SERVICE, dist.SERVICE, health.SERVICE, rollback.SERVICE)


@dataclass(frozen=True)
class Check:
    status: Status
    area: str
    detail: str


def register(sub: Subparsers) -> None:
    p = command(sub, "doctor")
    p.add_argument(
        "--store",
        metavar="URL",
        help="also ask the etcd members directly: etcd://host:port,host:port,...",
    )
    add_etcd_tls_flags(p)
    p.add_argument(
        "--agents-wait",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="how long to listen for agents' heartbeats (default %(default)s)",
    )
    add(p, JSON.but(help="the checks as one JSON object per line"))
    p.set_defaults(func=run)


async def run(args: argparse.Namespace, client: Client) -> int:
    try:
        tls = etcd_tls_from(args)
        if tls is not None:
            tls.ssl_context()  # the files are read now: a missing one is a usage error
    except ValueError as exc:
        raise CliError(str(exc), USAGE) from None
    bus = client.bus
    # The checks run at once (the heartbeats are listened for meanwhile): a broken confbus
    # costs the longest of their waits for an answer, not the sum. Printed in this order.
    parts: list[Awaitable[Check | list[Check]]] = [
        stream_checks(bus),
        store_check(bus, args.store, tls),
        services_check(bus),
        leader_checks(bus),
        txns_check(bus),
        duplicates_check(client),
        agents_check(bus, args.agents_wait),
    ]
    found: dict[int, Check | list[Check]] = {}

    async def one(i: int, part: Awaitable[Check | list[Check]]) -> None:
        found[i] = await part

    async with anyio.create_task_group() as tg:
        for i, part in enumerate(parts):
            tg.start_soon(one, i, part)
    checks: list[Check] = [nats_check(bus)]
    for i in range(len(parts)):
        got = found[i]
        checks += got if isinstance(got, list) else [got]
    failed = [c for c in checks if c.status == "FAIL"]
    for c in checks:
        out(json.dumps(asdict(c)) if args.json else f"{c.status:<5} {c.area:<10}  {c.detail}")
    if not args.json:
        out(f"{len(failed)} problem(s) found" if failed else "all checks passed")
    return 1 if failed else 0


# -- the checks ------------------------------------------------------------------------------------


def nats_check(bus: Bus) -> Check:
    info: dict[str, Any] = getattr(bus.nc, "_server_info", {}) or {}
    name = info.get("server_name") or info.get("server_id", "?")
    cluster = info.get("cluster")
    known = len(bus.nc.servers)
    where = f"cluster {cluster}; {known} servers known" if cluster else "no cluster"
    return Check("ok", "nats", f"connected to {name} ({where})")


async def stream_checks(bus: Bus) -> list[Check]:
    """Every stream and bucket; a stack whose ``CFG_CHANGES`` is replicated has its second
    change stream checked too (``streams_for``)."""
    checks: list[Check] = []
    replicas = 1

    async def check(name: str) -> None:
        nonlocal replicas
        try:
            info = await bus.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            checks.append(Check("FAIL", "stream", f"{name}: missing (run confbus up, or "
                                "start a service without --no-provision)"))  # fmt: skip
            return
        except (nats.errors.Error, TimeoutError) as exc:
            checks.append(Check("FAIL", "stream", f"{name}: no answer ({exc!r}): no leader?"))
            return
        if name == CFG_CHANGES.name:
            replicas = int(info.config.num_replicas or 1)
        checks.append(_stream_check(name, info))

    for name in [s.name for s in STREAMS] + [f"KV_{b.name}" for b in BUCKETS]:
        await check(name)
    for spec in streams_for(replicas)[len(STREAMS) :]:
        await check(spec.name)
    return checks


def _stream_check(name: str, info: Any) -> Check:
    replicas = int(info.config.num_replicas or 1)
    cluster = info.cluster
    msgs = f"{info.state.messages} msgs"
    if cluster is None or not cluster.name:
        return Check("ok", "stream", f"{name}: R{replicas}, single server, {msgs}")
    if not cluster.leader:
        return Check("FAIL", "stream", f"{name}: R{replicas}, no leader")
    problems, peers = [], []
    for peer in cluster.replicas or []:
        if peer.offline:
            problems.append(f"replica {peer.name} offline")
        elif not peer.current:
            problems.append(f"replica {peer.name} behind by {peer.lag or 0} ops")
        else:
            peers.append(f"{peer.name} current")
    missing = replicas - 1 - len(cluster.replicas or [])
    if missing > 0:
        problems.append(f"{missing} replica(s) unassigned")
    desc = f"{name}: R{replicas}, leader {cluster.leader}"
    if problems:
        return Check("FAIL", "stream", f"{desc}; " + "; ".join(problems))
    status: Status = "warn" if replicas < 3 else "ok"
    tail = f", replicas {', '.join(peers)}" if peers else ""
    note = " (fewer than 3 replicas on a cluster)" if replicas < 3 else ""
    return Check(status, "stream", f"{desc}{tail}, {msgs}{note}")


async def store_check(bus: Bus, store_url: str | None, tls: EtcdTls | None = None) -> Check:
    if store_url:
        return await anyio.to_thread.run_sync(etcd_check, store_url, tls)
    try:
        reply = await call(bus, store.NAMESPACES, store.NamespacesRequest())
    except ConfbusError as exc:
        return Check("FAIL", "store", f"the version-store cannot read its store: {exc}")
    return Check("ok", "store", f"the version-store reads its store ({len(reply.namespaces)} "
                 "namespaces); give --store etcd://… to check etcd's members")  # fmt: skip


def etcd_check(url: str, tls: EtcdTls | None = None) -> Check:
    endpoints = [e for e in url.removeprefix("etcd://").split("/")[0].split(",") if e]
    if not endpoints:
        return Check("FAIL", "store", f"{url}: no endpoints")
    leaders: dict[str, str] = {}  # endpoint -> the leader it names
    down: list[str] = []
    members: dict[str, str] = {}  # id -> name
    for ep in endpoints:
        try:
            status = _etcd_post(ep, "/v3/maintenance/status", tls)
            listed = _etcd_post(ep, "/v3/cluster/member/list", tls)
        except (OSError, ValueError, urllib.error.URLError):
            down.append(ep)
            continue
        leaders[ep] = str(status.get("leader", ""))
        members |= {str(m.get("ID")): str(m.get("name", "?")) for m in listed.get("members", [])}
    total = max(len(members), len(endpoints))
    quorum = total // 2 + 1
    agreed = {leader for leader in leaders.values() if leader and leader != "0"}
    answered = f"{len(leaders)}/{total} members answer"
    if len(leaders) < quorum:
        # Members serving TLS close a plain connection: the same "down" as a dead member.
        hint = "" if tls else "; if they serve TLS, give --etcd-ca (and --etcd-cert/--etcd-key)"
        return Check(
            "FAIL", "store", f"etcd: {answered}: no quorum (down: {', '.join(down)}){hint}"
        )
    if len(agreed) != 1:
        return Check("FAIL", "store", f"etcd: {answered}, but no agreed leader")
    if down:
        return Check("FAIL", "store", f"etcd: {answered} (quorum holds; down: {', '.join(down)})")
    (leader,) = agreed
    return Check("ok", "store", f"etcd: {answered}, leader {members.get(leader, leader)}")


def _etcd_post(endpoint: str, path: str, tls: EtcdTls | None) -> dict[str, Any]:
    scheme, context = ("https", tls.ssl_context()) if tls else ("http", None)
    req = urllib.request.Request(f"{scheme}://{endpoint}{path}", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=2, context=context) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


async def services_check(bus: Bus, window: float = 0.5) -> Check:
    """How many replicas of each API answer ``$SRV.PING`` within ``window`` seconds."""
    counts = {name: 0 for name in ALL_SERVICES}
    inbox = bus.nc.new_inbox()

    async def on_pong(msg: Msg) -> None:
        try:
            name = str(json.loads(msg.data).get("name", ""))
        except ValueError:
            return
        key = name.removeprefix("confbus-")
        if key in counts:
            counts[key] += 1

    sub = await bus.nc.subscribe(inbox, cb=on_pong)
    try:
        for name in ALL_SERVICES:
            await bus.nc.publish(f"$SRV.PING.confbus-{name}", b"", reply=inbox)
        await anyio.sleep(window)  # replies from however many replicas there are
    finally:
        await sub.unsubscribe()
    listed = ", ".join(f"{name} ×{n}" for name, n in counts.items())
    missing = [name for name in REQUIRED_SERVICES if counts[name] == 0]
    if missing:
        return Check("FAIL", "services", f"{listed}; nobody answers for {', '.join(missing)}")
    single = [name for name, n in counts.items() if n == 1]
    if single or any(n == 0 for n in counts.values()):
        return Check("warn", "services", f"{listed} (a single replica cannot fail over)")
    return Check("ok", "services", listed)


async def leader_checks(bus: Bus) -> list[Check]:
    try:
        kv = await bus.kv(CFG_STATE.name)
        watcher = await kv.watch(LEASES, ignore_deletes=True)
    except (nats.errors.Error, TimeoutError) as exc:
        return [Check("FAIL", "leader", f"cannot read the leases in {CFG_STATE.name}: {exc!r}")]
    records: list[tuple[str, str, LeaseRecord]] = []
    try:
        with anyio.fail_after(5):
            async for entry in watcher:
                if entry is None:
                    break  # the initial values are all in
                if not entry.value:
                    continue
                role, name = lease_of(entry.key)
                try:
                    records.append((role, name, decode_lease(entry.value)))
                except DECODE_ERRORS:
                    continue
    except TimeoutError:
        return [Check("FAIL", "leader", "the lease keys did not arrive within 5s")]
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    leases = _leases_held(records, datetime.now(UTC))
    if not leases:
        return [Check("ok", "leader", "no leases yet (nothing has needed a leader)")]
    return [Check("ok", "leader", f"{role}: {'; '.join(items)}") for role, items in leases.items()]


def _leases_held(
    records: list[tuple[str, str, LeaseRecord]], now: datetime
) -> dict[str, list[str]]:
    """Per role, each name's holder and how long its lease lasts unrenewed: a lease that
    hangs on its holder's replica lease (``confbus.runtime.leases``) lasts as long as that."""
    lives = {
        (role, lease.holder): lease
        for role, name, lease in records
        if name.startswith(f"{REPLICA}.")
    }
    leases: dict[str, list[str]] = {}
    for role, name, lease in records:
        if name.startswith(f"{REPLICA}."):
            continue
        expires = lease.expires_at
        if lease.life is not None and expires > now:
            replica = lives.get((role, lease.holder))
            expires = replica.expires_at if replica and replica.life == lease.life else now
        left = (expires - now).total_seconds()
        if left > 0:
            what = f"{name} → {lease.holder} (epoch {lease.epoch}, {left:.1f}s left)"
        else:
            what = f"{name} free (last {lease.holder})"
        leases.setdefault(role, []).append(what)
    return leases


async def txns_check(bus: Bus) -> Check:
    try:
        reply = await call(bus, txn.IN_DOUBT, txn.InDoubtRequest())
    except ConfbusError as exc:
        return Check("FAIL", "txns", f"the coordinator does not answer: {exc}")
    if not reply.txns:
        return Check("ok", "txns", "nothing in doubt")
    oldest = max(reply.txns, key=lambda t: t.age_s)
    detail = (
        f"{len(reply.txns)} in doubt; oldest {oldest.namespace} {oldest.txid} {oldest.age_s:.0f}s"
    )
    return Check("FAIL" if oldest.age_s > IN_DOUBT_FAIL_S else "warn", "txns", detail)


DUPLICATES = "cfg.event.*.node.duplicate"


async def duplicates_check(client: Client, within: timedelta = timedelta(hours=1)) -> Check:
    """Second agents with a node id another agent held, refused within the last hour."""
    found: dict[tuple[str, str], str] = {}
    try:
        async for item in client.events(DUPLICATES, since=within):
            if isinstance(item.event, NodeDuplicate):
                found[(item.event.node, item.event.instance)] = item.event.reason
    except ConfbusError as exc:
        return Check("warn", "node ids", f"could not read node.duplicate events: {exc}")
    if not found:
        return Check("ok", "node ids", "one agent per node id (none refused in the last hour)")
    return Check("FAIL", "node ids", "; ".join(sorted(set(found.values()))))


async def agents_check(bus: Bus, wait: float) -> Check:
    seen: set[str] = set()

    async def on_heartbeat(msg: Msg) -> None:
        if (hb := own_heartbeat(msg.subject, msg.data)) is not None:
            seen.add(hb.node)

    sub = await bus.nc.subscribe(subjects.HEARTBEATS_ALL, cb=on_heartbeat)
    try:
        await anyio.sleep(wait)  # heartbeats arrive every interval: listen for a while
    finally:
        await sub.unsubscribe()
    if not seen:
        return Check("warn", "agents", f"none heard in {wait:g}s")
    names = sorted(seen)
    shown = ", ".join(names[:20]) + (f", … ({len(names) - 20} more)" if len(names) > 20 else "")
    return Check("ok", "agents", f"{len(names)} seen in {wait:g}s: {shown}")
