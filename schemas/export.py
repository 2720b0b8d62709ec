"""The JSON Schema snapshot of the wire contract, for tools and teams that do not read Python.

``python -m confbus.schemas.export`` rewrites ``schemas/jsonschema/``: one file per stream's message
union and per KV record, and one per micro-API module (every request and reply) — and the
AsyncAPI document ``schemas/asyncapi.json`` (``confbus.schemas.asyncapi``). A test fails when
the files on disk differ from what the Structs say, so the snapshots cannot go stale.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from confbus.schemas import (
    asyncapi,
    changes,
    dlq,
    events,
    fleet,
    health,
    node,
    policy,
    state,
    txn,
    versions,
)
from confbus.schemas.api import dist as dist_api
from confbus.schemas.api import health as health_api
from confbus.schemas.api import rollback as rollback_api
from confbus.schemas.api import store as store_api
from confbus.schemas.api import txn as txn_api

OUT = Path(__file__).parent / "jsonschema"

# One document per stream (its tagged union) and per stored record.
MESSAGES: Mapping[str, Any] = {
    "CFG_CHANGES": changes.ChangeMessage,
    "CFG_TXN": txn.TxnStreamMessage,
    "CFG_EVENTS": events.AnyEvent,
    "CFG_HEALTH": health.HealthSample,
    "CFG_ALERTS": health.Alert,
    "CFG_DLQ": dlq.DeadLetter,
    "txn.vote": txn.Vote | txn.VoteAck,
    "node.heartbeat": node.Heartbeat,
    "CFG_TXN_HEAD": txn.TxnHead,
    "version": versions.VersionInfo,
    "policy": policy.Policy,
    "CFG_CHECKPOINTS": fleet.FleetState,
    # CFG_STATE, one document per key family (the keys are in confbus.schemas.state)
    "CFG_STATE.lease": state.LeaseRecord,
    "CFG_STATE.rollout": dist_api.RolloutInfo,
    "CFG_STATE.target": state.TargetRecord,
    "CFG_STATE.node": state.NodeRecord,
    "CFG_STATE.health.alerts": state.AlertBook,
    "CFG_STATE.rollback": state.Ledger,
    "CFG_STATE.coord.alive": state.Alive,
}

API_MODULES = {
    "api.store": store_api,
    "api.txn": txn_api,
    "api.dist": dist_api,
    "api.health": health_api,
    "api.rollback": rollback_api,
}


def _api_types(module: Any) -> list[type[msgspec.Struct]]:
    # Every Struct the module defines itself, in name order: requests, replies and their parts.
    found = [
        obj
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and issubclass(obj, msgspec.Struct)
        and obj.__module__ == module.__name__
        and not name.startswith("_")
    ]
    return sorted(found, key=lambda t: t.__name__)


def documents() -> dict[str, str]:
    """File name → the exact text the snapshot must hold."""
    docs: dict[str, Any] = {name: msgspec.json.schema(tp) for name, tp in MESSAGES.items()}
    for name, module in API_MODULES.items():
        types = _api_types(module)
        refs, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
        docs[name] = {"$defs": components, "anyOf": list(refs)}
    return {
        f"{name}.json": json.dumps(doc, indent=2, sort_keys=True) + "\n"
        for name, doc in sorted(docs.items())
    }


def write(out: Path = OUT) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    want = documents()
    for stale in out.glob("*.json"):
        if stale.name not in want:
            stale.unlink()
    for name, text in want.items():
        (out / name).write_text(text)
    return sorted(want)


if __name__ == "__main__":
    names = write()
    sys.stderr.write(f"wrote {len(names)} schemas to {OUT}\n")
    sys.stderr.write(f"wrote {asyncapi.write()}\n")
