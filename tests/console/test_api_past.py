"""The console's HTTP API over the past (``confbus status --at``, ``why``, ``diff-fleet``) against
a real stack with a real agent, bad input included (a bad moment, an unknown node or namespace:
each a 4xx with the reason); and a rollout page's refresh, which reads only the events that are
new since the last one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.console.stack import ConsoleStack, problem, stack_fixture, wait_event

NS = "past"
V1 = b'{"pool": 1}\n'
V2 = b'{"pool": 2}\n'


@dataclass(frozen=True)
class History:
    before_v2: int  # the last sequence before v2 was created: p1 held v1
    v2_created: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    yield from stack_fixture(tmp_path_factory.mktemp("console-past"))


@pytest.fixture(scope="module")
def history(stack: ConsoleStack, viewer: httpx.Client) -> History:
    """Node p1 of ``past`` on v1, then on v2 (each publish waited for)."""
    stack.start_agent("p1", NS)
    for n, content in ((1, V1), (2, V2)):
        path = stack.root / f"v{n}.json"
        path.write_bytes(content)
        stack.confbus("publish", NS, str(path), "--id", f"past-{n}", "--wait", "--timeout", "60")
    assert stack.agents["p1"].read() == V2
    created = viewer.get("api/v1/events", params={"filter": f"{NS}.version.created"}).json()
    seq = {e["event"]["version"]: e["seq"] for e in created["events"]}
    return History(before_v2=seq[2] - 1, v2_created=seq[2])


def nodes_at(viewer: httpx.Client, at: str | int) -> dict[str, dict[str, Any]]:
    r = viewer.get(f"api/v1/namespaces/{NS}/fleet/at", params={"at": at})
    assert r.status_code == 200, r.text
    return {n["node"]: n for n in r.json()["nodes"]}


def test_the_fleet_at_a_past_moment(viewer: httpx.Client, history: History) -> None:
    then = nodes_at(viewer, history.before_v2)["p1"]
    assert then["applied"] == "known" and then["version"] == 1, then
    now = nodes_at(viewer, "0s")["p1"]
    assert now["version"] == 2 and now["applied_seq"] > history.v2_created, now
    r = viewer.get(f"api/v1/namespaces/{NS}/fleet/at", params={"at": history.before_v2})
    assert r.json()["seq"] == history.before_v2 and r.json()["production"] == 1


@pytest.mark.parametrize(
    ("params", "status", "where", "words"),
    [
        ({"at": "yesterday"}, 400, "at", "expected a duration"),
        ({"at": "-3"}, 400, "at", "stream sequence"),
        ({}, 400, "$.at", "missing required field `at`"),
        ({"at": ""}, 400, "$.at", "length >= 1"),
    ],
)
def test_a_bad_moment_is_400_with_the_reason(
    viewer: httpx.Client,
    history: History,
    params: dict[str, str],
    status: int,
    where: str,
    words: str,
) -> None:
    r = viewer.get(f"api/v1/namespaces/{NS}/fleet/at", params=params)
    assert words in problem(r, status, where)["reason"]


def test_the_past_of_an_unknown_namespace_is_404(viewer: httpx.Client) -> None:
    for path in ("fleet/at?at=1", "nodes/p1/why", "fleet/diff?from=1"):
        r = viewer.get(f"api/v1/namespaces/nosuch/{path}")
        assert "nosuch" in problem(r, 404, "namespace")["reason"], path


def test_why_names_the_chain_of_the_version_then_and_now(
    viewer: httpx.Client, history: History
) -> None:
    for at, version, cid in ((None, 2, "past-2"), (history.before_v2, 1, "past-1")):
        params = {"at": at} if at else {}
        r = viewer.get(f"api/v1/namespaces/{NS}/nodes/p1/why", params=params)
        answer = r.json()
        assert r.status_code == 200, r.text
        kinds = [s["kind"] for s in answer["steps"]]
        assert kinds == ["apply", "transaction", "wave", "rollout", "version"], answer
        assert f"p1 applied v{version}" in answer["steps"][0]["summary"]
        assert f"v{version} created" in answer["steps"][-1]["summary"]
        assert f"change {cid}" in answer["steps"][-1]["summary"]
        assert all(s["seq"] for s in answer["steps"])  # each cites its event
        if at:
            assert answer["seq"] == at and answer["steps"][0]["seq"] <= at


def test_why_of_an_unknown_or_malformed_node_or_at_a_bad_moment_is_4xx(
    viewer: httpx.Client, history: History
) -> None:
    r = viewer.get(f"api/v1/namespaces/{NS}/nodes/ghost/why")
    assert "no event of past names node 'ghost'" in problem(r, 404, "node")["reason"]
    r = viewer.get(f"api/v1/namespaces/{NS}/nodes/Not_A.Node/why")
    assert "node id" in problem(r, 400, "node")["reason"]
    r = viewer.get(f"api/v1/namespaces/{NS}/nodes/p1/why", params={"at": "noon"})
    problem(r, 400, "at")


def test_diff_fleet_between_two_moments(viewer: httpx.Client, history: History) -> None:
    r = viewer.get(f"api/v1/namespaces/{NS}/fleet/diff", params={"from": history.before_v2})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert [(c["node"], c["from_version"], c["to_version"]) for c in answer["changed"]] == [
        ("p1", 1, 2)
    ]
    assert [r["version"] for r in answer["rollouts"]] == [2]
    same = viewer.get(
        f"api/v1/namespaces/{NS}/fleet/diff",
        params={"from": history.before_v2, "to": history.before_v2},
    ).json()
    assert same["changed"] == [] and same["unchanged"] == 1
    r = viewer.get(
        f"api/v1/namespaces/{NS}/fleet/diff",
        params={"from": history.v2_created, "to": history.before_v2},
    )
    assert "before --from" in problem(r, 400, "to")["reason"]
    problem(viewer.get(f"api/v1/namespaces/{NS}/fleet/diff", params={"from": "x"}), 400, "from")
    problem(viewer.get(f"api/v1/namespaces/{NS}/fleet/diff"), 400, "$.from")


def events_read(stack: ConsoleStack) -> float:
    with stack.http() as anon:
        text = anon.get("metrics").text
    found = re.search(r"^confbus_console_rollout_events_read_total (\S+)$", text, re.M)
    assert found, "no confbus_console_rollout_events_read_total"
    return float(found.group(1))


def test_a_rollout_refresh_reads_only_the_events_that_are_new(
    stack: ConsoleStack, viewer: httpx.Client, history: History
) -> None:
    path = f"api/v1/namespaces/{NS}/rollout/nodes"
    first = viewer.get(path).json()
    assert first["applied"] == ["p1"] and first["votes"]["p1"]["vote"] == "yes", first
    read = events_read(stack)
    again = viewer.get(path).json()
    assert (again["votes"], again["applied"]) == (first["votes"], first["applied"])
    assert events_read(stack) == read  # nothing new of the namespace: nothing read
    # A second node joins and is caught up to the rollout's version: new events of the
    # namespace, in the same (last) rollout.
    stack.start_agent("p2", NS)
    token = stack.token("viewer", "vera")
    wait_event(stack, token, f"{NS}.node.applied.p2", lambda e: e["event"]["version"] == 2)
    later = viewer.get(path).json()
    assert later["applied"] == ["p1", "p2"] and later["seq"] > first["seq"], later
    new = viewer.get(
        "api/v1/events", params={"filter": NS, "from_seq": first["seq"] + 1, "limit": 1000}
    ).json()["events"]
    assert new, "the catch-up of p2 wrote no event"
    expected = len([e for e in new if e["seq"] <= later["seq"]])
    assert events_read(stack) - read == expected  # exactly the new ones, not the rollout's
