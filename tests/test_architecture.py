"""The architecture as a test: which confbus package may import which.

Services never import each other; they share only ``confbus.schemas`` (the wire contract) and
``confbus.runtime`` (how a service runs). So one can be changed, replaced or written in another
language from the contract alone. The front ends — the CLI and the console — act through the
client (built on the runtime and the schemas), as a user's program does; the CLI also has the
process toolkit, and starts services as processes, never by importing them.

Every module is read as a syntax tree: imports at the top, inside functions and under
``TYPE_CHECKING`` all count, as do relative imports and ``importlib.import_module("…")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES = (
    "agent",
    "coordinator",
    "distributor",
    "health_watcher",
    "historian",
    "rollbacker",
    "version_store",
)
SHARED = ("confbus.schemas", "confbus.runtime")

# package → the confbus packages its modules may import (besides their own)
ALLOWED: dict[str, tuple[str, ...]] = {
    **{f"confbus.{name}": SHARED for name in SERVICES},
    "confbus.runtime": ("confbus.schemas",),
    "confbus.schemas": (),
    "confbus.procs": ("confbus.schemas",),
    # The front ends: they act through the client, as a user's program does.
    "confbus.client": SHARED,
    "confbus.console": ("confbus.client", *SHARED),
    "confbus.cli": ("confbus.client", "confbus.procs", *SHARED),
}


def _folder(package: str) -> Path:
    if package == "confbus.schemas":
        return REPO / "schemas"
    return REPO / "services" / package.removeprefix("confbus.")


def _module_name(path: Path) -> str:
    if path.is_relative_to(REPO / "schemas"):
        parts = ["confbus", "schemas", *path.relative_to(REPO / "schemas").with_suffix("").parts]
    else:
        parts = ["confbus", *path.relative_to(REPO / "services").with_suffix("").parts]
    return ".".join(parts).removesuffix(".__init__")


def imported(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) for every import in ``source``, a module of ``package``, in line order;
    relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            if node.module is None or base == "confbus":
                # `from . import x`, `from confbus import x`: each name may be a module.
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
        elif (
            isinstance(node, ast.Call)
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(package: str, source: str, where: str, in_package: str) -> list[str]:
    """What ``source`` (a module of ``in_package``, inside ``package``) may not import."""
    allowed = (package, *ALLOWED[package])
    found = []
    for line, module in imported(source, in_package):
        if module.split(".")[0] in ("services", "schemas"):
            found.append(f"{where}:{line} imports {module} (a folder, not a package name)")
        elif _within(module, "confbus") and not any(_within(module, a) for a in allowed):
            found.append(f"{where}:{line} imports {module}")
    return found


def package_violations(package: str) -> list[str]:
    found = []
    for path in sorted(_folder(package).rglob("*.py")):
        module = _module_name(path)
        in_package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        where = str(path.relative_to(REPO))
        found += violations(package, path.read_text(), where, in_package)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_it_may(package: str) -> None:
    assert package_violations(package) == []


def test_every_package_has_a_rule() -> None:
    """A new package decides where it stands, here, before it can import anything."""
    folders = {p.parent for p in (REPO / "services").glob("*/__init__.py")}
    packages = {f"confbus.{folder.name}" for folder in folders} | {"confbus.schemas"}
    assert packages == set(ALLOWED)


def test_the_rule_sees_imports_wherever_they_are() -> None:
    """A late import inside a function, a relative import reaching into a sibling service, an
    import by name and one only for the type checker are all imports."""
    source = (
        "import importlib\n"
        "from confbus.runtime.bus import connect\n"
        "from . import twophase\n"
        "def late():\n"
        "    from confbus.agent.node import NodeAgent\n"
        "from ..distributor import store\n"
        "importlib.import_module('confbus.rollbacker.service')\n"
        "if TYPE_CHECKING:\n"
        "    import confbus.cli.client\n"
    )
    found = violations("confbus.coordinator", source, "probe.py", "confbus.coordinator")
    assert found == [
        "probe.py:5 imports confbus.agent.node",
        "probe.py:6 imports confbus.distributor",
        "probe.py:7 imports confbus.rollbacker.service",
        "probe.py:9 imports confbus.cli.client",
    ]
