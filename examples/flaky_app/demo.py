"""The confbus rollback demo, in one command (next to a running ``confbus up``)::

    confbus up --data-dir /tmp/confbus-demo          # terminal 1
    python examples/flaky_app/demo.py                # terminal 2

It uses a namespace of its own, ``flaky`` (the quick start's ``web`` is left alone), sets its
policy from ``policy.json`` (an error-rate rule over the apps' ``app_errors_total`` /
``app_requests_total``, a 3 s bake, rollbacks in 2 batches), starts ``--nodes`` flaky apps
(``app.py``, nodes ``flaky1``…) each with a confbus agent that writes the app's config file and
forwards its ``/metrics`` (``--health-url``), then:

1. publishes ``good.json`` — rolled out, baked with data, it becomes the last known good;
2. publishes ``bad.json`` (``fail_ratio`` 0.6) — the apps start failing, the error rate crosses
   the rule, an alert is raised, and confbus rolls the namespace back by itself, batch by batch.

It narrates the events as they happen (``Client.events``), the alerts (``Client.alerts``) and
each node's applied version (``Client.watch``), and prints the apps' error rates before and
after. At the end (or on Ctrl-C) it stops everything it started, forgets its nodes
(``Client.forget_node``, as ``confbus forget`` does) and removes its temporary directory;
``--keep`` leaves it all running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec

from confbus.client import Client, policy_from_document
from confbus.runtime.events import event_type
from confbus.schemas.events import (
    RollbackCompleted,
    RollbackStuck,
    VersionLastGood,
)

HERE = Path(__file__).resolve().parent
NS = "flaky"


def say(text: str) -> None:
    sys.stdout.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
    sys.stdout.flush()


class Node:
    def __init__(self, name: str, root: Path, nats_url: str) -> None:
        self.name = name
        self.config = root / name / "etc" / f"{NS}.json"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        logs = root / "logs"
        logs.mkdir(exist_ok=True)
        self.app = subprocess.Popen(
            [sys.executable, str(HERE / "app.py"), "--config", str(self.config), "--load", "30"],
            stdout=subprocess.PIPE,
            stderr=open(logs / f"app-{name}.log", "a"),  # noqa: SIM115 - the child owns it
            text=True,
        )
        assert self.app.stdout is not None
        self.port = int(json.loads(self.app.stdout.readline())["port"])
        agent = [sys.executable, "-m", "confbus.agent", "--nats-url", nats_url]
        agent += ["--node", name, "--namespace", NS, "--path", str(self.config)]
        agent += ["--state-dir", str(root / name / "state"), "--heartbeat-interval", "0.5"]
        agent += ["--health-url", f"http://127.0.0.1:{self.port}/metrics"]
        agent += ["--health-interval", "0.5"]
        self.agent = subprocess.Popen(
            agent,
            stdout=subprocess.DEVNULL,
            stderr=open(logs / f"agent-{name}.log", "a"),  # noqa: SIM115
        )

    def counters(self) -> tuple[float, float]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        values = dict(line.split(" ", 1) for line in text.splitlines() if line[:1] not in "#")
        return float(values["app_requests_total"]), float(values["app_errors_total"])

    def stop(self) -> None:
        for proc in (self.agent, self.app):
            proc.terminate()
        for proc in (self.agent, self.app):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def error_rates(nodes: Sequence[Node], seconds: float = 2.0) -> str:
    before = [n.counters() for n in nodes]
    await anyio.sleep(seconds)  # a measuring window, not a synchronisation
    out = []
    for n, (r0, e0) in zip(nodes, before, strict=True):
        r1, e1 = n.counters()
        out.append(f"{n.name} {(e1 - e0) / max(1.0, r1 - r0):.0%}")
    return ", ".join(out)


async def narrate(client: Client, done: anyio.Event, outcome: list[str]) -> None:
    async with anyio.create_task_group() as tg:

        async def events() -> None:
            async for item in client.events(f"cfg.event.{NS}.>", follow=True):
                ev = item.event
                if ev is None:
                    continue
                kind = event_type(ev)
                facts = {
                    k: v
                    for k, v in msgspec.to_builtins(ev).items()
                    if k in ("version", "new_version", "rollback_of", "batch", "healthy_share")
                    and v is not None
                }
                if kind != "node.applied":  # watch() below shows those
                    say(f"event  {kind:<20} {facts} {ev.reason[:70]}")
                if isinstance(ev, VersionLastGood):
                    outcome.append(f"last-good v{ev.version}")
                    done.set()
                elif isinstance(ev, RollbackCompleted | RollbackStuck):
                    outcome.append(kind)
                    done.set()

        async def alerts() -> None:
            async for alert in client.alerts(NS):
                say(f"ALERT  {alert.state} from {alert.source}: {alert.summary or alert.rule}")

        async def applied() -> None:
            async for ev in client.watch(NS):
                was = f"v{ev.previous}" if ev.previous is not None else "nothing"
                say(f"node   {ev.node} applied v{ev.version} (was {was})")

        tg.start_soon(events)
        tg.start_soon(alerts)
        tg.start_soon(applied)


async def wait_for(done: anyio.Event, outcome: list[str], what: str, timeout: float) -> str:
    with anyio.fail_after(timeout):
        while True:
            await done.wait()
            for item in outcome:
                if item.startswith(what):
                    outcome.clear()
                    return item
            outcome.clear()


async def main(args: argparse.Namespace) -> int:
    ours = args.workdir is None  # a temporary directory of our own: removed at the end
    root = Path(args.workdir or tempfile.mkdtemp(prefix="confbus-demo-"))
    say(f"demo files and logs in {root}")
    nodes: list[Node] = []
    async with Client(args.nats_url) as client:
        # The same check as `confbus policy flaky --file policy.json`.
        policy = policy_from_document(json.loads((HERE / "policy.json").read_bytes()), NS)
        await client.set_policy(policy, actor="demo")
        say(f"policy of {NS} set from policy.json")
        if args.policy_only:
            return 0
        try:
            for i in range(1, args.nodes + 1):
                nodes.append(Node(f"{NS}{i}", root, args.nats_url))
            await run(client, nodes)
            if args.keep:
                say("--keep: the apps and agents keep running until Ctrl-C")
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await clean_up(client, nodes, root if ours and not args.keep else None)
    return 0


async def run(client: Client, nodes: Sequence[Node]) -> None:
    with anyio.fail_after(60):
        while True:
            st = await client.fleet_status(NS)
            if sum(n.liveness == "live" for n in st.nodes) >= len(nodes):
                break
            await anyio.sleep(0.5)
    say(f"{len(nodes)} apps and agents up")
    done = anyio.Event()
    outcome: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(narrate, client, done, outcome)
        await anyio.sleep(0.5)  # let the followers subscribe (a demo, not a test)
        good = await client.publish(NS, (HERE / "good.json").read_bytes(), author="demo")
        say(f"published good.json as v{good.version}")
        await wait_for(done, outcome, "last-good", 120)
        say(f"error rates with good.json: {await error_rates(nodes)}")
        bad = await client.publish(NS, (HERE / "bad.json").read_bytes(), author="demo")
        say(f"published bad.json as v{bad.version}: watch confbus roll it back")
        started = time.monotonic()
        result = await wait_for(done, outcome, "rollback.", 180)
        say(f"{result} {time.monotonic() - started:.1f}s after the bad publish")
        say(f"error rates now: {await error_rates(nodes)}")
        tg.cancel_scope.cancel()


async def clean_up(client: Client, nodes: Sequence[Node], root: Path | None) -> None:
    """Stop the apps and agents, forget their nodes (once they are no longer live), and
    remove ``root`` (None: keep it)."""
    for n in nodes:
        n.stop()
    names = {n.name for n in nodes}
    with anyio.move_on_after(30) as scope:
        while names:
            st = await client.fleet_status(NS)
            for n in st.nodes:
                if n.node in names and n.liveness != "live":
                    await client.forget_node(n.node, actor="demo", reason="the demo is over")
                    names.discard(n.node)
            names &= {n.node for n in st.nodes}  # never seen: nothing to forget
            if names:
                await anyio.sleep(0.5)
    if scope.cancelled_caught:
        say(f"could not forget {', '.join(sorted(names))}: confbus forget NODE does it")
    elif nodes:
        say(f"stopped and forgot {', '.join(n.name for n in nodes)}")
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--nats-url", default=os.environ.get("CONFBUS_NATS_URL", "nats://127.0.0.1:4222")
    )
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--workdir", help="where the apps' configs, agent state and logs go")
    p.add_argument("--keep", action="store_true", help="keep the apps and agents until Ctrl-C")
    p.add_argument("--policy-only", action="store_true", help="set the policy, then exit")
    try:
        sys.exit(anyio.run(main, p.parse_args(), backend="asyncio"))
    except KeyboardInterrupt:
        sys.exit(130)
