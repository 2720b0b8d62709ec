"""How the pages say things: times, hashes, an event's facts and the links from an event to its
version, rollout, rollback and transaction. Jinja2 filters and globals; no bus, no HTTP."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
import msgspec
from markupsafe import Markup, escape

from confbus.client import StreamedEvent
from confbus.runtime.events import event_type
from confbus.schemas.events import (
    SHOWN_APART,
    VERSION_FIELDS,
    NodeOutcome,
    VoteRecord,
    WaveReport,
)
from confbus.schemas.versions import VersionInfo

# The fields of an event turned into links.
_LINKED = {
    "node",
    "version",
    "new_version",
    "to_version",
    "from_version",
    "rollout_id",
    "rollback_id",
    "txid",
}


def utc(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if when else "—"


def iso(when: datetime | None) -> str:
    return when.astimezone(UTC).isoformat() if when else ""


def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def short(sha: str | None, n: int = 12) -> str:
    return sha[:n] if sha else "—"


def query(**params: Any) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


def _value(value: Any) -> str:
    if isinstance(value, list):
        if value and all(isinstance(v, VoteRecord) for v in value):
            against = [f"{v.vote}:{v.node}" for v in value if v.vote != "yes"]
            return ", ".join(against) if against else f"all {len(value)} yes"
        if value and all(isinstance(v, NodeOutcome) for v in value):
            counts: dict[str, int] = {}
            for o in value:
                counts[o.outcome] = counts.get(o.outcome, 0) + 1
            return ", ".join(f"{k} {n}" for k, n in counts.items())
        if value and all(isinstance(v, WaveReport) for v in value):
            return " + ".join(f"{len(w.nodes)} {w.state}" for w in value)
        if value and all(isinstance(v, list) for v in value):
            return " + ".join(str(len(v)) for v in value)
        return ", ".join(str(v) for v in value[:6]) + (
            f", … ({len(value)})" if len(value) > 6 else ""
        )
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def facts(ev: msgspec.Struct) -> list[tuple[str, str]]:
    """The fields of an event worth showing: set, not at their default, not shown elsewhere."""
    out = []
    for f in msgspec.structs.fields(ev):
        value = getattr(ev, f.name)
        if f.name in SHOWN_APART or f.name in _LINKED or value is None or value in ("", [], {}):
            continue
        if f.default is not msgspec.NODEFAULT and value == f.default:
            continue
        if f.name in VERSION_FIELDS and isinstance(value, int):
            out.append((f.name, f"v{value}"))
        elif f.name.endswith("sha256") and isinstance(value, str):
            out.append((f.name, short(value)))
        else:
            out.append((f.name, _value(value)))
    return out


def links(item: StreamedEvent) -> list[tuple[str, str]]:
    """(label, href) from an event to what it names: versions, its rollout, rollback, txn."""
    ev = item.event
    if ev is None:
        return []
    ns = ev.namespace
    out: list[tuple[str, str]] = []
    for name in ("version", "new_version", "from_version", "to_version"):
        value = getattr(ev, name, None)
        if isinstance(value, int):
            label = "v" if name == "version" else name.removesuffix("_version") + " v"
            out.append((f"{label}{value}", f"/ns/{ns}/v/{value}"))
    if rid := getattr(ev, "rollout_id", None):
        out.append((f"rollout {rid}", f"/timeline?{query(filter=f'{ns}.rollout.>', rollout=rid)}"))
    if bid := getattr(ev, "rollback_id", None):
        out.append(
            (f"rollback {bid}", f"/timeline?{query(filter=f'{ns}.rollback.>', rollback=bid)}")
        )
    if txid := getattr(ev, "txid", None):
        out.append((f"txn {txid}", f"/timeline?{query(filter=ns, txid=txid)}"))
    return out


def kind(item: StreamedEvent) -> str:
    if item.event is None:
        return item.subject.removeprefix("cfg.event.").partition(".")[2] or "?"
    return event_type(item.event)


def history_rows(versions: list[VersionInfo], operator: bool) -> Markup:
    """The rows of a history table. The one part of a page that grows to thousands of rows is
    built here rather than in the template (Jinja2 spent ~5× as long on it), and each row is
    kept: a version never changes but for its status and flags, which are part of the key.
    Every value a person wrote (author, message, approver) is escaped; the rest are numbers,
    hex digests and fixed words."""
    return Markup("".join([_history_row(v, operator) for v in versions]))


@functools.lru_cache(maxsize=50_000)
def _history_row(v: VersionInfo, operator: bool) -> str:
    ns, n = v.namespace, v.version
    tags = []
    if v.last_good:
        tags.append(' <span class="tag">last good</span>')
    if v.rollback_of:
        tags.append(f' <span class="tag">rollback of v{v.rollback_of}</span>')
    if v.approved_by:
        tags.append(f' <span class="tag">approved by {escape(v.approved_by)}</span>')
    diff = (
        f'<a href="/ns/{ns}/diff?a={v.parent}&amp;b={n}">diff v{v.parent}</a>' if v.parent else ""
    )
    act = ""
    if operator:
        act = "<td>" + _acts(ns, n, v.status) + "</td>"
    created = v.created_at.astimezone(UTC).isoformat(" ", "seconds")[:19] + "Z"
    return (
        f'<tr id="v{n}"><th scope="row"><a href="/ns/{ns}/v/{n}">v{n}</a></th>'
        f'<td><span class="state state-{v.status}">{v.status}</span>{"".join(tags)}</td>'
        f"<td>{escape(v.author) if v.author else '—'}</td><td>{created}</td>"
        f"<td>{escape(v.message)}</td><td><code>{v.sha256[:12]}</code></td><td>{diff}</td>{act}</tr>\n"
    )


def _acts(ns: str, n: int, status: str) -> str:
    """The buttons of a history row; each submits the page's one form for its act."""
    if status == "draft":
        return (
            f'<button type="submit" form="act-approve" name="version" value="{n}" '
            f'data-action="approve" data-confirm="Approve {ns} v{n}?">Approve</button> '
            f'<button type="submit" form="act-reject" name="version" value="{n}" class="danger" '
            f'data-action="reject" data-confirm="Reject {ns} v{n} for good?">Reject</button>'
        )
    if status in ("superseded", "approved"):
        return (
            f'<button type="submit" form="act-rollback" name="version" value="{n}" '
            f'class="danger" data-action="rollback" '
            f'data-confirm="Roll {ns} back to v{n} (as a new version)?">Roll back to v{n}</button>'
        )
    return ""


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("confbus.console", "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(utc=utc, iso=iso, ago=ago, short=short)
    env.globals.update(facts=facts, links=links, kind=kind, qs=query, history_rows=history_rows)
    return env
