"""The CLI starts fast because a command imports only what it runs: ``confbus --help`` lists
every command from ``confbus.cli.commands.index`` without importing nats-py, the client or a
single command module, and a command imports its own module, not the others'."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

from confbus.cli.commands.index import COMMANDS, MODULES
from confbus.cli.main import Parser
from tests.cli.procs import REPO

# Runs the console script's entry point, then writes every module it imported to argv[1].
DRIVER = """
import sys
out, sys.argv = sys.argv[1], ["confbus", *sys.argv[2:]]
from confbus.cli.main import main
try:
    main()
finally:
    # The decoders built by then, as ``decoder:MODULE.NAME``: a module-level msgspec decoder
    # (or its ``decode``), or a ``LazyDecoder`` called already.
    base, msgspec = sys.modules.get("confbus.schemas.base"), sys.modules.get("msgspec")

    def built(value):
        if base is not None and isinstance(value, base.LazyDecoder):
            return value.built
        return msgspec is not None and isinstance(
            getattr(value, "__self__", value), msgspec.json.Decoder
        )

    built = [
        f"decoder:{name}.{attr}"
        for name, module in list(sys.modules.items())
        if name.startswith("confbus.")
        for attr, value in list(vars(module).items())
        if built(value)
    ]
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules) + built))
"""


def imported_by(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``confbus ARGS`` as a whole process: its result, and the modules it imported."""
    listing = tmp_path / "modules.txt"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(listing), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    return done, set(listing.read_text().split())


HEAVY = ("nats", "confbus.client", "confbus.runtime.bus", "jsonschema", "cryptography", "yaml")


def test_help_imports_neither_nats_nor_the_client_nor_a_command(tmp_path: Path) -> None:
    done, modules = imported_by(tmp_path, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "publish" in done.stdout and "diff-fleet" in done.stdout  # every command listed
    assert "confbus.cli.main" in modules  # the probe sees imports at all
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    assert not modules & set(MODULES), sorted(modules & set(MODULES))


def test_a_command_imports_its_own_module_only(tmp_path: Path) -> None:
    done, modules = imported_by(tmp_path, "txns", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: confbus txns" in done.stdout
    assert modules & set(MODULES) == {"confbus.cli.commands.txn"}
    assert "confbus.cli.security" not in modules and "jsonschema" not in modules


def test_a_usage_error_still_names_every_command(tmp_path: Path) -> None:
    done, modules = imported_by(tmp_path, "publsh")
    assert done.returncode == 2
    assert "unknown command 'publsh' (did you mean publish?)" in done.stderr, done.stderr
    assert "nats" not in modules


def test_the_modules_register_the_commands_of_the_index_and_no_other() -> None:
    # What ``confbus --help`` lists (from the index) is what the modules register, in order.
    registered: dict[str, str] = {}
    for module in MODULES:
        probe = Parser(prog="confbus").add_subparsers(parser_class=Parser)
        importlib.import_module(module).register(probe)
        registered |= {name: module for name in probe.choices}
    assert list(registered.items()) == [(n, c.module_path) for n, c in COMMANDS.items()]


# Not on ``publish``'s path: the client's answers about the past, key material, other formats'
# parsers, the spelling hints of a usage error, nats-py's version read through
# ``importlib.metadata`` (``confbus.runtime.natspy``).
NOT_FOR_PUBLISH = (
    "confbus.client._fleet",
    "confbus.client._reconstruct",
    "cryptography",
    "yaml",
    "jsonschema",
    "difflib",
    "importlib.metadata",
    "zipfile",
)


def test_publish_imports_its_path_only_and_builds_no_decoder(tmp_path: Path) -> None:
    # Decoders are built at their first call (``schemas.base.LazyDecoder``): importing every
    # schema ``publish`` touches built ~50 M instructions' worth of them before the first
    # request. A module-level ``msgspec.json.Decoder(...)`` on this path shows up here.
    done, modules = imported_by(tmp_path, "publish", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: confbus publish" in done.stdout
    assert {"confbus.client", "confbus.schemas.api.dist", "confbus.schemas.events"} <= modules
    assert not modules & set(NOT_FOR_PUBLISH), sorted(modules & set(NOT_FOR_PUBLISH))
    decoders = sorted(m for m in modules if m.startswith("decoder:"))
    assert not decoders, decoders


# Runs the console script's entry point with an ``atexit`` hook that leaves a file behind.
CONSOLE = """
import atexit, pathlib, sys
marker, sys.argv = pathlib.Path(sys.argv[1]), ["confbus", *sys.argv[2:]]
atexit.register(marker.write_text, "torn down")
from confbus.cli.main import console
console()
"""


def console(marker: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``confbus ARGS`` through the console script's entry point, with stdout and stderr
    buffered as in a pipe (no ``PYTHONUNBUFFERED``); ``marker`` is written at teardown."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    argv = [sys.executable, "-c", CONSOLE, str(marker), "--nats-url", "nats://127.0.0.1:1"]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=60
    )


def test_a_command_over_the_bus_ends_without_teardown_its_words_written(tmp_path: Path) -> None:
    # ``console`` ends a command that ran over the bus with ``os._exit``: no interpreter
    # teardown (~18 ms of a CLI step), but what it wrote reaches the reader all the same.
    marker = tmp_path / "marker"
    done = console(marker, "history", "payments")
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stderr.startswith("confbus: unreachable: cannot reach NATS"), done.stderr
    assert not marker.exists()
    # A usage error (and any command that runs here, not over the bus) exits the usual way.
    done = console(marker, "history")
    assert done.returncode == 2 and "usage: confbus history" in done.stderr, done.stderr
    assert marker.read_text() == "torn down"
