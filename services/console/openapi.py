"""The OpenAPI 3.1 document of the HTTP API, generated from ``api.OPS`` and the msgspec types
they name — the same types that decode the requests — so the document cannot drift from what
the console accepts. ``docs/openapi.json`` is its snapshot (a test compares them);
``python -m confbus.console.openapi > docs/openapi.json`` rewrites it.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import msgspec

from confbus.console import apitypes as t
from confbus.console.api import OPS, PREFIX, Op
from confbus.console.auth import COOKIE
from confbus.schemas.api.store import VersionRef
from confbus.schemas.names import Namespace, NodeId, VersionNumber

REF = "#/components/schemas/{name}"
PATH_PARAMS: dict[str, tuple[Any, str]] = {
    "ns": (Namespace, "the namespace"),
    "ref": (VersionRef, "a version number, production, last-good or latest"),
    "version": (VersionNumber, "a version number"),
    "node": (NodeId, "a node id"),
}
_PARAM_RE = re.compile(r"{(\w+)}")


def document() -> dict[str, Any]:
    kinds = {t.Problem}
    for op in OPS:
        kinds.update(k for k in (op.reply, op.body, op.query) if k not in (None, bytes))
    ordered = sorted(kinds, key=lambda k: getattr(k, "__name__", str(k)))
    schemas, components = msgspec.json.schema_components(ordered, ref_template=REF)
    by_kind = dict(zip(ordered, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPS:
        paths.setdefault(PREFIX + op.path, {})[op.method.lower()] = _operation(
            op, by_kind, components
        )
    for op in OPS:  # query types are parameters, not bodies: no component of their own
        if op.query is not None:
            components.pop(op.query.__name__, None)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "confbus console API",
            "version": "1",
            "description": "Everything the confbus CLI does, over HTTP: namespaces, versions, "
            "publish, approvals, policies, rollouts, rollbacks, the fleet and the audit log. "
            "Every error is a Problem.",
        },
        "servers": [{"url": "/"}],
        "security": [{"token": []}, {"session": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from confbus console token --role ROLE",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": COOKIE,
                    "description": "a browser session (acts also need X-CSRF-Token)",
                },
            },
        },
    }


def _operation(op: Op, by_kind: dict[Any, Any], components: dict[str, Any]) -> dict[str, Any]:
    params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": PATH_PARAMS[name][1],
            "schema": msgspec.json.schema(PATH_PARAMS[name][0]),
        }
        for name in _PARAM_RE.findall(op.path)
    ]
    if op.query is not None:
        spec = components[op.query.__name__]
        required = set(spec.get("required", []))
        params += [
            {"name": name, "in": "query", "required": name in required, "schema": schema}
            for name, schema in spec["properties"].items()
        ]
    if op.media_type == "application/octet-stream":
        reply_content = {
            op.media_type: {"schema": {"type": "string", "contentMediaType": op.media_type}}
        }
    else:
        reply_content = {op.media_type: {"schema": by_kind[op.reply]}}
    out: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.summary,
        "description": f"Needs the {op.role} role.",
        "x-confbus-role": op.role,
        "responses": {
            str(op.status): {"description": "done", "content": reply_content},
            **{
                str(code): {
                    "description": _ERRORS[code],
                    "content": {"application/json": {"schema": by_kind[t.Problem]}},
                }
                for code in op.errors
            },
        },
    }
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": by_kind[op.body]}},
        }
    return out


_ERRORS = {
    400: "invalid input: malformed JSON, a bad name or value (where says which)",
    401: "no token, or an unknown, revoked or expired one",
    403: "the role does not allow it, a missing CSRF token, or a secret namespace's content",
    404: "no such namespace, version, rollout or node, or a moment the audit log no longer holds",
    409: "a conflict: someone got there first, or the state does not allow it",
    422: "the change was rejected: the reason and where",
    503: "confbus (the bus or a service) is unavailable: retry",
}


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
