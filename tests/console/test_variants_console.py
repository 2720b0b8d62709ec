"""Variants in the console and in time travel (docs/design.md §2.6, §7.5, §8.10), against a real
stack (``confbus up``) with three labelled agents writing real files: the HTTP API lists a
version's overlays with the nodes each matches, gives each node's own bytes and diffs (checked
against the files on disk), and names the variant each node runs now and ran at a past moment;
``confbus status --at`` shows it too; and in a real Chromium the version page shows the overlays
and, for a node picked in its form, that node's bytes, and the fleet page — now and in the past
— shows each node's variant."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from confbus.client import Client
from tests.console.stack import ConsoleStack, problem, stack_fixture
from tests.helpers import eventually

NS = "shop"
LABELS = {
    "eu-web": {"dc": "eu1", "tier": "web"},
    "eu-db": {"dc": "eu1", "tier": "db"},
    "us-web": {"dc": "us1", "tier": "web"},
}
# What each node runs: the base with each overlay its labels match, in order.
VARIANT = {"eu-web": "dc=eu1+tier=web", "eu-db": "dc=eu1", "us-web": "tier=web"}


@dataclass(frozen=True)
class Published:
    v1: dict[str, bytes]  # each node's file after v1
    v2: dict[str, bytes]
    before_v2: int  # the audit log's last sequence before v2 was created: every node on v1


def _write(stack: ConsoleStack, name: str, doc: object) -> str:
    path = stack.root / f"{name}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _publish(stack: ConsoleStack, n: int, pool: int, web_pool: int) -> None:
    base = _write(stack, f"v{n}-base", {"pool": pool, "db": "db.local"})
    eu1 = _write(stack, f"v{n}-eu1", {"db": "db.eu1"})
    web = _write(stack, f"v{n}-web", {"pool": web_pool})
    stack.confbus("publish", NS, base, "--overlay", f"dc=eu1={eu1}", "--overlay",
                  f"tier=web={web}", "--id", f"v{n}", "--wait", "--timeout", "60")  # fmt: skip


async def _members_labelled(stack: ConsoleStack) -> None:
    """Every agent's labels in its node record: what the coordinator renders from."""
    async with Client(stack.nats_url) as client:

        async def labelled() -> bool:
            return await client.members(NS) == LABELS

        await eventually(labelled, timeout=60, what="the agents' labels recorded")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    yield from stack_fixture(tmp_path_factory.mktemp("console-variants"))


@pytest.fixture(scope="module")
def published(stack: ConsoleStack, viewer: httpx.Client) -> Published:
    for node, labels in LABELS.items():
        stack.start_agent(
            node, NS, *(a for k, v in labels.items() for a in ("--label", f"{k}={v}"))
        )
    anyio.run(_members_labelled, stack)
    _publish(stack, 1, pool=1, web_pool=4)
    v1 = {n: stack.agents[n].read() or b"" for n in LABELS}
    _publish(stack, 2, pool=2, web_pool=8)
    v2 = {n: stack.agents[n].read() or b"" for n in LABELS}
    created = viewer.get("api/v1/events", params={"filter": f"{NS}.version.created"}).json()
    seq = {e["event"]["version"]: e["seq"] for e in created["events"]}
    return Published(v1=v1, v2=v2, before_v2=seq[2] - 1)


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_the_nodes_run_their_own_bytes(published: Published) -> None:
    """The ground truth the rest checks against: three different files, as rendered."""
    assert json.loads(published.v2["eu-web"]) == {"pool": 8, "db": "db.eu1"}
    assert json.loads(published.v2["eu-db"]) == {"pool": 2, "db": "db.eu1"}
    assert json.loads(published.v2["us-web"]) == {"pool": 8, "db": "db.local"}


def test_a_versions_overlays_and_variants_with_their_nodes(
    viewer: httpx.Client, published: Published
) -> None:
    r = viewer.get(f"api/v1/namespaces/{NS}/versions/2/variants")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 2
    assert body["overlays"] == [
        {"order": 1, "selector": {"dc": "eu1"}, "name": "dc=eu1", "nodes": ["eu-db", "eu-web"]},
        {
            "order": 2,
            "selector": {"tier": "web"},
            "name": "tier=web",
            "nodes": ["eu-web", "us-web"],
        },
    ]
    variants = {v["name"]: v for v in body["variants"]}
    assert {name: v["nodes"] for name, v in variants.items()} == {
        name: [node] for node, name in VARIANT.items()
    }
    for node, name in VARIANT.items():  # each variant's sha256 is its node's file's
        assert variants[name]["sha256"] == _sha(published.v2[node]), name
        assert variants[name]["size"] == len(published.v2[node])


def test_a_nodes_own_bytes_and_diff(viewer: httpx.Client, published: Published) -> None:
    for node, name in VARIANT.items():
        r = viewer.get(f"api/v1/namespaces/{NS}/versions/2/content", params={"node": node})
        assert r.status_code == 200, r.text
        assert r.content == published.v2[node], node
        assert r.headers["x-confbus-variant"] == name
        assert r.headers["x-confbus-sha256"] == _sha(published.v2[node])
    # Any labels, not only a member's; and the version's own (stored) bytes without either.
    r = viewer.get(f"api/v1/namespaces/{NS}/versions/1/content", params={"for": "dc=us1,tier=web"})
    assert r.content == published.v1["us-web"]
    whole = viewer.get(f"api/v1/namespaces/{NS}/versions/2/content")
    assert whole.content.startswith(b"confbus-variants v1\n")
    d = viewer.get(f"api/v1/namespaces/{NS}/diff", params={"a": 1, "b": 2, "node": "eu-web"})
    assert d.status_code == 200, d.text
    text = d.json()["diff"]
    changed = [line for line in text.splitlines()[2:] if line.startswith(("-", "+"))]
    assert changed == ['-  "pool": 4,', '+  "pool": 8,'], text  # eu-web's bytes, not the base's
    # Bad input: each a 4xx naming the place.
    problem(viewer.get(f"api/v1/namespaces/{NS}/versions/2/content", params={"node": "nope"}),
            404, "node")  # fmt: skip
    problem(viewer.get(f"api/v1/namespaces/{NS}/versions/2/content", params={"for": "dc"}),
            400, "for")  # fmt: skip


def test_the_variant_each_node_runs_now_and_ran_then(
    stack: ConsoleStack, viewer: httpx.Client, published: Published
) -> None:
    r = viewer.get(f"api/v1/namespaces/{NS}/fleet/variants")
    assert r.status_code == 200, r.text
    now = {n["node"]: n for n in r.json()["nodes"]}
    for node, name in VARIANT.items():
        assert (now[node]["version"], now[node]["variant"]) == (2, name), now[node]
        assert now[node]["sha256"] == _sha(published.v2[node])
    r = viewer.get(f"api/v1/namespaces/{NS}/fleet/at", params={"at": published.before_v2})
    then = {n["node"]: n for n in r.json()["nodes"]}
    for node, name in VARIANT.items():
        assert (then[node]["version"], then[node]["variant"]) == (1, name), then[node]
        assert then[node]["sha256"] == _sha(published.v1[node])
    # why, now and then: the variant of the node's bytes.
    for node, name in VARIANT.items():
        for at, version in (("", 2), (str(published.before_v2), 1)):
            r = viewer.get(
                f"api/v1/namespaces/{NS}/nodes/{node}/why", params={"at": at} if at else {}
            )
            assert r.status_code == 200, r.text
            assert r.json()["variant"] == name and f"applied v{version}" in r.text, r.text
    # confbus status --at: the same, with a VARIANT column.
    out = stack.confbus("status", NS, "--at", str(published.before_v2))
    header, *rows = [line for line in out.splitlines() if line.startswith(("NODE", *LABELS))]
    assert "VARIANT" in header, out
    for row in rows:
        node, _, _, _, variant = row.split()[:5]
        assert variant == VARIANT[node], row
    # confbus status (now): the same column, after SHA256.
    out = stack.confbus("status", NS)
    header, *rows = [line for line in out.splitlines() if line.startswith(("NODE", *LABELS))]
    assert header.split()[:6] == ["NODE", "LIVENESS", "APPLIED", "TARGET", "SHA256", "VARIANT"]
    assert sorted(row.split()[0] for row in rows) == sorted(VARIANT), out
    for row in rows:
        node, _, applied, _, sha, variant = row.split()[:6]
        assert (applied, variant) == ("v2", VARIANT[node]), row
        assert _sha(published.v2[node]).startswith(sha), row


# -- in a real browser -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def page(stack: ConsoleStack) -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium: apt-get install -y chromium (make test does, as root)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        context = chromium.new_context(viewport={"width": 1280, "height": 800})
        tab = context.new_page()
        tab.set_default_timeout(WAIT_MS)
        tab.goto(stack.login_link)
        playwright.expect(tab.locator("header .who")).to_be_visible(timeout=WAIT_MS)
        yield tab
        chromium.close()


def test_the_version_page_shows_overlays_and_a_picked_nodes_bytes(
    stack: ConsoleStack, page: Any, published: Published
) -> None:
    from playwright.sync_api import expect

    page.goto(stack.console_url + f"ns/{NS}/v/2")
    overlays = page.locator("table.overlays tbody tr")
    expect(overlays).to_have_count(2)
    expect(overlays.nth(0).locator("th")).to_have_text("dc=eu1")
    expect(overlays.nth(0).locator("td.nodes")).to_have_text("eu-db, eu-web")
    expect(overlays.nth(1).locator("th")).to_have_text("tier=web")
    expect(overlays.nth(1).locator("td.nodes")).to_have_text("eu-web, us-web")
    for node, name in VARIANT.items():
        row = page.locator(f'table.variants tr[data-variant="{name}"]')
        expect(row.locator("td.nodes")).to_have_text(node)
        expect(row.locator("code")).to_have_text(_sha(published.v2[node])[:12])
    # Pick a node in the form: its own bytes, byte for byte what is on its disk.
    page.select_option("#variant-node", "eu-db")
    page.locator("#variant-pick button[type=submit]").click()
    expect(page.locator("h2 .variant-name")).to_have_text("dc=eu1")
    expect(page.locator("pre.content")).to_have_text(published.v2["eu-db"].decode())
    expect(page.locator('table.variants tr[aria-current="true"]')).to_have_attribute(
        "data-variant", "dc=eu1"
    )
    # Its diff from the parent version, for that variant.
    page.goto(stack.console_url + f"ns/{NS}/v/2")
    page.locator('table.variants tr[data-variant="tier=web"] a', has_text="diff").click()
    expect(page.locator("h1")).to_contain_text("for node us-web")
    expect(page.locator("pre.diff .add")).to_contain_text('"pool": 8')


def test_the_fleet_page_shows_each_nodes_variant_now_and_in_the_past(
    stack: ConsoleStack, page: Any, published: Published
) -> None:
    from playwright.sync_api import expect

    page.goto(stack.console_url + f"ns/{NS}/fleet")
    for node, name in VARIANT.items():
        row = page.locator(f'table.fleet[data-moment="now"] tr[data-node="{node}"]')
        expect(row.locator("td.variant")).to_have_text(name)
        expect(row.locator("td.applied")).to_contain_text("v2")
    page.goto(stack.console_url + f"ns/{NS}/fleet?at={published.before_v2}")
    for node, name in VARIANT.items():
        row = page.locator(f'table.fleet[data-moment="past"] tr[data-node="{node}"]')
        expect(row.locator("td.variant")).to_have_text(name)
        expect(row.locator("td.applied")).to_have_text("v1")
