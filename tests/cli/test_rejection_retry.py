"""A recorded rejection answers a retry only while the policy that rejected it is unchanged:
a CI job told "set the format first" that does so, then retries with the same ``--id`` (or
none), gets its change judged afresh — within the stream's duplicate window, which would
otherwise swallow the retry."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from confbus.client import ChangeRejected
from confbus.schemas.changes import ChangeProposed
from confbus.schemas.events import VersionCreated, VersionRejected
from tests.version_store.test_service_helpers import Stack, cli, events_of, stack

pytestmark = pytest.mark.anyio
__all__ = ["stack"]

YAML = b"pool: 16\n"


def yaml_file(tmp_path: Path) -> str:
    path = tmp_path / "payments.yaml"
    path.write_bytes(YAML)
    return str(path)


@pytest.mark.parametrize("change_id", [["--id", "3f2c9e1"], []], ids=["--id", "automatic id"])
async def test_a_retry_after_the_policy_changed_is_judged_afresh(
    stack: Stack, tmp_path: Path, change_id: list[str]
) -> None:
    ns = "retry-id" if change_id else "retry-auto"
    config = yaml_file(tmp_path)
    refused = await cli(stack.url, "publish", ns, config, *change_id)
    assert refused.code == 1, refused.err
    assert f"set the format first: confbus policy {ns} --format yaml" in refused.err
    # The same retry under the same policy: answered from the record, the same reason.
    again = await cli(stack.url, "publish", ns, config, *change_id)
    assert again.code == 1 and again.err == refused.err

    assert (await cli(stack.url, "policy", ns, "--format", "yaml")).code == 0
    retried = await cli(stack.url, "publish", ns, config, *change_id)
    sha = hashlib.sha256(YAML).hexdigest()
    assert retried.code == 0, retried.err
    assert retried.text == f"{ns} v1 sha256={sha} (approved)\n"
    # And a retry of that: the same version, nothing new.
    assert (await cli(stack.url, "publish", ns, config, *change_id)).text == retried.text

    async with stack.client() as client:
        events = await events_of(client, ns)
    outcomes = [type(e) for e in events if isinstance(e, VersionCreated | VersionRejected)]
    assert outcomes == [VersionRejected, VersionCreated]


async def test_a_proposal_through_the_store_is_judged_afresh_too(
    stack: Stack, tmp_path: Path
) -> None:
    """With authentication the CLI proposes through the version-store (``propose_as``): the
    store sends a change refused under an older policy again itself."""
    ns = "retry-proposed"
    change = ChangeProposed(namespace=ns, change_id="ci-42", content=YAML, format="yaml")
    async with stack.client() as client:
        with pytest.raises(ChangeRejected, match="set the format first"):
            await client.propose_as("ci", change, timeout=20)
        assert (await cli(stack.url, "policy", ns, "--format", "yaml")).code == 0
        info = await client.propose_as("ci", change, timeout=20)
        assert (info.version, info.author, info.status) == (1, "ci", "approved")
