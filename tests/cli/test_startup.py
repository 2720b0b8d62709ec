"""The CLI starts fast because a command imports only what it runs: ``confbus --help`` lists
every command from ``confbus.cli.commands.index`` without importing nats-py, the client or a
single command module, and a command imports its own module, not the others'."""

from __future__ import annotations

import importlib
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
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
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
