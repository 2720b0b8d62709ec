"""Overlays in signed and sealed namespaces (docs/design.md §2.6): a signature and an envelope
each cover one content, and an agent receives only its own variant, so both refuse overlays —
the store and the publisher at publish, with the reason, and every agent in its prepare, for a
store or coordinator that is not to be trusted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from confbus.agent.state import Refused
from confbus.agent.trust import Trust
from confbus.client import ChangeRejected, Overlay, with_overlays
from confbus.runtime.errors import InvalidInput, NotFound
from confbus.runtime.sealing import new_data_key, seal
from confbus.schemas.policy import Policy
from confbus.schemas.signing import TrustRoots
from confbus.schemas.txn import Prepare, PreparedVariant
from confbus.schemas.variants import variant_set, variants_for
from tests.trust.support import make_kek, make_keys, rule
from tests.version_store.test_service_helpers import Stack, stack

pytestmark = pytest.mark.anyio
__all__ = ["stack"]

BASE = json.dumps({"workers": 4}).encode()
EU = Overlay(selector={"dc": "eu1"}, content='{"workers": 8}')


async def test_a_signed_namespace_refuses_overlays_at_publish(stack: Stack, tmp_path: Path) -> None:
    ns = "signed-var"
    keys = make_keys(tmp_path / "keys", "alice")
    async with stack.client() as client:
        await client.set_policy(Policy(namespace=ns, signing=rule(keys, ("alice",), 1)))
        with pytest.raises(ChangeRejected) as refused:
            await client.publish(
                ns, BASE, overlays=[EU], change_id="c1", signing_keys=[keys["alice"]]
            )
        assert "requires signed changes" in refused.value.reason
        assert "overlays cannot be signed" in refused.value.reason
        assert refused.value.where == "variants"
        with pytest.raises(NotFound):
            await client.get(ns, "latest")  # nothing stored
        # The same base without overlays, signed, is taken.
        info = await client.publish(ns, BASE, change_id="c2", signing_keys=[keys["alice"]])
        assert info.version == 1


async def test_a_secret_namespace_refuses_overlays_at_publish(stack: Stack, tmp_path: Path) -> None:
    ns = "secret-var"
    async with stack.client() as client:
        await client.set_policy(Policy(namespace=ns, secret=True))
        with pytest.raises(ChangeRejected) as refused:
            await client.publish(ns, BASE, overlays=[EU], change_id="c1")
        assert "is secret; overlays are not sealed" in refused.value.reason
        # Sealed (a data key): the publisher refuses before anything leaves it, naming why.
        _, kek = make_kek(tmp_path / "kek")
        sealed = "sealed-var"
        await client.set_policy(
            Policy(namespace=sealed, secret=True, data_keys=[new_data_key(kek)])
        )
        with pytest.raises(InvalidInput) as local:
            await client.publish(sealed, BASE, overlays=[EU], change_id="c1", keks={kek.id: kek})
        assert "overlays cannot be sealed" in str(local.value)
        for name in (ns, sealed):
            with pytest.raises(NotFound):
                await client.get(name, "latest")


def _variant_prepare(ns: str) -> Prepare:
    blob = with_overlays(BASE, "json", [EU])
    rendered = variants_for(variant_set(blob, "json"), [{"dc": "eu1"}])
    return Prepare(
        txid="e1-00000000000000aa",
        namespace=ns,
        version=1,
        sha256="0" * 64,
        format="json",
        content=b"",
        participants=["n1"],
        epoch=1,
        timeout_s=5.0,
        variants=[
            PreparedVariant(name=n, sha256=v.sha256, content=v.content, nodes=["n1"])
            for n, v in rendered.items()
        ],
    )


def test_an_agent_refuses_variants_where_its_roots_require_signatures(tmp_path: Path) -> None:
    """A store or coordinator that is not trusted could put any bytes in a variant entry under
    a signed version's sha256: the signatures cover the version, not the entry."""
    keys = make_keys(tmp_path / "keys", "alice")
    signed = Trust(TrustRoots(namespaces={"app": rule(keys, ("alice",), 1)}))
    with pytest.raises(Refused) as no:
        signed.admit(_variant_prepare("app"))
    assert no.value.kind == "untrusted"
    assert "no signature covers" in no.value.reason
    # Unsigned (threshold 0, or no roots file): variants are staged as usual.
    unsigned = Trust(TrustRoots(namespaces={"app": rule(keys, ("alice",), 0)}))
    p = _variant_prepare("app")
    assert unsigned.admit(p) is p
    assert Trust().admit(p) is p


def test_an_agent_refuses_a_sealed_envelope_of_overlays(tmp_path: Path) -> None:
    _, kek = make_kek(tmp_path / "kek")
    blob = with_overlays(BASE, "json", [EU])
    envelope = seal(blob, "json", new_data_key(kek), {kek.id: kek})
    trust = Trust(None, {kek.id: kek})
    sha = hashlib.sha256(blob).hexdigest()  # a sealed version's sha256 is its plaintext's
    with pytest.raises(Refused) as no:
        trust.admit_bytes("vault", 1, sha, "json", [], envelope)
    assert "holds overlays" in no.value.reason
