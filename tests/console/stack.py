"""A whole confbus for the console's tests: ``confbus up`` (every service and the console, as
real processes), agents writing real files, and tokens made by ``confbus console token``.

One per test module (starting it is the slow part); each test uses its own namespace.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from confbus.procs.agent import agent_argv
from confbus.procs.proc import Proc, stop_together
from tests.cli.procs import run_confbus, start_confbus
from tests.helpers import stopped_after


@dataclass
class Agent:
    node: str
    path: Path  # the live file
    proc: Proc

    def read(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None


@dataclass
class ConsoleStack:
    root: Path
    up: Proc
    nats_url: str
    console_url: str  # ends with /
    login_link: str  # what confbus up printed
    login_user: str  # the operator it signs in as (whoever ran confbus up)
    agents: dict[str, Agent] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def token(self, role: str, user: str, *extra: str) -> str:
        done = run_confbus("console", "--data-dir", str(self.data_dir), "token", "--role", role,
                           "--user", user, *extra)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "console login: " + self.console_url in done.stderr  # a link, the stack runs
        return done.stdout.strip()

    def revoke(self, token: str) -> None:
        token_id = token.split("_")[1]
        done = run_confbus("console", "--data-dir", str(self.data_dir), "revoke", token_id)
        assert done.returncode == 0, done.stderr

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.console_url, headers=headers, timeout=30.0)

    def link_token(self) -> str:
        """The token in the sign-in link ``confbus up`` printed."""
        return self.login_link.split("#token=", 1)[1]

    def confbus(self, *args: str, timeout: float = 90.0) -> str:
        done = run_confbus("--nats-url", self.nats_url, *args, timeout=timeout)
        assert done.returncode == 0, f"confbus {args}: {done.returncode}\n{done.stderr}"
        return done.stdout

    def start_agent(self, node: str, namespace: str, *extra: str) -> Agent:
        base = self.root / "nodes" / node
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"{namespace}.json"
        state = base / "state"
        argv = agent_argv(
            self.nats_url, node, {namespace: path}, state, *extra, heartbeat_interval=0.5
        )
        proc = Proc(f"agent-{node}", argv).start(timeout=30)
        agent = Agent(node, path, proc)
        self.agents[node] = agent
        return agent

    def stop(self) -> None:
        stop_together([agent.proc for agent in self.agents.values()], timeout=15)
        self.up.stop(signal.SIGTERM, timeout=30)


def start(root: Path) -> ConsoleStack:
    up = start_confbus("up", "--nats-port", "0", "--data-dir", str(root / "data"))
    try:
        line = up.out.wait_for("confbus ready", timeout=90)
        link = up.err.wait_for("confbus: console: ", timeout=10)
    except BaseException:
        up.kill()
        raise
    nats_url = re.search(r"nats=(\S+)", line)
    console_url = re.search(r"console=(\S+)", line)
    login = re.search(r"(http://\S+/login#token=\S+) \(operator (\S+)\)", link)
    assert nats_url and console_url and login, line
    return ConsoleStack(
        root, up, nats_url.group(1), console_url.group(1), login.group(1), login.group(2)
    )


def stack_fixture(root: Path) -> Iterator[ConsoleStack]:
    yield from stopped_after(start(root), ConsoleStack.stop)


def wait_event(
    stack: ConsoleStack,
    token: str,
    subject_filter: str,
    match: Callable[[dict[str, Any]], bool],
    timeout: float = 60.0,
) -> dict[str, Any]:
    """The first event (an ``EventItem``, as JSON) matching, read from the console's own
    Server-Sent Events from the start of the log: one that happened already counts too."""
    params: dict[str, str | int] = {"filter": subject_filter, "from_seq": 1}
    with (
        httpx.Client(base_url=stack.console_url, timeout=httpx.Timeout(timeout)) as client,
        client.stream(
            "GET",
            "api/v1/events/stream",
            params=params,
            headers={"authorization": f"Bearer {token}"},
        ) as r,  # fmt: skip
    ):
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                item: dict[str, Any] = json.loads(line.removeprefix("data: "))
                if item["type"] != "subscribed" and match(item):
                    return item
    raise AssertionError(f"the event stream of {subject_filter} ended")


def problem(r: httpx.Response, status: int, where: str | None = None) -> dict[str, Any]:
    """The API's error answer, checked: this status, a reason, and (if given) this place."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["reason"], body
    if where is not None:
        assert body["where"] == where, body
    return body


def sign_in(browser: httpx.Client, token: str) -> httpx.Response:
    """Sign in as a browser does: the sign-in page (its nonce, in a cookie and a field), then
    the form's POST."""
    page = browser.get("login")
    assert page.status_code == 200, page.text
    nonce = page.text.split('name="login_nonce" value="')[1].split('"')[0]
    return browser.post(
        "login", data={"token": token, "login_nonce": nonce, "next": "/"}, follow_redirects=False
    )
