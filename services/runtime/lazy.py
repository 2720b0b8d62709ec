"""A package's names loaded on first use (PEP 562), so that importing the package costs nothing
for them: ``import confbus`` does not load the client until ``confbus.Client`` is asked for."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, modules: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` (its ``__name__``), for the
    names in ``modules`` (name → the module that defines it): each is imported on first use and
    then kept in the package, so the next access is a plain lookup."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *namespace["__all__"]])

    return __getattr__, __dir__
