"""The console's HTTP API against a real stack (``confbus up``): every route, its answers, and
bad input — malformed JSON, unknown namespaces, versions that do not exist, tokens of the wrong
role — each a clear 4xx with the reason, and nothing changed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest

from confbus.console import openapi
from confbus.schemas import tokens as tokens_schema
from tests.cli.procs import REPO, run_confbus
from tests.console.stack import ConsoleStack, problem, sign_in, stack_fixture, wait_event

V1 = '{"pool": 1}\n'
V2 = '{"pool": 2}\n'
ROLLOUT_ENDS = ("rollout.completed", "rollout.failed", "rollout.superseded")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    yield from stack_fixture(tmp_path_factory.mktemp("console-api"))


@pytest.fixture(scope="module")
def tokens(stack: ConsoleStack) -> dict[str, str]:
    return {
        "viewer": stack.token("viewer", "vera"),
        "publisher": stack.token("publisher", "ci-bot"),
        "operator": stack.token("operator", "olga"),
    }


@pytest.fixture(scope="module")
def api(stack: ConsoleStack, tokens: dict[str, str]) -> dict[str, httpx.Client]:
    return {role: stack.http(token) for role, token in tokens.items()}


@pytest.fixture(scope="module")
def shop(stack: ConsoleStack, tokens: dict[str, str], api: dict[str, httpx.Client]) -> str:
    """A namespace with two versions, published through the API."""
    for content, cid in ((V1, "shop-1"), (V2, "shop-2")):
        r = api["publisher"].post(
            "api/v1/namespaces/shop/versions",
            json={"content": content, "change_id": cid, "message": f"make {cid}"},
        )
        assert r.status_code == 201, r.text
    # Its rollout (of no node) is over: from here on what the tests read of it stays put.
    wait_event(stack, tokens["viewer"], "shop.rollout.>", lambda e: e["type"] in ROLLOUT_ENDS
               and e["event"]["version"] == 2)  # fmt: skip
    return "shop"


def versions(api: dict[str, httpx.Client], ns: str) -> list[dict[str, Any]]:
    r = api["viewer"].get(f"api/v1/namespaces/{ns}/versions", params={"limit": 100})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["versions"]
    return found


# -- who -------------------------------------------------------------------------------------


def test_each_token_says_who_it_is(api: dict[str, httpx.Client]) -> None:
    for role, user in (("viewer", "vera"), ("publisher", "ci-bot"), ("operator", "olga")):
        assert api[role].get("api/v1/whoami").json() == {"user": user, "role": role}


def test_no_token_a_bad_scheme_an_unknown_and_a_revoked_token_are_401(
    stack: ConsoleStack,
) -> None:
    with stack.http() as anon:
        assert "token" in problem(anon.get("api/v1/whoami"), 401, "token")["reason"]
        basic = anon.get("api/v1/whoami", headers={"authorization": "Basic eDp5"})
        problem(basic, 401, "authorization")
        fake = "cbt_000000000000_not-a-secret"
        problem(anon.get("api/v1/whoami", headers={"authorization": f"Bearer {fake}"}), 401)
    token = stack.token("viewer", "gone")
    with stack.http(token) as client:
        assert client.get("api/v1/whoami").status_code == 200
        stack.revoke(token)
        assert "revoked" in problem(client.get("api/v1/whoami"), 401, "token")["reason"]


# -- publish and versions ------------------------------------------------------------------------


def test_publish_is_idempotent_by_change_id_and_records_the_author(
    api: dict[str, httpx.Client], shop: str
) -> None:
    listed = versions(api, shop)
    assert [(v["version"], v["author"], v["message"]) for v in listed] == [
        (2, "ci-bot", "make shop-2"),
        (1, "ci-bot", "make shop-1"),
    ]
    again = api["publisher"].post(
        f"api/v1/namespaces/{shop}/versions", json={"content": V1, "change_id": "shop-1"}
    )
    assert again.status_code == 201 and again.json()["version"] == 1
    other = api["publisher"].post(
        f"api/v1/namespaces/{shop}/versions", json={"content": V2, "change_id": "shop-1"}
    )
    assert "already version 1" in problem(other, 422, "change_id")["reason"]
    assert len(versions(api, shop)) == 2


def test_a_dry_run_validates_and_diffs_and_stores_nothing(
    api: dict[str, httpx.Client], shop: str
) -> None:
    path = f"api/v1/namespaces/{shop}/dry-run"
    r = api["publisher"].post(path, json={"content": '{"pool": 3}\n'})
    reply = r.json()
    assert r.status_code == 200 and reply["ok"] and reply["would_be_version"] == 3, r.text
    assert '+{"pool": 3}' in reply["diff"]
    bad = api["publisher"].post(path, json={"content": '{"pool": ', "format": "json"}).json()
    assert bad["ok"] is False and bad["reason"]
    problem(api["viewer"].post(path, json={"content": "x"}), 403, "role")
    assert len(versions(api, shop)) == 2


def test_a_change_the_store_rejects_says_why_and_where(
    api: dict[str, httpx.Client], shop: str
) -> None:
    r = api["publisher"].post(
        f"api/v1/namespaces/{shop}/versions", json={"content": '{"pool": ', "format": "json"}
    )
    body = problem(r, 422)
    assert body["error"] == "rejected" and "json" in body["reason"].lower()
    assert len(versions(api, shop)) == 2


@pytest.mark.parametrize(
    ("body", "where", "words"),
    [
        (b'{"content": "x"', "body", "malformed JSON"),
        (b"[1, 2]", "body", "Expected `object`"),
        (b'{"message": "no content"}', "$.content", "missing required field `content`"),
        (b'{"content": "x", "change_id": "bad id!"}', "$.change_id", "Expected `str` matching"),
        (b'{"content": "x", "format": "xml"}', "$.format", "Invalid enum value 'xml'"),
    ],
)
def test_a_malformed_publish_is_400_with_the_place_and_changes_nothing(
    api: dict[str, httpx.Client], shop: str, body: bytes, where: str, words: str
) -> None:
    r = api["publisher"].post(
        f"api/v1/namespaces/{shop}/versions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert words.lower() in problem(r, 400, where)["reason"].lower()
    assert len(versions(api, shop)) == 2


def test_a_viewer_may_not_publish_and_a_bad_namespace_is_400(
    api: dict[str, httpx.Client], shop: str
) -> None:
    r = api["viewer"].post(f"api/v1/namespaces/{shop}/versions", json={"content": V1})
    assert "publisher role" in problem(r, 403, "role")["reason"]
    r = api["publisher"].post("api/v1/namespaces/Not.A.Name/versions", json={"content": V1})
    problem(r, 400, "namespace")
    assert len(versions(api, shop)) == 2


def test_history_pages_and_refuses_bad_queries(api: dict[str, httpx.Client], shop: str) -> None:
    r = api["viewer"].get(f"api/v1/namespaces/{shop}/versions", params={"limit": 1})
    page = r.json()
    assert [v["version"] for v in page["versions"]] == [2] and page["next_before"] == 2
    r = api["viewer"].get(
        f"api/v1/namespaces/{shop}/versions", params={"limit": 5, "before": page["next_before"]}
    )
    assert [v["version"] for v in r.json()["versions"]] == [1]
    problem(api["viewer"].get(f"api/v1/namespaces/{shop}/versions?limit=0"), 400, "$.limit")
    problem(api["viewer"].get(f"api/v1/namespaces/{shop}/versions?limit=x"), 400, "$.limit")
    r = api["viewer"].get("api/v1/namespaces/nosuch/versions")
    assert "nosuch" in problem(r, 404, "namespace")["reason"]


def test_a_version_its_bytes_and_a_diff(api: dict[str, httpx.Client], shop: str) -> None:
    info = api["viewer"].get(f"api/v1/namespaces/{shop}/versions/latest").json()
    assert info["version"] == 2 and info["author"] == "ci-bot", info
    raw = api["viewer"].get(f"api/v1/namespaces/{shop}/versions/1/content")
    assert raw.content == V1.encode() and raw.headers["x-confbus-version"] == "1"
    diff = api["viewer"].get(f"api/v1/namespaces/{shop}/diff", params={"a": 1, "b": 2}).json()
    assert '-{"pool": 1}' in diff["diff"] and '+{"pool": 2}' in diff["diff"]
    problem(api["viewer"].get(f"api/v1/namespaces/{shop}/versions/99"), 404)
    problem(api["viewer"].get(f"api/v1/namespaces/{shop}/versions/abc"), 400, "ref")
    problem(api["viewer"].get(f"api/v1/namespaces/{shop}/versions/99/content"), 404)
    problem(api["viewer"].get(f"api/v1/namespaces/{shop}/diff", params={"a": 1}), 400, "$.b")
    problem(api["viewer"].get("api/v1/namespaces/nosuch/diff?a=1&b=2"), 404, "namespace")


def test_a_secret_namespace_never_shows_content(api: dict[str, httpx.Client]) -> None:
    policy = {"namespace": "vault", "secret": True}
    r = api["operator"].put("api/v1/namespaces/vault/policy", json=policy)
    assert r.status_code == 200 and r.json()["secret"] is True, r.text
    r = api["publisher"].post(
        "api/v1/namespaces/vault/versions", json={"content": '{"key": "hunter2"}'}
    )
    assert r.status_code == 201, r.text
    for path in ("versions/1/content", "diff?a=1&b=1"):
        r = api["viewer"].get(f"api/v1/namespaces/vault/{path}")
        assert "secret" in problem(r, 403, "namespace")["reason"]
        assert "hunter2" not in r.text
    info = api["viewer"].get("api/v1/namespaces/vault/versions/1")
    assert info.status_code == 200 and "hunter2" not in info.text


# -- policy, approvals ---------------------------------------------------------------------------


def test_policy_get_and_put_by_an_operator_only(api: dict[str, httpx.Client]) -> None:
    r = api["operator"].put(
        "api/v1/namespaces/gated/policy", json={"namespace": "gated", "require_approval": True}
    )
    assert r.status_code == 200 and r.json()["require_approval"] is True, r.text
    assert api["viewer"].get("api/v1/namespaces/gated/policy").json()["require_approval"]
    r = api["publisher"].put(
        "api/v1/namespaces/gated/policy", json={"namespace": "gated", "require_approval": False}
    )
    assert "operator role" in problem(r, 403, "role")["reason"]
    r = api["operator"].put("api/v1/namespaces/gated/policy", json={"namespace": "other"})
    problem(r, 400, "$.namespace")
    bad = {"namespace": "gated", "max_bytes": "big"}
    r = api["operator"].put("api/v1/namespaces/gated/policy", json=bad)
    problem(r, 400, "$.max_bytes")
    assert api["viewer"].get("api/v1/namespaces/gated/policy").json()["require_approval"]
    problem(api["viewer"].get("api/v1/namespaces/nosuch/policy"), 404, "namespace")


def test_a_policy_put_accepts_what_policy_file_accepts(
    stack: ConsoleStack, tokens: dict[str, str], api: dict[str, httpx.Client]
) -> None:
    """The same check as ``confbus policy NS --file``: the namespace may be left out (the path
    says it), a field the policy does not have is refused rather than ignored; the change is
    announced as ``policy.changed`` by the signed-in user."""
    path = "api/v1/namespaces/baked/policy"
    r = api["operator"].put(path, json={"bake_s": 2, "rollback": {"strategy": "batches:2"}})
    assert r.status_code == 200, r.text
    assert (r.json()["namespace"], r.json()["bake_s"]) == ("baked", 2.0)
    r = api["operator"].put(path, json={"bake": 30})
    assert "unknown field(s) bake" in problem(r, 400, "$")["reason"]
    problem(
        api["operator"].put(path, json={"rollback": {"strategy": 2}}), 400, "$.rollback.strategy"
    )
    assert api["viewer"].get(path).json()["bake_s"] == 2.0
    changed = wait_event(stack, tokens["viewer"], "baked.policy.>", lambda e: True)["event"]
    assert changed["type"] == "policy.changed" and changed["actor"] == "olga"
    fields = {c["field"] for c in changed["changes"]}
    assert fields == {"bake_s", "rollback.strategy"}, changed


def test_approve_and_reject_drafts_as_the_acting_user(api: dict[str, httpx.Client]) -> None:
    ns = "gated"
    gate = {"namespace": ns, "require_approval": True}
    api["operator"].put(f"api/v1/namespaces/{ns}/policy", json=gate)
    for cid in ("g-1", "g-2"):
        r = api["publisher"].post(
            f"api/v1/namespaces/{ns}/versions", json={"content": V1 if cid == "g-1" else V2,
                                                      "change_id": cid})  # fmt: skip
        assert r.status_code == 201 and r.json()["status"] == "draft", r.text
    assert [v["version"] for v in waiting(api, ns)] == [2, 1]  # the overview flags them
    problem(api["viewer"].post(f"api/v1/namespaces/{ns}/versions/1/approve"), 403, "role")
    problem(api["publisher"].post(f"api/v1/namespaces/{ns}/versions/1/approve"), 403, "role")
    problem(api["operator"].post(f"api/v1/namespaces/{ns}/versions/x/approve"), 400, "version")
    problem(api["operator"].post(f"api/v1/namespaces/{ns}/versions/99/approve"), 404)
    r = api["operator"].post(f"api/v1/namespaces/{ns}/versions/1/approve")
    assert r.status_code == 200, r.text
    assert r.json()["approved_by"] == "olga" and r.json()["status"] != "draft"
    r = api["operator"].post(f"api/v1/namespaces/{ns}/versions/2/reject", json={"reason": "no"})
    assert r.status_code == 200 and r.json()["status"] == "rejected", r.text
    r = api["operator"].post(f"api/v1/namespaces/{ns}/versions/2/reject", content=b"{nope")
    problem(r, 400, "body")
    assert waiting(api, ns) == []


def waiting(api: dict[str, httpx.Client], ns: str) -> list[dict[str, Any]]:
    """The drafts the overview shows as waiting for approval in ``ns``."""
    rows = api["viewer"].get("api/v1/namespaces").json()["namespaces"]
    found: list[dict[str, Any]] = next(r for r in rows if r["namespace"] == ns)["waiting"]
    return found


# -- rollouts, rollbacks, fleet ------------------------------------------------------------------


def test_rollout_and_its_controls(api: dict[str, httpx.Client], shop: str) -> None:
    r = api["viewer"].get(f"api/v1/namespaces/{shop}/rollout")
    rollout = r.json()["rollout"]
    assert rollout is not None and rollout["version"] == 2, r.text
    nodes = api["viewer"].get(f"api/v1/namespaces/{shop}/rollout/nodes").json()
    assert set(nodes) == {"votes", "applied", "seq"} and nodes["seq"] > 0
    for op in ("pause", "resume", "abort"):
        problem(api["viewer"].post(f"api/v1/namespaces/{shop}/rollout/{op}", json={}), 403)
        # Nothing is running in shop (no node): a conflict, said as such.
        r = api["operator"].post(f"api/v1/namespaces/{shop}/rollout/{op}", json={"reason": "t"})
        assert r.status_code in (404, 409), r.text
        problem(r, r.status_code)
    problem(api["operator"].post("api/v1/namespaces/nosuch/rollout/pause", json={}), 404)
    problem(api["viewer"].get("api/v1/namespaces/nosuch/rollout"), 404, "namespace")


def test_rollback_refusals_are_4xx_with_the_reason(api: dict[str, httpx.Client], shop: str) -> None:
    problem(api["publisher"].post(f"api/v1/namespaces/{shop}/rollback", json={"to": 1}), 403)
    problem(api["operator"].post(f"api/v1/namespaces/{shop}/rollback", json={"to": 0}), 400, "$.to")
    r = api["operator"].post(f"api/v1/namespaces/{shop}/rollback", json={"to": 99})
    assert "99" in problem(r, 409, "to")["reason"]
    problem(api["operator"].post("api/v1/namespaces/nosuch/rollback", json={}), 404)
    assert len(versions(api, shop)) == 2


def test_fleet(stack: ConsoleStack, api: dict[str, httpx.Client]) -> None:
    agent = stack.start_agent("n1", "fleetns")
    config = stack.root / "fleet.json"
    config.write_text(V1)
    stack.confbus("publish", "fleetns", str(config), "--wait", "--timeout", "60")
    fleet = api["viewer"].get("api/v1/namespaces/fleetns/fleet").json()
    nodes = {n["node"]: n for n in fleet["nodes"]}
    assert nodes["n1"]["applied_version"] == 1 and nodes["n1"]["liveness"] == "live", fleet
    assert nodes["n1"]["sha256"] == fleet["production_sha256"] and agent.read() == V1.encode()
    problem(api["viewer"].get("api/v1/namespaces/nosuch/fleet"), 404, "namespace")


def test_overview(stack: ConsoleStack, api: dict[str, httpx.Client], shop: str) -> None:
    if "n1" not in stack.agents:
        test_fleet(stack, api)
    rows = {r["namespace"]: r for r in api["viewer"].get("api/v1/namespaces").json()["namespaces"]}
    assert rows[shop]["nodes"] == 0 and rows[shop]["rollout"]["version"] == 2
    assert rows["fleetns"]["production_version"] == 1 and rows["fleetns"]["live"] == 1


# -- the audit log ------------------------------------------------------------------------------


def test_events_with_the_cli_filters(api: dict[str, httpx.Client], shop: str) -> None:
    r = api["viewer"].get("api/v1/events", params={"filter": f"{shop}.version.created"})
    created = r.json()["events"]
    assert [e["event"]["version"] for e in created] == [2, 1]  # newest first
    assert all(e["type"] == "version.created" for e in created)
    seq = created[-1]["seq"]
    r = api["viewer"].get("api/v1/events", params={"filter": shop, "from_seq": seq, "limit": 1})
    assert len(r.json()["events"]) == 1
    r = api["viewer"].get("api/v1/events", params={"filter": shop, "since": "1h", "version": 1})
    assert r.json()["events"] and all(
        1 in (e["event"].get("version"), e["event"].get("new_version")) for e in r.json()["events"]
    )
    problem(api["viewer"].get("api/v1/events", params={"filter": "a.b c"}), 400, "filter")
    problem(api["viewer"].get("api/v1/events", params={"since": "yesterday"}), 400, "since")
    problem(api["viewer"].get("api/v1/events", params={"limit": 5000}), 400, "$.limit")


def test_events_live_as_server_sent_events(
    stack: ConsoleStack, tokens: dict[str, str], api: dict[str, httpx.Client]
) -> None:
    got: list[dict[str, Any]] = []
    with (
        stack.http(tokens["viewer"]) as client,
        client.stream("GET", "api/v1/events/stream", params={"filter": "live"}) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines) == "event: subscribed"  # from here on nothing is missed
        assert json.loads(next(lines).removeprefix("data: "))["filter"] == "cfg.event.live.>"
        publish = threading.Thread(
            target=api["publisher"].post,
            args=("api/v1/namespaces/live/versions",),
            kwargs={"json": {"content": V1, "change_id": "live-1"}},
        )
        publish.start()
        for line in lines:
            if line.startswith("data: "):
                got.append(json.loads(line.removeprefix("data: ")))
                if got[-1]["type"] == "version.created":
                    break
        publish.join(30)
    assert got[-1]["event"]["change_id"] == "live-1" and got[-1]["seq"] > 0


# -- browser sessions: signing in, CSRF, expiry ---------------------------------------------------


def test_a_cookie_session_must_send_the_csrf_token(
    stack: ConsoleStack, tokens: dict[str, str], shop: str
) -> None:
    with httpx.Client(base_url=stack.console_url, timeout=30) as browser:
        r = sign_in(browser, tokens["operator"])
        assert r.status_code == 303 and "confbus_session" in r.cookies
        assert browser.get("api/v1/whoami").json()["user"] == "olga"
        path = f"api/v1/namespaces/{shop}/rollback"
        assert "CSRF" in problem(browser.post(path, json={"to": 1}), 403, "csrf")["reason"]
        evil = browser.post(path, json={"to": 1}, headers={"origin": "http://evil.example"})
        problem(evil, 403, "origin")
        page = browser.get(f"ns/{shop}").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        r = browser.post(path, json={"to": 99}, headers={"x-csrf-token": csrf})
        problem(r, 409, "to")  # past the CSRF check: the rollbacker's own refusal


def test_signing_in_is_a_post_from_the_sign_in_page_never_a_get(
    stack: ConsoleStack, tokens: dict[str, str]
) -> None:
    with httpx.Client(base_url=stack.console_url, timeout=30) as browser:
        # The old link's form: refused with the reason, and no session.
        r = browser.get("login", params={"token": tokens["operator"]})
        assert r.status_code == 400 and "not accepted" in r.text
        assert "confbus_session" not in browser.cookies
        problem(browser.get("api/v1/whoami"), 401, "token")
        # A post from another site (login CSRF): it has neither the page's nonce nor its cookie.
        forged = browser.post("login", data={"token": tokens["operator"]}, follow_redirects=False)
        assert forged.status_code == 403 and "sign-in page" in forged.text
        nonce = browser.get("login").text.split('name="login_nonce" value="')[1].split('"')[0]
        evil = browser.post(
            "login",
            data={"token": tokens["operator"], "login_nonce": nonce},
            headers={"origin": "http://evil.example"},
        )
        assert evil.status_code == 403 and "evil.example" in evil.text
        assert "confbus_session" not in browser.cookies
        r = sign_in(browser, tokens["viewer"])
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert browser.get("api/v1/whoami").json()["user"] == "vera"


def _expire(stack: ConsoleStack, token: str) -> None:
    """Move the token's expiry into the past (what the clock would do, without waiting)."""
    path = stack.data_dir / "console" / "tokens.json"
    parsed = tokens_schema.decode_token_file(path.read_bytes())
    token_id = token.split("_")[1]
    past = datetime.now(UTC) - timedelta(minutes=1)
    kept = [
        msgspec.structs.replace(t, expires_at=past) if t.id == token_id else t
        for t in parsed.tokens
    ]
    path.write_bytes(tokens_schema.encode_token_file(tokens_schema.TokenFile(tokens=kept)))


def test_a_token_with_an_expiry_works_until_then_and_is_refused_after_it(
    stack: ConsoleStack,
) -> None:
    token = stack.token("viewer", "temp", "--expires", "30d")
    listed = run_confbus("console", "--data-dir", str(stack.data_dir), "tokens").stdout
    line = next(t for t in listed.splitlines() if t.startswith(token.split("_")[1]))
    assert "temp viewer" in line and "(expires " in line
    with stack.http(token) as client, httpx.Client(base_url=stack.console_url) as browser:
        assert client.get("api/v1/whoami").json()["user"] == "temp"
        assert sign_in(browser, token).status_code == 303
        _expire(stack, token)
        body = problem(client.get("api/v1/whoami"), 401, "token")
        assert "expired at" in body["reason"] and "confbus console token" in body["reason"]
        # The browser's session ends too: its page says why, and offers to sign in again.
        page = browser.get("ns/shop", follow_redirects=False)
        assert page.status_code == 401 and "expired at" in page.text
        assert 'name="login_nonce"' in page.text
        again = sign_in(browser, token)
        assert again.status_code == 401 and "expired at" in again.text
    listed = run_confbus("console", "--data-dir", str(stack.data_dir), "tokens").stdout
    assert "(expired " in next(t for t in listed.splitlines() if "temp" in t)


@pytest.mark.parametrize("when", ["0s", "soon", "2001-01-01T00:00:00Z"])
def test_an_expiry_that_is_not_in_the_future_is_a_usage_error(
    stack: ConsoleStack, when: str
) -> None:
    args = ("console", "--data-dir", str(stack.data_dir), "token", "--role", "viewer")
    before = (stack.data_dir / "console" / "tokens.json").read_bytes()
    done = run_confbus(*args, "--user", "nope", "--expires", when)
    assert done.returncode == 2 and "--expires" in done.stderr, done.stderr
    assert (stack.data_dir / "console" / "tokens.json").read_bytes() == before


# -- the document and the service's own endpoints -----------------------------------------------


def test_openapi_is_served_and_matches_the_committed_snapshot(stack: ConsoleStack) -> None:
    with stack.http() as anon:
        served = anon.get("api/v1/openapi.json").json()
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert served == committed == openapi.document(), (
        "regenerate: python -m confbus.console.openapi > docs/openapi.json"
    )
    assert served["openapi"] == "3.1.0"
    refs = set(_refs(served))
    assert refs and refs <= {f"#/components/schemas/{n}" for n in served["components"]["schemas"]}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_metrics_and_healthz(stack: ConsoleStack) -> None:
    with stack.http() as anon:
        assert anon.get("healthz").text == "ok\n"
        metrics = anon.get("metrics").text
    assert "confbus_console_requests_total" in metrics


def test_a_wrong_url_or_method_is_told_so(api: dict[str, httpx.Client]) -> None:
    """Starlette's own 404 and 405 answer as every API error does: JSON, with the reason."""
    body = problem(api["viewer"].get("api/v1/namespace"), 404, "path")
    assert body["reason"].startswith("no such endpoint: GET /api/v1/namespace ("), body
    assert "/api/v1/openapi.json" in body["reason"], body
    r = api["viewer"].delete("api/v1/namespaces")
    body = problem(r, 405, "path")
    assert body["error"] == "method_not_allowed", body
    assert "DELETE is not allowed on /api/v1/namespaces: use " in body["reason"], body
    assert "GET" in r.headers["allow"], r.headers
    page = api["viewer"].get("nowhere")
    assert page.status_code == 404 and "the console starts at /" in page.text, page.text
