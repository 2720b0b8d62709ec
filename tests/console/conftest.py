"""Fixtures shared by the console's test modules; each module starts its own ``stack``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.console.stack import ConsoleStack


@pytest.fixture(scope="module")
def viewer(stack: ConsoleStack) -> Iterator[httpx.Client]:
    """An API client with a viewer's token (user ``vera``) on the module's stack."""
    with stack.http(stack.token("viewer", "vera")) as client:
        yield client
