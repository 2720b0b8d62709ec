"""Helpers for the version-store service tests (no tests here): a real nats-server with the
service as a real subprocess, reading the audit log back, and running the ``confbus`` CLI."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from confbus.cli.main import main as cli_main
from confbus.client import Client
from confbus.procs.nats import NatsServer
from confbus.procs.proc import Proc
from confbus.runtime.bus import Bus
from confbus.schemas.events import AnyEvent
from confbus.schemas.streams import CFG_CHANGES
from confbus.version_store.service import DURABLE
from tests.helpers import eventually

CONFBUS = str(Path(sys.executable).with_name("confbus"))


@dataclass
class Stack:
    """One nats-server and one version-store (SQLite) on it."""

    nats: NatsServer
    service: Proc
    dir: Path

    @property
    def url(self) -> str:
        return self.nats.url

    @property
    def store_url(self) -> str:
        return f"sqlite://{(self.dir / 'store.db').as_posix()}"

    def client(self) -> Client:
        return Client(self.url)

    def stop(self) -> None:
        self.service.stop()
        self.nats.stop()


def service_proc(
    nats_url: str, dir: Path, *extra: str, env: dict[str, str] | None = None, name: str = "vs"
) -> Proc:
    # Redeliveries come quickly in tests (the durable consumer keeps this from its creation).
    args = ("--store", f"sqlite://{(dir / 'store.db').as_posix()}", "--ack-wait", "2", *extra)
    clean = {k: v for k, v in os.environ.items() if k != "CONFBUS_FAILPOINTS"}
    proc = Proc.service("version_store", nats_url, dir, *args, env=env, name=name)
    proc.env = {**clean, **(env or {})}
    return proc


def start_stack(dir: Path) -> Stack:
    dir.mkdir(parents=True, exist_ok=True)
    nats = NatsServer(data_dir=dir / "nats").start()
    try:
        service = service_proc(nats.url, dir).start()
    except BaseException:
        nats.stop()
        raise
    return Stack(nats, service, dir)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        s.stop()


async def events_of(client: Client, namespace: str, settle: bool = True) -> list[AnyEvent]:
    """Every event of ``namespace`` in ``CFG_EVENTS``, oldest first — once the version-store has
    settled every change (``publish`` returns when a version is stored, which can be a moment
    before its event is: the event is sent before the ack, not before the commit)."""
    if settle:
        await drained(client.bus)
    out: list[AnyEvent] = []
    async for streamed in client.events(f"cfg.event.{namespace}.>"):
        assert streamed.event is not None, streamed.raw
        out.append(streamed.event)
    return out


async def drained(bus: Bus, timeout: float = 20.0) -> None:
    """Wait until the version-store has settled every change it was given."""

    async def probe() -> bool:
        info = await bus.js.consumer_info(CFG_CHANGES.name, DURABLE)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await eventually(probe, timeout=timeout, what="the version-store to settle every change")


@dataclass
class CliResult:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()


_CLI_LOCK = threading.Lock()


def _cli_in_process(url: str, args: Sequence[str], env: dict[str, str]) -> CliResult:
    # The command's own code, in this process: the same parser, client and exit codes as the
    # console script, without an interpreter start per call (~0.4 s here). One at a time: it
    # redirects the process's stdout/stderr and environment.
    with _CLI_LOCK:
        out = io.BytesIO()
        text_out = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
        err = io.StringIO()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        code: int | str | None = 0
        try:
            with contextlib.redirect_stdout(text_out), contextlib.redirect_stderr(err):
                try:
                    cli_main(["--nats-url", url, *args])
                except SystemExit as exc:
                    code = exc.code
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            text_out.flush()
            logging.getLogger().handlers[:] = []  # main() pointed them at our StringIO
        return CliResult(int(code or 0), out.getvalue(), err.getvalue())


async def cli(
    url: str,
    *args: str,
    env: dict[str, str] | None = None,
    subprocess_: bool = False,
) -> CliResult:
    """Run ``confbus ARGS`` against ``url``: in this process (default), or as the real
    console script in a subprocess (``subprocess_=True``)."""
    if not subprocess_:
        return await anyio.to_thread.run_sync(_cli_in_process, url, args, env or {})
    full_env = {**os.environ, "CONFBUS_NATS_URL": url, **(env or {})}
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [CONFBUS, *args], env=full_env, check=False, stderr=subprocess.PIPE
        )
    return CliResult(done.returncode, done.stdout, done.stderr.decode())
