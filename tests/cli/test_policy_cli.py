"""``confbus policy``: the whole policy from a file, the common fields by flags, a dry run,
every change announced as ``policy.changed`` with who and what; ``publish --selector``; a
restore that replaces a policy says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from confbus.schemas.events import PolicyChanged, VersionCreated
from tests.version_store.test_service_helpers import Stack, cli, events_of, stack

pytestmark = pytest.mark.anyio
__all__ = ["stack"]

POLICY_YAML = """\
strategy: linear:25%
bake_s: 30
vote_timeout_s: 8
max_excluded: 0.2
selector: {dc: eu1}
health_rules:
  - {name: errors, metric: error_rate, op: ">", threshold: 0.05, window_s: 60}
  - {name: slow, metric: latency_p99_ms, threshold: 250}
rollback: {strategy: "batches:2", healthy_threshold: 0.9}
webhooks: ["https://hooks.example.com/services/T000/SECRET-TOKEN"]
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def stored(stack: Stack, ns: str) -> dict[str, object]:
    res = await cli(stack.url, "policy", ns, "--json")
    assert res.code == 0, res.err
    policy: dict[str, object] = json.loads(res.out)
    return policy


async def test_the_whole_policy_from_a_file_diffed_and_announced(
    stack: Stack, tmp_path: Path
) -> None:
    ns = "pol-file"
    path = write(tmp_path, "policy.yaml", POLICY_YAML)
    dry = await cli(stack.url, "policy", ns, "--file", path, "--dry-run", "--as", "alice")
    assert dry.code == 0, dry.err
    assert "bake_s: 0.0 → 30.0" in dry.text and 'strategy: "all-at-once" → "linear:25%"' in dry.text
    assert "nothing was stored" in dry.err
    assert (await stored(stack, ns))["bake_s"] == 0.0

    res = await cli(stack.url, "policy", ns, "--file", path, "--as", "alice")
    assert res.code == 0, res.err
    assert "bake_s: 0.0 → 30.0" in res.err and "changed by alice" in res.err
    policy = await stored(stack, ns)
    assert (policy["bake_s"], policy["vote_timeout_s"], policy["selector"]) == (
        30.0, 8.0, {"dc": "eu1"},
    )  # fmt: skip
    rules = policy["health_rules"]
    assert isinstance(rules, list) and [r["name"] for r in rules] == ["errors", "slow"]
    assert policy["rollback"] == {**policy["rollback"], "strategy": "batches:2"}  # type: ignore[dict-item]
    # What the file left out is the default: the file is the whole policy, not a patch.
    smaller = write(tmp_path, "smaller.yaml", "bake_s: 5\n")
    assert (await cli(stack.url, "policy", ns, "--file", smaller, "--as", "bob")).code == 0
    policy = await stored(stack, ns)
    assert (policy["bake_s"], policy["health_rules"], policy["strategy"]) == (
        5.0, [], "all-at-once",
    )  # fmt: skip
    # The same again changes nothing, and says so.
    again = await cli(stack.url, "policy", ns, "--file", smaller, "--as", "bob")
    assert again.code == 0 and "unchanged" in again.err

    async with stack.client() as client:
        changed = [e for e in await events_of(client, ns) if isinstance(e, PolicyChanged)]
    assert [e.actor for e in changed] == ["alice", "bob"]
    fields = {c.field for c in changed[0].changes}
    assert {"bake_s", "strategy", "health_rules", "rollback.strategy", "webhooks"} <= fields
    webhooks = next(c for c in changed[0].changes if c.field == "webhooks")
    # A webhook URL's path is its secret: the audit log shows its host only.
    assert "SECRET-TOKEN" not in webhooks.after and "hooks.example.com" in webhooks.after
    replay = await cli(stack.url, "replay", ns)
    assert "policy.changed" in replay.text and "by bob" in replay.text
    assert "SECRET-TOKEN" not in replay.text


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("bake: 30\n", "$", "unknown field(s) bake"),
        ("bake_s: soon\n", "$.bake_s", "is not of type 'number'"),
        ("rollback: {strategy: 2}\n", "$.rollback.strategy", "is not of type 'string'"),
        ("health_rules: [{name: x}]\n", "$.health_rules[0]", "'metric' is a required property"),
        ("namespace: elsewhere\n", "$.namespace", "not 'pol-bad'"),
        ("- just\n- a list\n", "$", "a policy is a mapping"),
        ("strategy: sometimes\n", "strategy", "unknown rollout strategy"),
    ],
)
async def test_a_wrong_policy_file_says_where_and_stores_nothing(
    stack: Stack, tmp_path: Path, text: str, where: str, reason: str
) -> None:
    ns = "pol-bad"
    res = await cli(stack.url, "policy", ns, "--file", write(tmp_path, "p.yaml", text))
    assert res.code == 1, res.err
    assert reason in res.err and where in res.err, res.err
    assert (await stored(stack, ns))["bake_s"] == 0.0


async def test_the_common_fields_by_flags(stack: Stack, tmp_path: Path) -> None:
    ns = "pol-flags"
    res = await cli(
        stack.url, "policy", ns, "--bake", "30", "--vote-timeout", "7", "--max-excluded", "20%",
        "--selector", "dc=eu1", "--selector", "tier=web", "--rollback-strategy", "batches:3",
        "--no-automatic-rollback", "--webhook", "https://hooks.example.com/x",
        "--on-missing-data", "fail",
    )  # fmt: skip
    assert res.code == 0, res.err
    policy = await stored(stack, ns)
    assert policy["bake_s"] == 30.0 and policy["vote_timeout_s"] == 7.0
    assert policy["max_excluded"] == 0.2 and policy["on_missing_data"] == "fail"
    assert policy["selector"] == {"dc": "eu1", "tier": "web"}
    assert policy["webhooks"] == ["https://hooks.example.com/x"]
    assert policy["rollback"]["strategy"] == "batches:3"  # type: ignore[index]
    assert policy["rollback"]["automatic"] is False  # type: ignore[index]
    # Flags on top of a file; one field at a time keeps the others.
    file = write(tmp_path, "p.yaml", "bake_s: 1\nstrategy: canary:1\n")
    assert (await cli(stack.url, "policy", ns, "--file", file, "--bake", "2")).code == 0
    policy = await stored(stack, ns)
    assert (policy["bake_s"], policy["strategy"], policy["selector"]) == (2.0, "canary:1", {})
    assert (await cli(stack.url, "policy", ns, "--no-selector", "--bake", "0")).code == 0
    for bad in (["--max-excluded", "120%"], ["--selector", "dc"], ["--bake", "-1"]):
        res = await cli(stack.url, "policy", ns, *bad)
        assert res.code == 2, (bad, res.err)


async def test_publish_with_a_selector(stack: Stack, tmp_path: Path) -> None:
    ns = "pol-selector"
    config = write(tmp_path, "c.json", '{"pool": 1}')
    res = await cli(stack.url, "publish", ns, config, "--selector", "dc=eu1")
    assert res.code == 0, res.err
    async with stack.client() as client:
        created = [e for e in await events_of(client, ns) if isinstance(e, VersionCreated)]
    assert [e.selector for e in created] == [{"dc": "eu1"}]


async def test_a_restore_that_replaces_the_policy_says_so(stack: Stack, tmp_path: Path) -> None:
    ns = "pol-restore"
    assert (await cli(stack.url, "policy", ns, "--bake", "3")).code == 0
    backup = str(tmp_path / "pol.backup")
    assert (await cli(stack.url, "backup", ns, "--out", backup)).code == 0
    assert (await cli(stack.url, "policy", ns, "--bake", "9")).code == 0
    res = await cli(stack.url, "restore", backup)
    assert res.code == 0 and res.text == f"{ns}: policy replaced\n", (res.text, res.err)
    assert (await stored(stack, ns))["bake_s"] == 3.0
    res = await cli(stack.url, "restore", backup)
    assert res.text == f"{ns}: already there, unchanged\n"
    async with stack.client() as client:
        changed = [e for e in await events_of(client, ns) if isinstance(e, PolicyChanged)]
    assert (
        changed[-1].reason == "restored from a backup" and changed[-1].changes[0].field == "bake_s"
    )
