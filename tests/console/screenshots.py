"""``make screenshots``: PNGs of the console's main pages, taken by headless Chromium from a
real stack (``confbus up``, three agents, a few versions — one with an overlay —, a rollback, a
draft waiting for approval), into the folder given (``docs/console``). The README shows them.

    python -m tests.console.screenshots docs/console
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from tests.console.stack import ConsoleStack, start, wait_event

PAGES = (
    ("overview", ""),
    ("namespace", "ns/web"),
    ("rollout", "ns/web/rollout"),
    ("fleet", "ns/web/fleet"),
    ("timeline", "timeline?filter=web"),
    ("diff", "ns/web/diff?a=1&b=2"),
    ("fleet-past", "ns/web/fleet?at=20"),  # the fleet as it was at the audit log's 20th event
    ("why", "ns/web/why/web-1"),
    ("version-variants", "ns/web/v/3?node=web-3"),  # its overlay, and web-3's own bytes
)


def stage(stack: ConsoleStack) -> None:
    """Something worth looking at: versions with messages (one with a variant), a rollback, a
    draft, a secret."""
    for node, dc in (("web-1", "eu1"), ("web-2", "eu1"), ("web-3", "us1")):
        stack.start_agent(node, "web", "--label", f"dc={dc}")
    stack.confbus("policy", "web", "--strategy", "linear:34%")
    for n, (body, message) in enumerate(
        (
            ('{"pool": 8, "timeout_ms": 500}\n', "first config"),
            ('{"pool": 16, "timeout_ms": 500}\n', "raise the pool for the sale"),
            ('{"pool": 16, "timeout_ms": 250}\n', "tighter timeout, but not across the ocean"),
        ),
        start=1,
    ):
        path = stack.root / f"web-{n}.json"
        path.write_text(body)
        # The last one has a variant: us1 keeps a longer timeout (docs/design.md §2.6).
        us1 = stack.root / "web-us1.json"
        us1.write_text('{"timeout_ms": 400}\n')
        overlay = ("--overlay", f"dc=us1={us1}") if n == 3 else ()
        stack.confbus("publish", "web", str(path), *overlay, "-m", message, "--author", "alice",
                      "--wait")  # fmt: skip
    operator = stack.token("operator", "olga")
    with stack.http(operator) as client:
        r = client.post("api/v1/namespaces/web/rollback", json={"to": 2, "reason": "p99 up"})
        assert r.status_code == 202, r.text
        rid = r.json()["rollback_id"]
        gated = {"namespace": "payments", "require_approval": True, "secret": True}
        client.put("api/v1/namespaces/payments/policy", json=gated)
        r = client.post(
            "api/v1/namespaces/payments/versions",
            json={"content": '{"key": "s3cr3t"}', "message": "rotate the key"},
        )
        assert r.status_code == 201, r.text
    wait_event(stack, operator, "web.rollback.>", lambda e: e["event"].get("rollback_id") == rid
               and e["type"] == "rollback.completed")  # fmt: skip


def sign_in(page: Page, link: str) -> None:
    """Follow the sign-in link; its page posts the token itself (by script), then goes on."""
    page.goto(link)
    expect(page.locator("header .who")).to_be_visible()


def shoot(page: Page, url: str, out: Path) -> None:
    page.goto(url)
    expect(page.locator("main")).to_be_visible()
    live = page.locator("[data-live]")
    if live.count():
        expect(live).to_have_attribute("data-following", "yes")
    page.screenshot(path=str(out))


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/console")
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="confbus-screenshots-"))
    stack = start(root)
    try:
        stage(stack)
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            sign_in(page, stack.login_link)
            for name, path in PAGES:
                shoot(page, stack.console_url + path, out / f"{name}.png")
            phone = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
            sign_in(phone, stack.login_link)
            shoot(phone, stack.console_url + "ns/web/rollout", out / "rollout-phone.png")
            browser.close()
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    sys.stdout.write(
        f"screenshots in {out}: {', '.join(sorted(p.name for p in out.glob('*.png')))}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
