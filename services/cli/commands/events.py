"""``confbus replay`` and ``confbus tail``: read the audit log (``CFG_EVENTS``).

A filter is a subject under ``cfg.event.``, a bare namespace (``payments`` means
``cfg.event.payments.>``) or a namespace with a type pattern (``payments.rollout.>``).
Human output is one line per event, ``seq time type namespace key facts…``, where time is
when the stream stored it (what ``--since`` filters on); ``--json`` prints each event as
stored plus ``seq`` and ``subject``. Events never carry config content, so neither does this.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from confbus.cli.commands.args import positive_int
from confbus.cli.commands.options import JSON, Subparsers, add, command
from confbus.cli.exitcodes import OK
from confbus.client import Client, StreamedEvent
from confbus.runtime import since
from confbus.runtime.events import event_type
from confbus.schemas import subjects
from confbus.schemas.api.health import RuleResult
from confbus.schemas.events import (
    SHOWN_APART,
    VERSION_FIELDS,
    NodeOutcome,
    VoteRecord,
    WaveReport,
)
from confbus.schemas.policydiff import FieldChange

_EVENTS_PREFIX = subjects.EVENTS_ALL.removesuffix(">")  # "cfg.event."

# The first of these an event has is its key, printed right after the namespace.
_KEY_FIELDS = ("node", "rollout_id", "rollback_id", "txid", "version", "change_id")


def register(sub: Subparsers) -> None:
    replay = command(sub, "replay")
    _add_common(replay)
    start = replay.add_mutually_exclusive_group()
    start.add_argument(
        "--since",
        type=parse_since,
        metavar="DURATION|TIME",
        help="only events stored since then: 30s, 10m, 2h, 7d, or an ISO-8601 time "
        "(UTC unless it has an offset)",
    )
    start.add_argument(
        "--from-seq", type=positive_int, metavar="N", help="start at stream sequence N"
    )
    replay.set_defaults(func=run_replay)

    tail = command(sub, "tail")
    _add_common(tail)
    tail.set_defaults(func=run_tail)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "filter",
        nargs="?",
        type=subject_filter,
        default=subjects.EVENTS_ALL,
        metavar="FILTER",
        help="a subject under cfg.event. (wildcards allowed), a namespace, or "
        "NAMESPACE.TYPE-PATTERN (default: %(default)s)",
    )
    add(parser, JSON.but(help="one JSON object per line: the event, seq, subject"))


async def run_replay(args: argparse.Namespace, client: Client) -> int:
    events = client.events(args.filter, since=args.since, from_seq=args.from_seq)
    async for item in events:
        sys.stdout.write(render(item, as_json=args.json) + "\n")
    sys.stdout.flush()
    return OK


async def run_tail(args: argparse.Namespace, client: Client) -> int:
    flt = args.filter

    def announce() -> None:
        sys.stderr.write(f"confbus: following {flt} on {client.nats_url} (Ctrl-C to stop)\n")
        sys.stderr.flush()

    async for item in client.events(flt, follow=True, on_subscribed=announce):
        sys.stdout.write(render(item, as_json=args.json) + "\n")
        sys.stdout.flush()  # someone is watching: no block buffering on a pipe
    return OK


# -- arguments ----------------------------------------------------------------------------


def subject_filter(text: str) -> str:
    """The subject filter ``text`` means (an argparse type: a bad one is a usage error)."""
    try:
        return subjects.event_filter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_since(text: str) -> datetime | timedelta:
    try:
        return since.parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- output -------------------------------------------------------------------------------


def render(item: StreamedEvent, *, as_json: bool) -> str:
    if as_json:
        return _json_line(item)
    when = item.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if item.time else "-"
    if item.event is None:
        # From a newer confbus (or not an event at all): say what we can, print it as it is.
        rest = item.subject.removeprefix(_EVENTS_PREFIX)
        namespace, _, kind = rest.partition(".")
        raw = item.raw.decode("utf-8", errors="replace")
        return f"{item.seq} {when} {kind or '?'} {namespace} [unknown type] {raw}"
    ev = item.event
    return " ".join([str(item.seq), when, event_type(ev), ev.namespace, describe(ev)])


def describe(ev: msgspec.Struct) -> str:
    """``key facts… by actor: "message" reason="…"`` for any event Struct.

    Facts are the fields that say something: not empty, not at their default.
    """
    fields = msgspec.structs.fields(ev)
    values = {f.name: getattr(ev, f.name) for f in fields}
    key_name = next((k for k in _KEY_FIELDS if values.get(k) is not None), None)
    parts: list[str] = []
    if key_name is not None:
        parts.append(_value(key_name, values[key_name]))
    for f in fields:
        value = values[f.name]
        if f.name in SHOWN_APART or f.name == key_name or value is None or value in ("", [], {}):
            continue
        if f.default is not msgspec.NODEFAULT and value == f.default:
            continue
        parts.append(_fact(f.name, value))
    if actor := values.get("actor"):
        parts.append(f"by {actor}")
    if message := values.get("message"):
        if parts and parts[-1].startswith("by "):
            parts[-1] += ":"
        parts.append(json.dumps(message, ensure_ascii=False))
    if reason := values.get("reason"):
        parts.append(f"reason={json.dumps(reason, ensure_ascii=False)}")
    return " ".join(parts)


def _fact(name: str, value: Any) -> str:
    if name == "version":
        return _value(name, value)
    if name == "sha256":
        return f"sha={_value(name, value)}"
    return f"{name}={_value(name, value)}"


def _value(name: str, value: Any) -> str:
    if name in VERSION_FIELDS and isinstance(value, int):
        return f"v{value}"
    if name.endswith("sha256") and isinstance(value, str) and len(value) > 12:
        return value[:12] + "…"
    if isinstance(value, float):
        if name.endswith("share"):
            return f"{value:.0%}"
        if name.endswith(("_s", "seconds")):  # the name says the unit: to the millisecond
            return f"{round(value, 3):g}"
        return f"{value:g}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return _list(value)
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if (" " in text or not text) else text


def _list(items: list[Any]) -> str:
    if all(isinstance(i, FieldChange) for i in items):  # a policy's changes, each in full
        return "[" + "; ".join(i.line() for i in items) + "]"
    if all(isinstance(i, RuleResult) for i in items):  # a verdict's rules: each one's outcome
        return ",".join(f"{r.rule}:{_rule_outcome(r)}" for r in items)
    if all(isinstance(i, VoteRecord) for i in items):
        against = [
            f"{v.vote}:{v.node}" + (f"({v.reason})" if v.reason else "")
            for v in items
            if v.vote != "yes"
        ]
        return ",".join(against) if against else f"all {len(items)} yes"
    if all(isinstance(i, NodeOutcome) for i in items):
        counts: dict[str, int] = {}
        for outcome in items:
            counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
        return ",".join(f"{k}:{n}" for k, n in counts.items())
    if all(isinstance(i, list) for i in items):  # waves, batches: their sizes
        return "+".join(str(len(i)) for i in items)
    if all(isinstance(i, WaveReport) for i in items):  # the wave sizes and their states
        return "+".join(f"{len(w.nodes)}:{w.state}" for w in items)
    shown = [_brief(i) for i in items]
    if len(shown) <= 4:
        return ",".join(shown)
    return f"{','.join(shown[:3])},…({len(shown)})"


def _rule_outcome(r: RuleResult) -> str:
    if r.ok is None or r.value is None:
        return "no-data"
    return f"{r.value:.4g}({'ok' if r.ok else 'bad'})"


def _brief(item: Any) -> str:
    """An item of a list, in a word: a Struct by its first field (never its repr)."""
    if isinstance(item, msgspec.Struct):
        fields = msgspec.structs.fields(item)
        return str(getattr(item, fields[0].name)) if fields else type(item).__name__
    return str(item)


def _json_line(item: StreamedEvent) -> str:
    head: dict[str, Any] = {"seq": item.seq, "subject": item.subject}
    try:
        stored = msgspec.json.decode(item.raw)
    except (msgspec.DecodeError, RecursionError):
        stored = None
    if isinstance(stored, dict):
        head.update(stored)
    else:
        head["raw"] = item.raw.decode("utf-8", errors="replace")
    return json.dumps(head, ensure_ascii=False)
