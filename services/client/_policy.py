"""A whole policy from a document — a YAML or JSON file (``confbus policy NS --file``), the
console's ``PUT …/policy`` body — checked the same way for every caller.

The check is the policy's JSON Schema as ``schemas/jsonschema/policy.json`` publishes it (made
from the ``Policy`` Struct, kept current by a test), with one addition: a field the Struct does
not have is refused, not ignored — ``bake: 30`` for ``bake_s`` would otherwise be a silent
no-op. The version-store then checks what a schema cannot say (strategies, shares, the JSON
Schema inside the policy) before it stores anything.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema
import msgspec

from confbus.runtime.errors import InvalidInput
from confbus.schemas.policy import Policy


def policy_from_document(document: object, namespace: str) -> Policy:
    """The policy ``document`` says for ``namespace``; ``InvalidInput`` (with the path of the
    field, e.g. ``$.rollback.strategy``) when it is not one. Fields it leaves out take their
    defaults: the document is the whole policy, not a patch. ``namespace`` may be left out;
    if given it must be ``namespace``."""
    if not isinstance(document, dict):
        raise InvalidInput("a policy is a mapping of its fields to their values", where="$")
    doc = dict(document)
    if doc.setdefault("namespace", namespace) != namespace:
        raise InvalidInput(
            f"the policy is for namespace {doc['namespace']!r}, not {namespace!r}",
            where="$.namespace",
        )
    error = jsonschema.exceptions.best_match(_validator().iter_errors(doc))
    if error is not None:
        raise InvalidInput(_message(error), where=_path(error.absolute_path))
    try:
        return msgspec.convert(doc, Policy)
    except msgspec.ValidationError as exc:  # a constraint the schema did not carry
        raise InvalidInput(str(exc), where="$") from None


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    text = (resources.files("confbus.schemas") / "jsonschema" / "policy.json").read_text()
    schema = json.loads(text)
    for definition in schema.get("$defs", {}).values():
        if "properties" in definition:  # a Struct (a mapping type has no "properties")
            definition.setdefault("additionalProperties", False)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def _message(error: jsonschema.ValidationError) -> str:
    schema, instance = error.schema, error.instance
    if error.validator == "additionalProperties" and isinstance(schema, dict):
        known = sorted(schema.get("properties", {}))
        unknown = sorted(set(instance if isinstance(instance, dict) else ()) - set(known))
        return f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(known)}"
    return error.message


def _path(parts: Any) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
