"""nats-py's client imported without ``importlib.metadata``.

``nats.aio.client`` reads its own ``__version__`` (sent to the server in every ``CONNECT``)
with ``importlib.metadata.version("nats-py")``. That import brings ``zipfile`` (with ``bz2``,
``lzma``), ``csv``, ``email.message`` and ``importlib.resources``: ~1.5 MB of a ~30 MB agent
process (issue 23: ≤ 30 MB per agent) and ~37 M instructions (~10 ms) of every CLI command
that talks to the bus, for one string.

``install()`` puts a finder first on ``sys.meta_path`` that acts once, on the first import of
``nats.aio.client`` (whoever imports ``nats`` first): while that module executes, and only
then, ``sys.modules["importlib.metadata"]`` is a stub whose ``version("nats-py")`` is read from
the ``METADATA`` of the one ``nats_py-*.dist-info`` beside the ``nats`` package. Then the stub
is gone and so is the finder: a later ``import importlib.metadata`` loads the real module.
Where the version cannot be read that way (an editable or zipped install, two ``nats_py``
distributions side by side), or for any other name or attribute asked of the stub, the real
module answers: nats-py's ``__version__`` is what ``importlib.metadata`` says either way
(``tests/runtime/test_natspy.py`` checks it, and the version the server is told).

Installed by the entry points whose footprint or start-up counts: ``python -m confbus.agent``
and the ``confbus`` command. Nothing else in confbus needs it.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader  # not at run time: it imports importlib.resources

_METADATA = "importlib.metadata"
_CLIENT = "nats.aio.client"
_DIST = "nats-py"


def install() -> None:
    """Read nats-py's version without ``importlib.metadata`` when its client is imported
    (once); a no-op when either is imported already, or it is installed."""
    if _CLIENT in sys.modules or _METADATA in sys.modules:
        return
    if not any(isinstance(f, _ClientFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _ClientFinder())


class _ClientFinder:
    """Finds ``nats.aio.client`` as the path finder does, with a loader that runs it beside
    the stub; then leaves ``sys.meta_path``."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != _CLIENT:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        version = installed_version()
        if spec is None or spec.loader is None or version is None or _METADATA in sys.modules:
            return spec  # the usual way
        spec.loader = cast("Loader", _StubbedMetadataLoader(spec.loader, version))
        return spec


class _StubbedMetadataLoader:
    def __init__(self, loader: Any, version: str) -> None:
        self.loader, self.version = loader, version

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        module: types.ModuleType | None = self.loader.create_module(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        stub = _stub(self.version)
        sys.modules[_METADATA] = stub
        try:
            self.loader.exec_module(module)
        finally:
            if sys.modules.get(_METADATA) is stub:
                del sys.modules[_METADATA]
            # What the module says loaded it is the real loader, as without this finder.
            module.__loader__ = self.loader
            if module.__spec__ is not None:
                module.__spec__.loader = self.loader


def _stub(nats_version: str) -> types.ModuleType:
    """``importlib.metadata`` as nats-py uses it: ``version("nats-py")``. Anything else asked
    of it loads the real module in its place and is answered by that."""
    stub = types.ModuleType(_METADATA, "stands in while nats-py reads its own version")

    def real() -> types.ModuleType:
        if sys.modules.get(_METADATA) is stub:
            del sys.modules[_METADATA]
        import importlib.metadata

        return importlib.metadata

    def version(name: str) -> str:
        if name == _DIST:
            return nats_version
        answer: str = real().version(name)
        return answer

    def __getattr__(name: str) -> Any:  # the stub module's, for what it lacks
        if name.startswith("__"):  # the import system asking (``__path__``): a plain module
            raise AttributeError(name)
        return getattr(real(), name)

    stub.version = version  # type: ignore[attr-defined]
    stub.__getattr__ = __getattr__  # type: ignore[method-assign]
    return stub


def installed_version() -> str | None:
    """nats-py's version from the one ``nats_py-*.dist-info`` beside the ``nats`` package
    that imports, or None when it is not installed that way."""
    package = sys.modules.get("nats")
    origin = getattr(package, "__file__", None)
    if package is None:
        spec = importlib.machinery.PathFinder.find_spec("nats")
        origin = None if spec is None else spec.origin
    if not origin or os.path.basename(origin) != "__init__.py":
        return None
    site = os.path.dirname(os.path.dirname(origin))
    try:
        infos = [
            e for e in os.listdir(site) if e.startswith("nats_py-") and e.endswith(".dist-info")
        ]
        if len(infos) != 1:
            return None
        with open(os.path.join(site, infos[0], "METADATA"), encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    return None  # the headers ended without a Version
                key, _, value = line.partition(":")
                if key == "Version":
                    return value.strip() or None
    except OSError:
        return None
    return None
