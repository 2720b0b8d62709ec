"""Variants at the version-store: what every node will run is validated at publish, and a
rejection names the variant (a real nats-server and the service as a subprocess)."""

from __future__ import annotations

import json

import pytest

from confbus.client import ChangeRejected, Overlay, with_overlays
from confbus.runtime.errors import NotFound
from confbus.runtime.kv import StateKV
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.node import NamespaceState
from confbus.schemas.policy import Policy
from confbus.schemas.state import NodeRecord, node_key
from confbus.schemas.streams import CFG_STATE
from confbus.schemas.variants import variant_set, variants_for
from tests.version_store.test_service_helpers import Stack, stack

pytestmark = pytest.mark.anyio
__all__ = ["stack"]

# No node may run with both a cache and a replica (each overlay alone is fine).
SCHEMA = {
    "type": "object",
    "properties": {"workers": {"type": "integer", "maximum": 8}},
    "not": {"required": ["cache", "replica"]},
}
BASE = json.dumps({"workers": 4}).encode()
EU = Overlay(selector={"dc": "eu1"}, content='{"cache": true}')
WEB = Overlay(selector={"tier": "web"}, content='{"replica": "r1"}')


async def _members(stack: Stack, ns: str, labels: dict[str, dict[str, str]]) -> None:
    """Node records as the distributor writes them from heartbeats."""
    async with stack.client() as client:
        kv = await StateKV.open(client.bus, CFG_STATE)
        for node, lab in labels.items():
            rec = NodeRecord(
                node=node, labels=lab, namespaces=[NamespaceState(namespace=ns, status="ok")]
            )
            await kv.put(node_key(node), rec)


async def test_an_overlay_that_breaks_the_schema_is_rejected_naming_the_variant(
    stack: Stack,
) -> None:
    ns = "var-schema"
    async with stack.client() as client:
        await client.set_policy(Policy(namespace=ns, json_schema=SCHEMA))
        big = Overlay(selector={"tier": "batch"}, content='{"workers": 64}')
        with pytest.raises(ChangeRejected) as exc:
            await client.publish(ns, BASE, overlays=[EU, big], change_id="c1")
        assert "variant tier=batch (the base with this overlay alone)" in exc.value.reason
        assert "64" in exc.value.reason and exc.value.where == "$.workers"
        with pytest.raises(NotFound):
            await client.get(ns, "latest")  # nothing stored


async def test_a_variant_only_current_members_produce_is_validated_and_named(
    stack: Stack,
) -> None:
    ns = "var-members"
    async with stack.client() as client:
        await client.set_policy(Policy(namespace=ns, json_schema=SCHEMA))
        # Nobody is in eu1 and web at once: every variant anyone runs is valid.
        await _members(stack, ns, {"n1": {"dc": "eu1", "tier": "db"}, "n2": {"tier": "web"}})
        v1 = await client.publish(ns, BASE, overlays=[EU, WEB], change_id="ok")
        got = await client.get(ns, v1.version)
        assert got.content is not None
        stored = variant_set(got.content, "json")
        assert stored.overlays == [EU, WEB] and stored.base == BASE.decode()
        # Now one member would run both overlays: that variant breaks the schema.
        await _members(stack, ns, {"n3": {"dc": "eu1", "tier": "web"}})
        with pytest.raises(ChangeRejected) as exc:
            await client.publish(ns, BASE, overlays=[EU, WEB], change_id="again")
        assert "variant dc=eu1+tier=web (nodes n3)" in exc.value.reason


async def test_dry_run_shows_every_variant_with_its_nodes_and_diff(stack: Stack) -> None:
    ns = "var-dry"
    async with stack.client() as client:
        await client.set_policy(Policy(namespace=ns))
        await client.publish(ns, BASE, change_id="first")
        await _members(stack, ns, {"d1": {"dc": "eu1"}, "d2": {"dc": "us1"}})
        content = with_overlays(BASE, "json", [EU, WEB])
        reply = await client.dry_run(ChangeProposed(namespace=ns, change_id="dry", content=content))
        assert reply.ok, reply.reason
        by_name = {v.name: v for v in reply.variants}
        assert by_name["dc=eu1"].nodes == ["d1"] and '+  "cache": true' in by_name["dc=eu1"].diff
        assert by_name["base"].nodes == ["d2"] and by_name["base"].diff == ""
        assert by_name["tier=web"].nodes == []  # an overlay alone, which no member runs now
        want = variants_for(variant_set(content, "json"), [{"dc": "eu1"}])
        assert by_name["dc=eu1"].sha256 == want["dc=eu1"].sha256
