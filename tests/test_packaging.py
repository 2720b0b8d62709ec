"""How confbus installs: one import root, ``confbus``, and nothing a user's folders can shadow."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import confbus
import confbus.client
from confbus.procs.proc import Exited
from tests.cli.procs import REPO, start_confbus

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _declared() -> tuple[list[str], dict[str, str]]:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return setuptools["packages"], setuptools["package-dir"]


def _folder(package: str, package_dir: dict[str, str]) -> Path:
    """The repository folder a package name installs from (pyproject's package-dir)."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        root = package_dir.get(".".join(parts[:cut]))
        if root is not None:
            return REPO.joinpath(root, *parts[cut:])
    raise AssertionError(f"{package}: no package-dir entry covers it")


def test_every_package_folder_is_declared_and_every_declared_package_exists() -> None:
    packages, package_dir = _declared()
    folders = {
        p.parent
        for root in ("services", "schemas")
        for p in (REPO / root).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    declared = {_folder(name, package_dir) for name in packages}
    assert folders - declared == set(), "add these packages to pyproject's [tool.setuptools]"
    assert declared - folders == set(), "pyproject names packages that are not there"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools writes build/ beside the sources it builds.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("services", "schemas"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
        check=True,
        timeout=240,
    )
    (built,) = out.glob("confbus-*.whl")
    return built


def test_the_wheel_installs_only_confbus(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"confbus"}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    # The JSON Schema snapshot and the AsyncAPI document ship: clients in other languages are
    # written from them.
    assert "confbus/schemas/jsonschema/CFG_EVENTS.json" in names
    assert "confbus/schemas/asyncapi.json" in names
    assert "confbus/client/__init__.py" in names
    # The console's pages and script ship: no build step, no CDN.
    for asset in ("templates/base.html", "static/console.js", "static/console.css"):
        assert f"confbus/console/{asset}" in names


def test_the_installed_wheel_imports_as_confbus(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    # -S: no site-packages processing, so the editable install of this checkout is not on the
    # path; the dependencies are (their folder added by hand), the wheel's files first.
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]];"
        "from confbus import Client, Unavailable;"
        "import confbus, confbus.schemas.events;"
        "print(confbus.__file__); print(Client.__module__)"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, str(site), deps],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    where, module = done.stdout.split()
    assert Path(where) == site / "confbus" / "__init__.py"
    assert module == "confbus.client._client"


def _public_methods(cls: type) -> dict[str, object]:
    """The public methods and properties of ``cls``, inherited ones included."""
    return {
        name: value
        for klass in reversed(cls.__mro__[:-1])  # not object's
        for name, value in vars(klass).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }


def test_the_public_surface_is_what_all_says() -> None:
    for name in confbus.__all__:
        value = getattr(confbus, name)
        assert value.__doc__, f"confbus.{name} has no docstring"
    assert sorted(confbus.__all__) == confbus.__all__
    with pytest.raises(AttributeError):
        _ = confbus.NoSuchThing
    # confbus re-exports the client's public names, as confbus.client itself shows them.
    for name in confbus.client.__all__:
        value = getattr(confbus.client, name)
        assert value.__doc__, f"confbus.client.{name} has no docstring"
        if name in confbus.__all__:
            assert getattr(confbus, name) is value


def test_every_public_method_of_the_client_says_what_it_does() -> None:
    methods = _public_methods(confbus.client.Client)
    assert {"publish", "wait_rollout", "events", "call", "bus"} <= set(methods)
    undocumented = [name for name, value in methods.items() if not value.__doc__]
    assert undocumented == []


def test_importing_confbus_loads_no_client() -> None:
    # Each service imports confbus (the package) first: it must not pay for the client.
    code = "import sys, confbus.runtime.errors; print('confbus.client' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"


def _shadowing_project(root: Path) -> None:
    """A user's project with packages named like confbus's folders, each of which fails loudly."""
    for name in ("services", "schemas", "confbus"):
        pkg = root / name
        for sub in ("", "coordinator", "distributor", "runtime", "cli"):
            folder = pkg / sub if sub else pkg
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").write_text(f"raise SystemExit('the project {name} ran')\n")
            (folder / "__main__.py").write_text(f"raise SystemExit('the project {name} ran')\n")


def test_up_runs_confbus_services_from_a_project_with_its_own_packages(tmp_path: Path) -> None:
    project = tmp_path / "project"
    _shadowing_project(project)
    data = tmp_path / "data"
    proc = start_confbus("up", "--data-dir", str(data), "--nats-port", "0", cwd=project)
    try:
        line = proc.out.wait_for("confbus ready", 90.0)
        assert "coordinator:" in line and "distributor:" in line
    except (AssertionError, Exited, TimeoutError) as exc:
        logs = "\n".join(p.read_text()[-400:] for p in (data / "logs").glob("*.log"))
        raise AssertionError(f"{exc}\n{proc.describe()}\n{logs}") from None
    finally:
        code = proc.stop()
    assert code == 0, proc.describe()
    assert "the project" not in proc.err.text()
