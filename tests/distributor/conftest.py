"""Fixtures of the distributor's tests: a real nats-server with confbus' streams and buckets
(``bus`` from tests/conftest.py) and the in-process harness around it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from confbus.procs.nats import NatsServer
from confbus.runtime.bus import Bus

if TYPE_CHECKING:
    from tests.distributor.harness import Harness


@pytest.fixture
async def h(tmp_path: Path, nats_server: NatsServer, bus: Bus) -> AsyncIterator[Harness]:
    # Imported here: the pure tests of this folder need none of the services.
    from tests.distributor.harness import harness

    async with harness(tmp_path, nats_server.url) as hh:
        yield hh
