"""Fault scenarios: each runs real processes in its own temp directory."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # nats-py does not run on trio
