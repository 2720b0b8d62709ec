"""The web console in a real headless Chromium (Debian's, driven by Playwright) against a real
stack with three agents writing real files: a publish from the CLI shows up on the rollout page
and its nodes turn applied without a reload; the rollback button puts every node's bytes back
(read from disk) and the timeline lists the rollback; a viewer sees no action and its forged
posts are refused; the fleet page's slider, moved by keys to before a publish, shows the older
version on every node, and each node's "why" names that version's chain; a draft waiting for
approval is on the overview with an operator's approve button; the sign-in link signs in by a
POST and leaves no token in an address."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.console.stack import ConsoleStack, stack_fixture, wait_event

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        "no Chromium: apt-get install -y chromium (make test does, as root)",
        allow_module_level=True,
    )

NODES = ("web-1", "web-2", "web-3")
V1 = b'{"pool": 1}\n'
V2 = b'{"pool": 2}\n'
WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    root = tmp_path_factory.mktemp("console-browser")
    for stack in stack_fixture(root):
        for node in NODES:
            stack.start_agent(node, "web")
        for n, content in ((1, V1), (2, V2)):
            publish(stack, content, f"base-{n}", wait=True)
        yield stack


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def viewer_token(stack: ConsoleStack) -> str:
    return stack.token("viewer", "vera")


def publish(stack: ConsoleStack, content: bytes, change_id: str, *, wait: bool = False) -> None:
    path = stack.root / f"{change_id}.json"
    path.write_bytes(content)
    stack.confbus("publish", "web", str(path), "--id", change_id, *(["--wait"] if wait else []))


def signed_in(browser: Browser, link: str) -> Page:
    """A new browser session (1280×800) signed in by following ``link``."""
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(link)
    expect(page.locator("header .who")).to_be_visible()
    return page


def versions(stack: ConsoleStack, token: str) -> list[dict[str, Any]]:
    with stack.http(token) as client:
        found: list[dict[str, Any]] = client.get("api/v1/namespaces/web/versions").json()[
            "versions"
        ]
    return found


def test_a_cli_publish_shows_up_live_and_its_nodes_turn_applied(
    stack: ConsoleStack, browser: Browser, viewer_token: str
) -> None:
    page = signed_in(browser, stack.login_link)
    page.goto(stack.console_url + "ns/web/rollout")
    expect(page.locator("#live")).to_have_attribute("data-following", "yes")  # subscribed
    page.evaluate("window.stillTheSamePage = true")
    newest = versions(stack, viewer_token)[0]["version"]
    content = json.dumps({"pool": newest + 1}).encode()
    publish(stack, content, f"live-{newest + 1}")
    rollout = page.locator(f'.rollout[data-version="{newest + 1}"]')
    expect(rollout).to_have_attribute("data-state", "completed")
    for node in NODES:
        row = rollout.locator(f'tr[data-node="{node}"]')
        expect(row.locator("td.applied")).to_have_text("applied")
        expect(row.locator("td.vote")).to_contain_text("voted yes")
        assert stack.agents[node].read() == content
    assert page.evaluate("window.stillTheSamePage") is True  # no reload, no navigation
    page.context.close()


def test_the_rollback_button_restores_every_nodes_bytes_and_the_timeline_lists_it(
    stack: ConsoleStack, browser: Browser, viewer_token: str
) -> None:
    page = signed_in(browser, stack.login_link)
    page.goto(stack.console_url + "ns/web")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('#v1 button[data-action="rollback"]').click()
    notice = page.locator("p.notice")
    expect(notice).to_contain_text("rollback of web to v1 started")
    rollback_id = notice.inner_text().split("(")[-1].rstrip(")")
    page.goto(stack.console_url + f"timeline?filter=web.rollback.>&rollback={rollback_id}")
    expect(page.locator("#live")).to_have_attribute("data-following", "yes")
    done = page.locator('tr[data-type="rollback.completed"]')
    expect(done).to_have_count(1)  # appears live, without a reload
    started = page.locator('tr[data-type="rollback.started"]')
    expect(started.locator("td.actor")).to_have_text(stack.login_user)  # who clicked
    expect(started).to_contain_text("to v1")
    for node in NODES:
        assert stack.agents[node].read() == V1, node
    newest = versions(stack, viewer_token)[0]
    assert newest["rollback_of"] == 1 and newest["status"] == "production"
    page.context.close()


def test_a_viewer_sees_no_action_and_its_forged_posts_are_refused(
    stack: ConsoleStack, browser: Browser, viewer_token: str
) -> None:
    page = signed_in(browser, f"{stack.console_url}login#token={viewer_token}")
    for path in ("", "ns/web", "ns/web/rollout", "timeline"):
        page.goto(stack.console_url + path)
        expect(page.locator("main")).to_be_visible()
        assert page.locator("form.act").count() == 0, path
        assert page.locator("button[data-action]").count() == 0, path
    before = versions(stack, viewer_token)
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    assert csrf  # the viewer's own, valid CSRF token: the role alone refuses
    form: dict[str, str | float | bool] = {
        "csrf": csrf,
        "confirm": "yes",
        "version": "1",
        "next": "/ns/web",
    }
    forged = page.request.post(stack.console_url + "ns/web/act/rollback", form=form)
    assert forged.status == 403 and "operator role" in forged.text()
    forged = page.request.post(
        stack.console_url + "api/v1/namespaces/web/rollback",
        data='{"to": 1}',
        headers={"content-type": "application/json", "x-csrf-token": csrf},
    )
    assert forged.status == 403 and forged.json()["where"] == "role"
    assert versions(stack, viewer_token) == before
    page.context.close()


def test_an_act_without_the_script_is_confirmed_on_a_page_of_its_own(
    stack: ConsoleStack, browser: Browser
) -> None:
    context = browser.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(stack.console_url + "login")  # without the script, the token is pasted
    page.locator("#token").fill(stack.link_token())
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("header .who")).to_be_visible()
    page.goto(stack.console_url + "ns/web/rollout")
    running_before = page.locator(".rollout").get_attribute("data-version")
    page.locator('button[data-action="rollback"]').click()
    expect(page.locator("h1")).to_contain_text("Confirm: rollback web")
    page.get_by_role("link", name="Cancel").click()  # nothing done
    assert page.locator(".rollout").get_attribute("data-version") == running_before
    context.close()


def test_the_sign_in_link_posts_and_leaves_no_token_in_an_address(
    stack: ConsoleStack, browser: Browser
) -> None:
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    sent: list[tuple[str, str]] = []
    page.on("request", lambda r: sent.append((r.method, r.url)))
    page.goto(stack.login_link)
    expect(page.locator("header .who")).to_contain_text(stack.login_user)
    token = stack.link_token()
    assert ("POST", stack.console_url + "login") in sent  # signed in by the form's POST
    assert not [url for _, url in sent if token in url]  # no request carried it in its URL
    # The entry before this page in the history (the sign-in page's, or none: a form posted
    # while the page loads replaces its entry) no longer holds the token.
    page.go_back()
    assert token not in page.url
    page.context.close()


def test_the_slider_shows_the_fleet_before_a_publish_and_why_names_its_chain(
    stack: ConsoleStack, browser: Browser, viewer_token: str
) -> None:
    production = next(v for v in versions(stack, viewer_token) if v["status"] == "production")
    old = production["version"]
    for node in NODES:  # every node's apply of it is in the audit log
        wait_event(stack, viewer_token, f"web.node.applied.{node}",
                   lambda e: e["event"]["version"] == old)  # fmt: skip
    new = old + 1
    publish(stack, json.dumps({"pool": new, "travel": True}).encode(), f"travel-{new}", wait=True)
    with stack.http(viewer_token) as client:
        created = client.get(
            "api/v1/events", params={"filter": "web.version.created", "version": new}
        ).json()["events"]
    before = created[0]["seq"] - 1
    page = signed_in(browser, stack.login_link)
    page.goto(stack.console_url + "ns/web/fleet")
    live = page.locator("#live")
    expect(live).to_have_attribute("data-following", "yes")
    slider = page.get_by_label("Moment")
    last = int(slider.get_attribute("max") or 0)
    assert before < last
    slider.focus()
    for _ in range(last - before):  # by keyboard, one event at a time
        page.keyboard.press("ArrowLeft")
    expect(page.locator("#at-shown")).to_have_text(f"seq {before}")
    past = live.locator(f'table[data-moment="past"][data-seq="{before}"]')
    for node in NODES:
        expect(past.locator(f'tr[data-node="{node}"] td.applied')).to_have_text(f"v{old}")
    assert f"at={before}" in page.url  # the moment is in the address: a link shows it again
    past.locator('tr[data-node="web-2"] a.why').click()
    chain = page.locator("ol.why")
    expect(chain.locator('li[data-kind="apply"]')).to_contain_text(f"web-2 applied v{old}")
    expect(chain.locator('li[data-kind="transaction"]')).to_contain_text(f"v{old}")
    expect(chain.locator('li[data-kind="version"]')).to_contain_text(f"v{old} created")
    page.go_back()
    page.get_by_label("Moment").focus()
    page.keyboard.press("End")  # back to now: live again
    now = page.locator('#live table[data-moment="now"]')
    for node in NODES:
        expect(now.locator(f'tr[data-node="{node}"] td.applied')).to_have_text(f"v{new}")
    page.context.close()


def test_a_draft_waiting_for_approval_is_on_the_overview_and_an_operator_approves_it(
    stack: ConsoleStack, browser: Browser, viewer_token: str
) -> None:
    with stack.http(stack.link_token()) as operator:
        gate = {"namespace": "gate", "require_approval": True}
        assert operator.put("api/v1/namespaces/gate/policy", json=gate).status_code == 200
    with stack.http(stack.token("publisher", "ci-bot")) as ci:
        r = ci.post("api/v1/namespaces/gate/versions", json={"content": "{}", "message": "open"})
        assert r.status_code == 201 and r.json()["status"] == "draft", r.text
    viewer = signed_in(browser, f"{stack.console_url}login#token={viewer_token}")
    row = viewer.locator('tr[data-draft="gate/1"]')
    expect(row).to_contain_text("ci-bot")
    expect(viewer.locator("main")).to_contain_text("1 waiting for approval")
    assert row.locator("button").count() == 0  # a viewer only sees it
    viewer.context.close()
    page = signed_in(browser, stack.login_link)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('tr[data-draft="gate/1"] button[data-action="approve"]').click()
    expect(page.locator("p.notice")).to_contain_text("gate v1 is")
    expect(page.locator('tr[data-draft="gate/1"]')).to_have_count(0)
    expect(page.locator("#waiting + p")).to_have_text("No draft is waiting for approval.")
    with stack.http(viewer_token) as client:
        info = client.get("api/v1/namespaces/gate/versions/1").json()
    assert info["approved_by"] == stack.login_user and info["status"] != "draft"
    page.context.close()
